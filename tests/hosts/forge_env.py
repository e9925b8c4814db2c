"""Test host for the Forge adapter: the stand-in Forge modules (tests/hosts/forge_standin) on
sys.path for the duration of one test, with those of Forge Neo (forge_neo_standin) or of the
ldm_patched backend of old Forge and Forge Classic (forge_legacy_standin, forge_classic_standin)
in front where the test runs on those lines, a tiny real ldm UNet behind Forge's patcher, and a driver
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

HERE = Path(__file__).parent
STANDIN = str(HERE / "forge_standin")
LEGACY_STANDIN = str(HERE / "forge_legacy_standin")
NEO_STANDIN = str(HERE / "forge_neo_standin")
CLASSIC_STANDIN = str(HERE / "forge_classic_standin")
STANDIN_PACKAGES = ("backend", "modules_forge", "ldm_patched")
NEW_BACKEND_SAMPLING = "backend.sampling.sampling_function"

# The Forge lines, each as its stand-ins (searched first to last) and what ASAG's console calls it.
# "forge-legacy" and "classic" run the ldm_patched backend: new Forge's sampling module is made
# unimportable, as those hosts have no backend/, and blocks are called as they call them.
LINES = {
    "forge": dict(paths=[STANDIN], legacy=False, name="Forge (backend)"),
    "neo": dict(paths=[NEO_STANDIN, STANDIN], legacy=False, name="Forge Neo (backend)"),
    "forge-legacy": dict(paths=[STANDIN, LEGACY_STANDIN], legacy=True, name="Forge (ldm_patched)"),
    "classic": dict(paths=[CLASSIC_STANDIN, STANDIN, LEGACY_STANDIN], legacy=True, name="Forge Classic (ldm_patched)"),
}


def _drop_standin_modules():
    for name in list(sys.modules):
        if name.split(".")[0] in STANDIN_PACKAGES:
            del sys.modules[name]


def _host(line: str):
    """The stand-in of one Forge line on sys.path; everything it put in sys.modules is removed afterwards."""
    _drop_standin_modules()
    paths, legacy = LINES[line]["paths"], LINES[line]["legacy"]
    for path in reversed(paths):
        sys.path.insert(0, path)
    if legacy:
        sys.modules[NEW_BACKEND_SAMPLING] = None  # import raises ImportError
    # Tiny tensors: one thread is fastest, and spares the spin-waits of an oversubscribed CPU.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield SimpleNamespace(
            line=line,
            name=LINES[line]["name"],
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


# Which lines a test runs on is the fixture it takes: forge_host, the backend/ lines (lllyasviel's
# Forge, Forge Neo: the adapter tests); forge_legacy_host, the ldm_patched lines (old Forge, Forge
# Classic); forge_line_host, all four (the reuse matrix, samplers, AND, inpainting); and
# haoming_line_host, Neo and Classic (their CFG++ samplers).
@pytest.fixture(params=["forge", "neo"])
def forge_host(request):
    yield from _host(request.param)


@pytest.fixture(params=["forge-legacy", "classic"])
def forge_legacy_host(request):
    yield from _host(request.param)


@pytest.fixture(params=sorted(LINES))
def forge_line_host(request):
    """Every Forge line, for the few tests that need all four at once (also taken indirectly, with
    the line as the parameter: ``@pytest.mark.parametrize("forge_line_host", [...], indirect=True)``)."""
    yield from _host(request.param)


@pytest.fixture(params=["neo", "classic"])
def haoming_line_host(request):
    """Haoming02's maintained lines: what they alone have (CFG++ samplers, their XYZ, their quirks)."""
    yield from _host(request.param)


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


def make_p(host, *, seed=0, layout_flags=("is_sd1",), inpaint=False):
    """``inpaint``: an inpainting model (9 input channels: latent, mask, masked latent)."""
    unet = _fill_zero_initialised(tiny_unet("sd1", seed=seed, in_channels=9 if inpaint else 4), seed)
    patcher = host.patcher.UnetPatcher(host.k_model.KModel(unet))
    if host.legacy:
        importlib.import_module("ldm_patched.ldm.modules.diffusionmodules.openaimodel").legacy_unet(unet)
    # Forge Neo's engine (backend/diffusion_engine/base.py:36, :83-85) has no is_sd2, and is_inpaint.
    names = ("is_sd1", "is_sdxl", "is_wan") if host.line == "neo" else ("is_sd1", "is_sd2", "is_sdxl", "is_sd3")
    flags = {flag: flag in layout_flags for flag in names}
    if host.line == "neo":
        flags["is_inpaint"] = inpaint
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


def denoise_step(host, p, callbacks, x, sigma, cond, uncond, cond_scale, step=0, total=10, model_options=None, image_cond=None,
                 composition=None):
    """One CFGDenoiser.forward step; returns (denoised, cond_pred, uncond_pred). ``model_options``:
    what a sampler sends in its extra args (the CFG++ samplers of Neo and Classic); each line hands
    them on as its CFGDenoiser does (lllyasviel's Forge and old Forge have no such sampler).
    ``composition``: the WebUI's AND composition of ``cond``'s rows (per image, (row, weight)
    pairs); by default one prompt per image, as prompt_parser.reconstruct_multicond_batch gives it."""
    if composition is None:
        composition = [[(i, 1.0)] for i in range(x.shape[0])]
    denoiser = SimpleNamespace(inner_model=SimpleNamespace(inner_model=p.sd_model), p=p)
    sigmas = torch.full((x.shape[0],), float(sigma))
    params = SimpleNamespace(x=x, image_cond=image_cond, sigma=sigmas, sampling_step=step, total_sampling_steps=total,
                             text_cond=cond, text_uncond=uncond, denoiser=denoiser)
    for callback in callbacks.cfg_denoiser:
        callback(params)
    with torch.no_grad():
        if host.line == "neo":
            return host.sampling.sampling_function(denoiser, params, cond_scale, composition, extra_model_options=model_options)
        if host.line == "classic":
            sampler = importlib.import_module("modules_forge.forge_sampler")
            return sampler.cfg_denoiser_sample(denoiser, params, cond_scale, composition, model_options=model_options)
        assert model_options is None, f"{host.line} has no sampler that sends model options"
        return host.sampling.sampling_function(denoiser, params, cond_scale, composition)


def euler(host, p, callbacks, x, sigmas, cond, uncond, cond_scale):
    """Euler over ``sigmas`` as the WebUI's sampler drives the CFG denoiser: the final latent."""
    for step, (sigma, following) in enumerate(zip(sigmas, sigmas[1:])):
        denoised = denoise_step(host, p, callbacks, x, sigma, cond, uncond, cond_scale, step=step, total=len(sigmas) - 1)[0]
        x = x + (x - denoised) / sigma * (following - sigma)
    return x
