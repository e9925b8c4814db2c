"""Stands for modules/script_callbacks.py of v1.10.1: the cfg callback params and the wrappers
that run callbacks in registration order, logging (never raising) their exceptions."""
import logging
from collections import defaultdict

log = logging.getLogger("standin.script_callbacks")
callback_map = defaultdict(list)


class CFGDenoiserParams:
    def __init__(self, x, image_cond, sigma, sampling_step, total_sampling_steps, text_cond, text_uncond, denoiser=None):
        self.x = x
        self.image_cond = image_cond
        self.sigma = sigma
        self.sampling_step = sampling_step
        self.total_sampling_steps = total_sampling_steps
        self.text_cond = text_cond
        self.text_uncond = text_uncond
        self.denoiser = denoiser


class CFGDenoisedParams:
    def __init__(self, x, sampling_step, total_sampling_steps, inner_model):
        self.x = x
        self.sampling_step = sampling_step
        self.total_sampling_steps = total_sampling_steps
        self.inner_model = inner_model


class AfterCFGCallbackParams:
    def __init__(self, x, sampling_step, total_sampling_steps):
        self.x = x
        self.sampling_step = sampling_step
        self.total_sampling_steps = total_sampling_steps


def _run(category, *args):
    for callback in list(callback_map[category]):
        try:
            callback(*args)
        except Exception:  # the host reports and goes on (errors.report)
            log.exception("error in %s callback %s", category, callback)


def cfg_denoiser_callback(params):
    _run("cfg_denoiser", params)


def cfg_denoised_callback(params):
    _run("cfg_denoised", params)


def cfg_after_cfg_callback(params):
    _run("cfg_after_cfg", params)


def infotext_pasted_callback(infotext, params):
    _run("infotext_pasted", infotext, params)


def before_ui_callback():
    _run("before_ui")


def _adder(category):
    def add(callback, *, name=None):
        callback_map[category].append(callback)
    return add


on_cfg_denoiser = _adder("cfg_denoiser")
on_cfg_denoised = _adder("cfg_denoised")
on_cfg_after_cfg = _adder("cfg_after_cfg")
on_infotext_pasted = _adder("infotext_pasted")
on_before_ui = _adder("before_ui")
on_ui_settings = _adder("ui_settings")
on_script_unloaded = _adder("script_unloaded")
on_model_loaded = _adder("model_loaded")


def remove_callbacks_for_function(callback):
    for callbacks in callback_map.values():
        while callback in callbacks:
            callbacks.remove(callback)


def clear_callbacks():
    callback_map.clear()
