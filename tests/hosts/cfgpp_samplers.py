"""The CFG++ samplers of Forge Neo and Forge Classic, as far as the tests drive them: Euler CFG++ and
DPM++ 2M CFG++ for an eps model. Neo: modules_forge/packages/k_diffusion/sampling.py:656-735
(exo101/sd-webui-forge-neo-v3 5692d2d); Classic: modules/sd_samplers_cfgpp.py:22-52, :151-189
(Haoming02 5136ce20). Both add, in the sampler's extra args, a post-CFG function that keeps the
step's ``uncond_denoised`` and disable the CFG-1 optimisation; the step then moves from the
(guided) denoised result along the uncond prediction's noise direction. For an eps model Neo's
``alpha`` factors are 1 (half-log-SNR = -log sigma), which makes its steps Classic's."""
import importlib

import torch


def _uncond_keeper():
    kept = {}

    def post_cfg_function(args):
        kept["uncond_denoised"] = args["uncond_denoised"]
        return args["denoised"]

    return kept, post_cfg_function


def _with_keeper(extra_args, post_cfg_function):
    # the stand-in's helper, importable only while a Forge line's stand-in is on sys.path
    set_model_options_post_cfg_function = importlib.import_module("backend.patcher.base").set_model_options_post_cfg_function
    model_options = dict(extra_args.get("model_options", {}))
    return {**extra_args, "model_options": set_model_options_post_cfg_function(model_options, post_cfg_function, disable_cfg1_optimization=True)}


@torch.no_grad()
def sample_euler_cfg_pp(model, x, sigmas, extra_args=None):
    kept, keeper = _uncond_keeper()
    extra_args = _with_keeper(extra_args or {}, keeper)
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        d = (x - kept["uncond_denoised"]) / sigmas[i]
        x = denoised + d * sigmas[i + 1]
    return x


@torch.no_grad()
def sample_dpmpp_2m_cfg_pp(model, x, sigmas, extra_args=None):
    kept, keeper = _uncond_keeper()
    extra_args = _with_keeper(extra_args or {}, keeper)
    s_in = x.new_ones([x.shape[0]])
    t_fn = lambda sigma: sigma.log().neg()  # noqa: E731
    old_uncond_denoised = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        uncond_denoised = kept["uncond_denoised"]
        t, t_next = t_fn(sigmas[i]), t_fn(sigmas[i + 1])
        h = t_next - t
        if old_uncond_denoised is None or sigmas[i + 1] == 0:
            denoised_mix = -torch.exp(-h) * uncond_denoised
        else:
            r = (t - t_fn(sigmas[i - 1])) / h
            denoised_mix = -torch.exp(-h) * uncond_denoised - torch.expm1(-h) * (1 / (2 * r)) * (denoised - old_uncond_denoised)
        x = denoised + denoised_mix + torch.exp(-h) * x
        old_uncond_denoised = uncond_denoised
    return x


SAMPLERS = {"Euler CFG++": sample_euler_cfg_pp, "DPM++ 2M CFG++": sample_dpmpp_2m_cfg_pp}
