"""AUTOMATIC1111 adapter (v1.6 to v1.10 and dev): the extra pass inside ``CFGDenoiser.forward``.

Per model call (host facts: a1111.md section 3):
  on_cfg_denoiser   keep the live ``CFGDenoiserParams`` (read later, so edits by callbacks that
                    run after ours, such as ControlNet's, are seen), decide the step's scale, and
                    where the extra pass can take blocks from the main pass, record them;
  on_cfg_denoised   after the main UNet pass (so per-generation caches of other extensions are
                    sized by it), run the perturbed pass on the cond rows through the same inner
                    model, with the selected ``attn1`` instances swapped for Sinkhorn attention
                    for that call only, and compute ``w * (cond - perturbed)`` per image;
  on_cfg_after_cfg  add it, times ``nmask`` where the inpaint blend already ran: the same as
                    adding it before that (linear) blend, so masked-off areas stay untouched.
Nothing is left patched between steps. If the main pass itself fails, the block recording it had
put in place is removed at the next ``process()``.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field

import torch

from ..attention import sinkhorn_attention
from ..diagnostics import Diagnostics, Stopwatch, synchronize
from ..guidance import progress_from_sigma, progress_from_steps, rescale_to, scale_at
from ..layers import resolve_layers, self_attention_modules
from ..log import logger
from ..params import AsagParams
from ..reuse import BlockReuse, every_row, first_rows
from . import NotApplicable, controlnet, job
from .settings import HostOptions


@dataclass
class UnetPlan:
    """What ASAG does to one UNet: the selected attn1 modules, and the reusable blocks."""

    unet: object
    addresses: list
    modules: list
    reuse: BlockReuse | None


@dataclass
class ModelCall:
    """What one denoiser call needs between the three callbacks."""

    denoiser_params: object  # the host's CFGDenoiserParams, read at on_cfg_denoised time
    denoiser: object
    params: AsagParams
    scale: float
    plan: UnetPlan
    term: torch.Tensor | None = None  # w * (cond - perturbed), per image
    cond_reference: torch.Tensor | None = None  # each image's cond prediction, for rescale
    main_started: float = 0.0  # diagnostics: when the main UNet pass began


@dataclass
class JobState:
    p: object
    params: AsagParams
    options: HostOptions = HostOptions()
    in_hr_pass: bool = False
    disabled: bool = False  # set once ASAG found it cannot apply to this job
    full_batch: bool = False
    unets: dict = field(default_factory=dict)  # id(diffusion_model) -> UnetPlan
    call: ModelCall | None = None
    diagnostics: Diagnostics | None = None

    def stop_recording(self) -> None:
        for plan in self.unets.values():
            if plan.reuse is not None:
                plan.reuse.stop()


class _ActiveJob:
    # The WebUI runs one generation at a time, and on 1.6/1.7 the cfg callbacks get no way back to
    # ``p``: the running job is kept here, replaced by every ``process()`` and cleared at its end.
    state: JobState | None = None


ACTIVE = _ActiveJob()


# ---- script hooks ------------------------------------------------------------------------------
def register_callbacks(script_callbacks) -> None:
    script_callbacks.on_cfg_denoiser(on_cfg_denoiser)
    script_callbacks.on_cfg_denoised(on_cfg_denoised)
    script_callbacks.on_cfg_after_cfg(on_cfg_after_cfg)


def start_job(p, params: AsagParams | None, options: HostOptions = HostOptions()) -> None:
    if ACTIVE.state is not None:  # a job that an exception ended before its postprocess
        ACTIVE.state.stop_recording()
    ACTIVE.state = None
    if params is None:
        return
    state = JobState(p, params, options, full_batch=params.full_batch)
    try:
        _check_model(p)
        _plan(state)
    except NotApplicable as err:
        job.not_applied(p, str(err))
        return
    state.full_batch = params.full_batch or controlnet.needs_full_batch(p)
    if options.diagnostics:
        state.diagnostics = Diagnostics()
    ACTIVE.state = state


def before_sampling(p) -> None:
    pass  # the cfg callbacks find everything at call time


def before_hr(p) -> None:
    if ACTIVE.state is not None and ACTIVE.state.p is p:
        ACTIVE.state.in_hr_pass = True


def end_job(p) -> None:
    state = ACTIVE.state
    if state is None or state.p is not p:
        return
    state.stop_recording()
    if state.diagnostics is not None:
        job.log_diagnostics(state.diagnostics)
    ACTIVE.state = None


# ---- model checks and layers -------------------------------------------------------------------
def _check_model(p) -> None:
    from modules import shared, sd_unet

    model = shared.sd_model
    if getattr(model, "is_sd3", False) or not hasattr(getattr(model, "model", None), "diffusion_model"):
        raise NotApplicable(f"{type(model).__name__} has no UNet (ASAG supports SD1, SD2 and SDXL)")
    if getattr(sd_unet, "current_unet", None) is not None:
        raise NotApplicable("an alternative UNet (such as TensorRT) replaces the PyTorch one, whose attention ASAG patches")


def _plan(state: JobState) -> UnetPlan:
    """The plan for the loaded UNet, made again when the model changes (refiner)."""
    from modules import shared

    unet = shared.sd_model.model.diffusion_model
    if id(unet) not in state.unets:
        available = self_attention_modules(unet)
        try:
            addresses = resolve_layers(state.params.layers, available)
        except ValueError as err:
            raise NotApplicable(str(err)) from None
        reuse = BlockReuse(unet, addresses) if state.options.reuse and not _low_vram() else None
        state.unets[id(unet)] = UnetPlan(unet, addresses, [available[a] for a in addresses], reuse)
    return state.unets[id(unet)]


def _low_vram() -> bool:
    """``--lowvram`` moves every block to the GPU for each call and back (a forward pre-hook on
    each block, modules/lowvram.py), so a replayed block still pays its transfer, the largest part
    of its cost there, while the recordings would take GPU memory that the option exists to save:
    reuse is off under it (said once per generation). ``--medvram`` keeps the UNet on the GPU
    whole while it runs: reuse pays as usual."""
    from modules import shared

    low = bool(getattr(getattr(shared, "cmd_opts", None), "lowvram", False))
    if low:
        logger.info("reuse of the main pass is off under --lowvram: the blocks move to the GPU for every call anyway")
    return low


# ---- the cfg callbacks ---------------------------------------------------------------------------
def _state_for(denoiser_params) -> JobState | None:
    state = ACTIVE.state
    if state is None or state.disabled:
        return None
    denoiser = getattr(denoiser_params, "denoiser", None)  # v1.8+
    if denoiser is not None and getattr(denoiser, "p", state.p) is not state.p:
        return None  # a sampler that is not this job's (another extension's own sampling)
    return state


def _progress(params: AsagParams, denoiser, denoiser_params) -> float:
    if params.progress_by == "sigma":
        return _noise_progress(denoiser.inner_model, float(denoiser_params.sigma[0]))
    step = getattr(denoiser, "step", denoiser_params.sampling_step)
    total = getattr(denoiser, "total_steps", None) or denoiser_params.total_sampling_steps
    return progress_from_steps(step, total)


def _noise_progress(inner_model, sigma: float) -> float:
    sigmas = getattr(inner_model, "sigmas", None)  # k-diffusion wrappers: a sigma table
    if sigmas is None:
        # Timestep samplers (DDIM, PLMS, UniPC) pass the timestep; map it to its sigma.
        alphas = inner_model.inner_model.alphas_cumprod.double()
        sigmas = ((1 - alphas) / alphas).sqrt()
        sigma = float(sigmas[min(max(int(round(sigma)), 0), len(sigmas) - 1)])
    return progress_from_sigma(sigma, float(sigmas.min()), float(sigmas.max()))


def on_cfg_denoiser(denoiser_params) -> None:
    state = _state_for(denoiser_params)
    if state is None:
        return
    state.stop_recording()  # a previous call whose extra pass never came
    state.call = None
    params = job.params_for_pass(state.params, state.in_hr_pass)
    if params is None:
        return
    denoiser = getattr(denoiser_params, "denoiser", None) or state.p.sampler.model_wrap_cfg  # 1.6/1.7
    scale = scale_at(params, _progress(params, denoiser, denoiser_params))
    if scale == 0:
        return
    try:
        plan = _plan(state)  # apply_refiner, which may swap the model, ran before this callback
    except NotApplicable as err:  # the refiner swapped in a model without these layers
        state.disabled = True
        job.not_applied(state.p, str(err))
        return
    if not job.acts_at(state.p, params, plan.unet, plan.addresses, denoiser_params.x):
        return
    state.call = ModelCall(denoiser_params, denoiser, params, scale, plan)
    if plan.reuse is not None:
        # The main pass's layout (a1111.md 3.1): each image's cond rows first, then the uncond rows.
        plan.reuse.record(every_row if state.full_batch else first_rows(_rows(denoiser_params.text_cond)))
    if state.diagnostics is not None:
        synchronize(denoiser_params.x)
        state.call.main_started = time.perf_counter()


def on_cfg_denoised(denoised_params) -> None:
    state = ACTIVE.state
    call = state.call if state is not None else None
    if call is None:
        return
    diagnostics = state.diagnostics
    if diagnostics is not None:
        synchronize(denoised_params.x)
        diagnostics.main_seconds += time.perf_counter() - call.main_started
    observe = diagnostics.plan_observer(call.params.iterations, call.params.strength) if diagnostics is not None else None
    # The stopwatch synchronises a GPU: only when diagnostics are on.
    watch = Stopwatch(denoised_params.x) if diagnostics is not None else contextlib.nullcontext()
    reuse = call.plan.reuse
    try:
        if reuse is not None:
            reuse.replay()
        with watch, sinkhorn_attention(call.plan.modules, call.params, observe, state.options.attention_budget_bytes):
            perturbed = _perturbed_pass(call, denoised_params.inner_model, state.full_batch)
    finally:
        reused_blocks = reuse.stop() if reuse is not None else 0
    n_cond = perturbed.shape[0]
    cond = denoised_params.x[:n_cond]
    call.term, call.cond_reference = _per_image(call, cond, perturbed)
    if diagnostics is not None:
        diagnostics.record_pass(call.term, perturbed, cond, watch.seconds)
        if reuse is not None:
            diagnostics.record_reuse(reuse, reused_blocks)
    job.note_full_extra_pass(state.p, reuse, reused_blocks)


def on_cfg_after_cfg(after_params) -> None:
    state = ACTIVE.state
    call = state.call if state is not None else None
    if call is None or call.term is None:
        return
    state.call = None
    denoised = after_params.x
    guided = rescale_to(denoised + call.term.to(denoised.dtype), call.cond_reference.to(denoised.dtype), call.params.rescale)
    change = guided - denoised
    denoiser = call.denoiser
    if getattr(denoiser, "mask", None) is not None and not getattr(denoiser, "mask_before_denoising", False):
        change = change * denoiser.nmask  # the inpaint blend already ran: keep the protected area
    after_params.x = denoised + change


# ---- the perturbed pass --------------------------------------------------------------------------
def _rows(cond) -> int:
    return (cond["crossattn"] if isinstance(cond, dict) else cond).shape[0]


def _condition_dict(c, image_cond):
    """``CFGDenoiser.forward``'s local ``make_condition_dict`` (a1111.md 3.1 step 6)."""
    from modules import shared

    if shared.sd_model.model.conditioning_key == "crossattn-adm":  # unCLIP
        return {"c_crossattn": [c], "c_adm": image_cond}
    if isinstance(c, dict):  # SDXL: crossattn + vector
        return {**c, "c_concat": [image_cond]}
    return {"c_crossattn": [c], "c_concat": [image_cond]}


