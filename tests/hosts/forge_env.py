"""Test host for the Forge adapter: the stand-in Forge modules (tests/hosts/forge_standin) on
sys.path for the duration of one test (with tests/hosts/forge_legacy_standin for the ldm_patched
backend of old Forge and Forge Classic), a tiny real ldm UNet behind Forge's patcher, and a driver
for one denoiser step as Forge's CFGDenoiser.forward makes it (modules/sd_samplers_cfg_denoiser.py
at dfdcbab: build CFGDenoiserParams from the raw latent, run the on_cfg_denoiser callbacks, call
sampling_function)."""
import importlib
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from tests.models import CONTEXT_DIM, tiny_unet

STANDIN = str(Path(__file__).with_name("forge_standin"))
LEGACY_STANDIN = str(Path(__file__).with_name("forge_legacy_standin"))
STANDIN_PACKAGES = ("backend", "modules_forge", "ldm_patched")
NEW_BACKEND_SAMPLING = "backend.sampling.sampling_function"


def _drop_standin_modules():
    for name in list(sys.modules):
        if name.split(".")[0] in STANDIN_PACKAGES:
            del sys.modules[name]


def _host(legacy: bool):
    """The stand-in Forge on sys.path; everything it put in sys.modules is removed afterwards.
    ``legacy``: the ldm_patched backend (old Forge, Forge Classic): new Forge's sampling module is
    made unimportable, as those hosts have no backend/, and blocks are called as they call them."""
    _drop_standin_modules()
    paths = [STANDIN, LEGACY_STANDIN] if legacy else [STANDIN]
    for path in paths:
        sys.path.insert(0, path)
    if legacy:
        sys.modules[NEW_BACKEND_SAMPLING] = None  # import raises ImportError
    # Tiny tensors: one thread is fastest, and spares the spin-waits of an oversubscribed CPU.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield SimpleNamespace(
            legacy=legacy,
            forge=importlib.import_module("asag.hosts.forge"),
            job=importlib.import_module("asag.hosts.job"),
            detect=importlib.import_module("asag.hosts.detect"),
            sampling=importlib.import_module("ldm_patched.modules.samplers" if legacy else NEW_BACKEND_SAMPLING),
            patcher=importlib.import_module("backend.patcher.unet"),
            k_model=importlib.import_module("backend.modules.k_model"),
            unet_nn=importlib.import_module("backend.nn.unet"),
        )
    finally:
        torch.set_num_threads(threads)
        for path in paths:
            sys.path.remove(path)
        _drop_standin_modules()


@pytest.fixture
def forge_host():
    yield from _host(legacy=False)


@pytest.fixture
def forge_legacy_host():
    yield from _host(legacy=True)


class ScriptCallbacks:
    """The part of modules.script_callbacks the adapter registers with."""

    def __init__(self):
        self.cfg_denoiser = []

    def on_cfg_denoiser(self, callback, *, name=None):
        self.cfg_denoiser.append(callback)


def _fill_zero_initialised(unet, seed):
    """ldm zero-initialises the UNet's output conv and every transformer's proj_out (so a fresh
    model predicts eps = 0 whatever its attention does); give them small random weights."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in unet.parameters():
            if not param.any():
                param.copy_(torch.randn(param.shape, generator=g) * 0.1)
    return unet


def make_p(host, *, seed=0, layout_flags=("is_sd1",)):
    unet = _fill_zero_initialised(tiny_unet("sd1", seed=seed), seed)
    patcher = host.patcher.UnetPatcher(host.k_model.KModel(unet))
    if host.legacy:
        importlib.import_module("ldm_patched.ldm.modules.diffusionmodules.openaimodel").legacy_unet(unet)
    flags = {flag: flag in layout_flags for flag in ("is_sd1", "is_sd2", "is_sdxl", "is_sd3")}
    sd_model = SimpleNamespace(forge_objects=SimpleNamespace(unet=patcher), **flags)
    return SimpleNamespace(sd_model=sd_model, extra_generation_params={}, is_hr_pass=False, seeds=[seed])


def reset_forge_objects(p, pristine):
    """What Forge's processing does before every sampling pass: a fresh shallow copy."""
    p.sd_model.forge_objects = SimpleNamespace(unet=pristine)


def inputs(seed=1, batch=1, uncond_tokens=7):
    """Latent, prompt (7 tokens) and negative prompt (``uncond_tokens``: 14 stands for a negative
    prompt of two 77-token chunks beside a prompt of one)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 4, 16, 16, generator=g) * 3.0
    cond = torch.randn(batch, 7, CONTEXT_DIM, generator=g)
    uncond = torch.randn(batch, uncond_tokens, CONTEXT_DIM, generator=g)
    return x, cond, uncond


def denoise_step(host, p, callbacks, x, sigma, cond, uncond, cond_scale, step=0, total=10):
    """One CFGDenoiser.forward step; returns (denoised, cond_pred, uncond_pred)."""
    denoiser = SimpleNamespace(inner_model=SimpleNamespace(inner_model=p.sd_model), p=p)
    sigmas = torch.full((x.shape[0],), float(sigma))
    params = SimpleNamespace(x=x, image_cond=None, sigma=sigmas, sampling_step=step, total_sampling_steps=total,
                             text_cond=cond, text_uncond=uncond, denoiser=denoiser)
    for callback in callbacks.cfg_denoiser:
        callback(params)
    with torch.no_grad():
        return host.sampling.sampling_function(denoiser, params, cond_scale, None)
