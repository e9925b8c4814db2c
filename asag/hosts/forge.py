"""Forge / old Forge / reForge adapter (forge-and-controlnet.md A and D).

Before every sampling pass ASAG clones the UNet patcher, puts its post-CFG function first in
``sampler_post_cfg_function`` (ahead of inpaint_only's re-blend, so the masked area stays
protected) and assigns the clone back. Forge rebuilds ``forge_objects`` before every pass, so there
is nothing to undo. At each step the post-CFG function runs the extra pass on the cond rows through
the host's own batch helper, on a shallow copy of that step's ``model_options`` with the Sinkhorn
``attn1`` replacement added: ControlNet, IP-Adapter and every other patch apply to it as to the
main pass, and the live options are never changed.
"""
from __future__ import annotations

import importlib

from .. import guidance, layers, sinkhorn
from ..log import logger
from . import detect, job

STATE_ATTR = "_asag_state"
OWNED_ATTR = "_asag_owned"  # marks ASAG's functions in model_options lists, so a re-patch replaces them


class ForgeJob:
    """One generation's runtime state, kept on ``p`` (created in ``process``, dropped in ``postprocess``)."""

    def __init__(self, params):
        self.params = params
        self.step = None  # the step's CFGDenoiserParams; read at call time, later callbacks may replace .x
        self.step_x = None  # the step's x as it was when ASAG's on_cfg_denoiser ran
        self.main_call = True  # does the current sampling_function_inner call denoise the step's own x?

    def note_call_input(self, x) -> None:
        # reference-only records its style by calling sampling_function_inner on a freshly noised
        # reference latent, which runs every post-CFG function too (A.8). That call's input is a
        # new tensor; the real calls get the step's x itself. ASAG's pre-CFG function runs first,
        # before any other pre-CFG function (inpaint_only's) replaces x, so identity is reliable.
        self.main_call = self.step is None or x is self.step.x or x is self.step_x


def register_callbacks(script_callbacks) -> None:
    script_callbacks.on_cfg_denoiser(remember_step)


def remember_step(params) -> None:
    """``on_cfg_denoiser``: the step counters for the active window, and the step's x."""
    state = getattr(getattr(params.denoiser, "p", None), STATE_ATTR, None)
    if state is not None:
        state.step, state.step_x = params, params.x


def start_job(p, params) -> None:
    setattr(p, STATE_ATTR, ForgeJob(params) if params is not None else None)


def before_hr(p) -> None:
    """Nothing to do: Forge calls ``process_before_every_sampling`` for the hires. fix pass too."""


def end_job(p) -> None:
    setattr(p, STATE_ATTR, None)


def before_sampling(p) -> None:
    """Patch a clone of the UNet patcher for this sampling pass. Idempotent: hires. fix calls it
    twice, and ASAG's functions from an earlier call are replaced, not doubled."""
    state = getattr(p, STATE_ATTR, None)
    params = job.params_for_pass(state.params if state else None, getattr(p, "is_hr_pass", False))
    if params is None:
        return
    sd_model = p.sd_model
    if not any(getattr(sd_model, flag, False) for flag in ("is_sd1", "is_sd2", "is_sdxl")):
        job.not_applied(p, "this is not a UNet model (Flux/SD3/Chroma); ASAG supports SD1, SD2 and SDXL")
        return
    unet = sd_model.forge_objects.unet.clone()
    try:
        selected = layers.resolve_layers(params.layers, layers.self_attention_modules(unet.model.diffusion_model))
    except ValueError as err:
        job.not_applied(p, str(err))
        return
    host = detect.detect_host()
    # 3-tuple keys: Forge tries (block, id, index) before (block, id), and reference-only
    # registers 3-tuple keys on every layer, which would shadow 2-tuple ones.
    keys = [address.patch_key for address in selected]
    _put_first(unet.model_options, "sampler_pre_cfg_function", _pre_cfg_function(host, state))
    _put_first(unet.model_options, "sampler_post_cfg_function", _post_cfg_function(params, state, keys, _cond_prediction(host)))
    sd_model.forge_objects.unet = unet
    logger.debug("%s: extra pass with Sinkhorn attn1 at %s", host, ", ".join(map(str, keys)))