def _run_rows(inner_model, x, sigma, cond, image_cond, chunk: int) -> torch.Tensor:
    """One inner-model call over the rows, or calls of ``chunk`` rows when the user turned
    ``batch_cond_uncond`` off (low-VRAM setups), as the host does."""
    from modules.sd_samplers_cfg_denoiser import subscript_cond

    if chunk >= x.shape[0]:
        return inner_model(x, sigma, cond=_condition_dict(cond, image_cond))
    return torch.cat([
        inner_model(x[a:a + chunk], sigma[a:a + chunk], cond=_condition_dict(subscript_cond(cond, a, a + chunk), image_cond[a:a + chunk]))
        for a in range(0, x.shape[0], chunk)
    ])


def _perturbed_pass(call: ModelCall, inner_model, full_batch: bool) -> torch.Tensor:
    """The perturbed prediction for the cond rows (``[N_cond, C, H, W]``)."""
    from modules import shared
    from modules.sd_samplers_cfg_denoiser import catenate_conds

    dp = call.denoiser_params
    text_cond, text_uncond = _padded_as_the_main_pass(call.denoiser, dp.text_cond, dp.text_uncond)
    n_cond, n_images = _rows(text_cond), _rows(text_uncond)
    chunk = dp.x.shape[0] if shared.opts.batch_cond_uncond else n_images
    if not full_batch:
        return _run_rows(inner_model, dp.x[:n_cond], dp.sigma[:n_cond], text_cond, dp.image_cond[:n_cond], chunk)
    # Full batch: the main pass's [cond rows, uncond rows] layout, for ControlNet units whose caches
    # were sized by it; only the cond rows are kept.
    x, sigma, image_cond = dp.x[:n_cond + n_images], dp.sigma[:n_cond + n_images], dp.image_cond[:n_cond + n_images]
    if _token_count(text_cond) == _token_count(text_uncond):
        both = catenate_conds([text_cond, text_uncond])
        return _run_rows(inner_model, x, sigma, both, image_cond, chunk)[:n_cond]
    # Different prompt lengths and no padding: the host runs cond chunks, then the uncond rows.
    cond_out = _run_rows(inner_model, x[:n_cond], sigma[:n_cond], text_cond, image_cond[:n_cond], 2 * n_images if shared.opts.batch_cond_uncond else n_images)
    _run_rows(inner_model, x[n_cond:], sigma[n_cond:], text_uncond, image_cond[n_cond:], x.shape[0])
    return cond_out


def _padded_as_the_main_pass(denoiser, cond, uncond):
    """cond and uncond as ``CFGDenoiser.forward`` ran them after the callbacks (a1111.md 3.1 step
    10): where their token counts differ, ``pad_cond_uncond_v0`` (v1.8+) pads or cuts uncond,
    else ``pad_cond_uncond`` appends the empty prompt to the shorter one. The same attention as
    the unpadded cond, and the context the main pass's recorded rows saw."""
    from modules import shared
    from modules.sd_samplers_cfg_denoiser import pad_cond

    if _token_count(cond) == _token_count(uncond):
        return cond, uncond
    copy = lambda c: dict(c) if isinstance(c, dict) else c  # noqa: E731 - the host pads dicts in place
    cond, uncond = copy(cond), copy(uncond)
    if getattr(shared.opts, "pad_cond_uncond_v0", False) and hasattr(denoiser, "pad_cond_uncond_v0"):
        return denoiser.pad_cond_uncond_v0(cond, uncond)
    if not getattr(shared.opts, "pad_cond_uncond", False):
        return cond, uncond
    empty = shared.sd_model.cond_stage_model_empty_prompt
    repeats = (_token_count(cond) - _token_count(uncond)) // empty.shape[1]
    if repeats < 0:
        cond = pad_cond(cond, -repeats, empty)
    elif repeats > 0:
        uncond = pad_cond(uncond, repeats, empty)
    return cond, uncond


def _token_count(cond) -> int:
    return (cond["crossattn"] if isinstance(cond, dict) else cond).shape[1]


def _per_image(call: ModelCall, cond: torch.Tensor, perturbed: torch.Tensor):
    """Sum ``w * weight * (cond - perturbed)`` over each image's cond rows (AND prompts give an
    image several weighted rows), and each image's first cond row as the rescale reference."""
    conds_list = _conds_list(call.denoiser)
    difference = cond - perturbed
    term = torch.stack([sum(difference[row] * (weight * call.scale) for row, weight in rows) for rows in conds_list])
    reference = torch.stack([cond[rows[0][0]] for rows in conds_list])
    return term, reference


def _conds_list(denoiser):
    """Per image, its ``(cond row, weight)`` pairs, as ``CFGDenoiser.forward`` computed them."""
    from modules import prompt_parser

    conds_list, _ = prompt_parser.reconstruct_multicond_batch(denoiser.sampler.sampler_extra_args["cond"], denoiser.step)
    return conds_list