def _put_first(model_options: dict, name: str, function) -> None:
    setattr(function, OWNED_ATTR, True)
    others = [f for f in model_options.get(name, []) if not getattr(f, OWNED_ATTR, False)]
    model_options[name] = [function, *others]


def _pre_cfg_function(host: str, state: ForgeJob):
    """A pre-CFG function that only tells ``state`` which call is running (see ``note_call_input``)."""
    if host == detect.REFORGE:  # ComfyUI form: one dict, runs after the batch, returns the outputs
        def asag_pre_cfg(args):
            state.note_call_input(args["input"])
            return args["conds_out"]
    else:
        def asag_pre_cfg(model, cond, uncond, x, timestep, model_options):
            state.note_call_input(x)
            return model, cond, uncond, x, timestep, model_options
    return asag_pre_cfg


def _cond_prediction(host: str):
    """The host's batch helper as ``f(model, cond, x, sigma, model_options) -> cond prediction``."""
    if host == detect.REFORGE:
        calc_cond_batch = importlib.import_module("ldm_patched.modules.samplers").calc_cond_batch
        return lambda model, cond, x, sigma, options: calc_cond_batch(model, [cond], x, sigma, options)[0]
    module = "backend.sampling.sampling_function" if host == detect.FORGE else "ldm_patched.modules.samplers"
    calc_cond_uncond_batch = importlib.import_module(module).calc_cond_uncond_batch
    return lambda model, cond, x, sigma, options: calc_cond_uncond_batch(model, cond, None, x, sigma, options)[0]


def _post_cfg_function(params, state: ForgeJob, keys, cond_prediction):
    attn1 = sinkhorn_attn1(params)

    def asag_post_cfg(args):
        denoised = args["denoised"]
        if not state.main_call:
            return denoised  # reference-only's recording call: leave its recordings alone
        model, sigma = args["model"], args["sigma"]
        scale = guidance.scale_at(params, _progress(params, state, model, sigma))
        if scale == 0:
            return denoised
        options = with_attn1_replacement(args["model_options"], attn1, keys)
        perturbed = cond_prediction(model, args["cond"], args["input"], sigma, options)
        return guidance.apply_guidance(denoised, args["cond_denoised"], perturbed, scale, params.rescale)

    return asag_post_cfg


def _progress(params, state: ForgeJob, model, sigma) -> float:
    if params.progress_by == "steps" and state.step is not None:
        # the CFG denoiser's own counters where it has them, as the A1111 adapter reads them
        denoiser = state.step.denoiser
        step = getattr(denoiser, "step", state.step.sampling_step)
        total = getattr(denoiser, "total_steps", None) or state.step.total_sampling_steps
        return guidance.progress_from_steps(step, total)
    # by sigma, or no step counter seen (a caller that bypasses the CFG denoiser): the noise level
    sampling = model.predictor if hasattr(model, "predictor") else model.model_sampling  # new Forge; old Forge, reForge
    return guidance.progress_from_sigma(float(sigma.max()), float(sampling.sigma_min), float(sampling.sigma_max))


def sinkhorn_attn1(params):
    """The ``attn1`` replacement: q, k, v already projected, ``(B, N, heads * dim_head)``; k and v
    may have more tokens than q. Forge applies ``to_out`` to the result."""
    def asag_sinkhorn_attn1(q, k, v, extra_options):
        return sinkhorn.adversarial_sinkhorn_attention_heads(
            q, k, v, extra_options["n_heads"], iterations=params.iterations, strength=params.strength
        )
    return asag_sinkhorn_attn1


def with_attn1_replacement(model_options: dict, patch, keys) -> dict:
    """A copy of ``model_options`` with ``patch`` as the attn1 replacement at ``keys``. Each level
    on the way is copied, so ``model_options`` and everything it holds stay as they were (Forge's
    own helper writes back into the dict it is given: A.3)."""
    transformer_options = dict(model_options.get("transformer_options", {}))
    patches_replace = dict(transformer_options.get("patches_replace", {}))
    patches_replace["attn1"] = {**patches_replace.get("attn1", {}), **{key: patch for key in keys}}
    transformer_options["patches_replace"] = patches_replace
    return {**model_options, "transformer_options": transformer_options}
