"""Forge / old Forge / reForge adapter (forge-and-controlnet.md A and D).

Before every sampling pass ASAG clones the UNet patcher, puts its post-CFG function first in
``sampler_post_cfg_function`` (ahead of inpaint_only's re-blend, so the masked area stays
protected) and assigns the clone back. Forge rebuilds ``forge_objects`` before every pass, so there
is nothing to undo. At each step the post-CFG function runs the extra pass on the cond rows through
the host's own batch helper, on a shallow copy of that step's ``model_options`` with the Sinkhorn
``attn1`` replacement added: ControlNet, IP-Adapter and every other patch apply to it as to the
main pass, and the live options are never changed.

Reuse of the main pass (asag/reuse.py): ``on_cfg_denoiser`` starts recording the cond rows of the
step's main pass (``transformer_options["cond_or_uncond"]`` tells which rows those are, however
the host batched or split them) and the post-CFG function replays them in the extra pass, then
removes the block forwards it had put in place. What the host does inside a block call is given
to the core by ``host_blocks``: the ``ldm_patched`` UNet (old Forge, reForge, Forge Classic) calls
its blocks through ``forward_timestep_embed``; a block call advances ``transformer_index``; patches
and modifiers that act inside blocks make the extra pass run in full. Forge batches prompts of
different lengths by repeating the shorter context to a common length, so the extra pass is given
each prompt's context as the main pass ran it (the same attention), which keeps the rows matched.

Transformer models (Forge Neo's Flux, Chroma, Lumina 2, Z-Image, Anima, Qwen-Image): the same
post-CFG function and batch helper; what differs, how the extra pass is perturbed and how its
blocks are replayed, is asag/hosts/forge_dit.py, and what differs between model families is
asag/hosts/families.
"""
from __future__ import annotations

import contextlib
import importlib
import time

from .. import guidance, layers
from ..diagnostics import Diagnostics, Stopwatch, synchronize
from ..log import logger
from ..reuse import BlockReuse, HostBlocks, remove_leftovers
from . import detect, families, forge_dit, job
from .patcher_protocol import cond_rows, context_as_recorded, sinkhorn_attn1, unet_host_blocks
from .settings import HostOptions

STATE_ATTR = "_asag_state"
OWNED_ATTR = "_asag_owned"  # marks ASAG's functions in model_options lists, so a re-patch replaces them
OWNED_LISTS = ("sampler_pre_cfg_function", "sampler_post_cfg_function")
# The UNet module of each backend: its SpatialTransformer class, and for ldm_patched the function
# that calls the blocks.
UNET_MODULES = {detect.FORGE: "backend.nn.unet"}
LDM_PATCHED_UNET = "ldm_patched.ldm.modules.diffusionmodules.openaimodel"


class ForgeJob:
    """One generation's runtime state, kept on ``p`` (created in ``process``, dropped in ``postprocess``)."""

    def __init__(self, params, options: HostOptions = HostOptions()):
        self.params = params
        self.options = options
        self.diagnostics = Diagnostics() if options.diagnostics else None
        self.pass_params = None  # the settings of the sampling pass under way (first pass or hires fix)
        self.selected = []  # that pass's selected layers
        self.acts = None  # acts(latent): whether they can change anything for this latent
        self.reuse: BlockReuse | None = None  # that pass's UNet's reusable blocks
        self.step = None  # the step's CFGDenoiserParams; read at call time, later callbacks may replace .x
        self.step_x = None  # the step's x as it was when ASAG's on_cfg_denoiser ran
        self.step_started = 0.0  # diagnostics: when the step's main pass began
        self.main_call = True  # does the current sampling_function_inner call denoise the step's own x?

    def note_call_input(self, x) -> None:
        # reference-only records its style by calling sampling_function_inner on a freshly noised
        # reference latent, which runs every post-CFG function too (A.8). That call's input is a
        # new tensor; the real calls get the step's x itself. ASAG's pre-CFG function runs first,
        # before any other pre-CFG function (inpaint_only's) replaces x, so identity is reliable.
        self.main_call = self.step is None or x is self.step.x or x is self.step_x

    def stop_recording(self) -> int:
        return self.reuse.stop() if self.reuse is not None else 0


def register_callbacks(script_callbacks) -> None:
    script_callbacks.on_cfg_denoiser(remember_step)


def remember_step(params) -> None:
    """``on_cfg_denoiser``: the step counters for the active window, and the step's x; where the
    step will run the extra pass, start recording its main pass."""
    p = getattr(params.denoiser, "p", None)
    state = getattr(p, STATE_ATTR, None)
    if state is None:
        return
    state.step, state.step_x = params, params.x
    state.stop_recording()  # a step whose extra pass never came
    if state.pass_params is None:
        return
    model = p.sd_model.forge_objects.unet.model
    if guidance.scale_at(state.pass_params, _progress(state.pass_params, state, model, params.sigma)) == 0:
        return
    if not state.acts(params.x):
        return
    if state.reuse is not None:
        state.reuse.record(cond_rows)
    if state.diagnostics is not None:
        synchronize(params.x)
        state.step_started = time.perf_counter()


def host_blocks(host: str) -> HostBlocks:
    """What a block call does on this backend besides computing (see asag/reuse.py)."""
    unet_module = importlib.import_module(UNET_MODULES.get(host, LDM_PATCHED_UNET))
    return unet_host_blocks(unet_module, through_function=host != detect.FORGE)


def start_job(p, params, options: HostOptions = HostOptions()) -> None:
    setattr(p, STATE_ATTR, ForgeJob(params, options) if params is not None else None)


def before_hr(p) -> None:
    """Nothing to do: Forge calls ``process_before_every_sampling`` for the hires. fix pass too."""


def end_job(p) -> None:
    state = getattr(p, STATE_ATTR, None)
    if state is not None:
        state.stop_recording()
        if state.diagnostics is not None:
            job.log_diagnostics(state.diagnostics)
    setattr(p, STATE_ATTR, None)


def before_sampling(p) -> None:
    """Patch a clone of the UNet patcher for this sampling pass. Idempotent: hires. fix calls it
    twice, and ASAG's functions from an earlier call are replaced, not doubled."""
    state = getattr(p, STATE_ATTR, None)
    if state is not None:
        state.stop_recording()
        state.pass_params = state.reuse = None
    sd_model = p.sd_model
    host = detect.detect_host()
    is_unet = any(getattr(sd_model, flag, False) for flag in ("is_sd1", "is_sd2", "is_sdxl"))
    family = None if is_unet else families.family_for(sd_model.forge_objects.unet.model.diffusion_model)
    blocks = host_blocks(host) if is_unet else forge_dit.host_blocks(family) if family else None
    if blocks is not None:  # with ASAG on or off: what a generation that an exception ended mid-step left
        remove_leftovers(sd_model.forge_objects.unet.model.diffusion_model, blocks)
    params = job.params_for_pass(state.params if state else None, getattr(p, "is_hr_pass", False))
    if params is None:
        _remove_functions(sd_model)
        return
    if blocks is None:
        job.not_applied(p, "this is not a UNet model (SD1, SD2, SDXL) nor a transformer ASAG supports "
                           f"({', '.join(f.name for f in families.FAMILIES)} on Forge Neo): the model is "
                           f"{type(sd_model.forge_objects.unet.model.diffusion_model).__name__}")
        return
    unet = sd_model.forge_objects.unet.clone()
    diffusion_model = unet.model.diffusion_model
    budget = state.options.attention_budget_bytes
    try:
        if is_unet:
            selected = layers.resolve_layers(params.layers, layers.self_attention_modules(diffusion_model))
            # 3-tuple keys: Forge tries (block, id, index) before (block, id), and reference-only
            # registers 3-tuple keys on every layer, which would shadow 2-tuple ones.
            perturbation = UnetPerturbation(params, [address.patch_key for address in selected], budget)
            state.acts = lambda latent: job.acts_at(p, params, diffusion_model, selected, latent)
        else:
            family.check_host()
            selected = family.resolve(params.dit_layers, diffusion_model)
            job.note_auto_blocks(p, params, family, family.kinds(diffusion_model))
            perturbation = forge_dit.DitPerturbation(family, diffusion_model, selected, params, budget)
            state.acts = lambda latent: True  # image tokens attend over many: never the identity
    except ValueError as err:
        job.not_applied(p, str(err))
        return
    state.pass_params, state.selected = params, selected
    # A transformer's extra pass must see the text as the main pass ran it (repeated to the batch's
    # length, which changes joint attention), so its main pass is read even with reuse off.
    reused = selected if state.options.reuse else []
    state.reuse = BlockReuse(diffusion_model, reused, blocks) if state.options.reuse or not is_unet else None
    post_cfg = _post_cfg_function(p, params, state, perturbation, _cond_prediction(host))
    _put_first(unet.model_options, "sampler_pre_cfg_function", _pre_cfg_function(host, state, post_cfg))
    _put_first(unet.model_options, "sampler_post_cfg_function", post_cfg)
    sd_model.forge_objects.unet = unet
    logger.debug("%s: extra pass with Sinkhorn attention at %s%s", host, ", ".join(map(str, selected)),
                 f" of {family.name}" if family else "")


def _remove_functions(sd_model) -> None:
    """A pass without ASAG: take ASAG's functions out of the UNet patcher an earlier pass of this
    generation patched, where the host kept it (Forge Classic re-copies ``forge_objects`` for the
    hires. fix pass only when a LoRA is loaded)."""
    unet = sd_model.forge_objects.unet
    if not any(getattr(f, OWNED_ATTR, False) for name in OWNED_LISTS for f in unet.model_options.get(name, [])):
        return
    unet = unet.clone()
    for name in OWNED_LISTS:
        unet.model_options[name] = [f for f in unet.model_options.get(name, []) if not getattr(f, OWNED_ATTR, False)]
    sd_model.forge_objects.unet = unet


def _put_first(model_options: dict, name: str, function) -> None:
    setattr(function, OWNED_ATTR, True)
    others = [f for f in model_options.get(name, []) if not getattr(f, OWNED_ATTR, False)]
    model_options[name] = [function, *others]


def _pre_cfg_function(host: str, state: ForgeJob, post_cfg):
    """A pre-CFG function that tells ``state`` which call is running (see ``note_call_input``) and,
    where the host lets it, keeps ``post_cfg`` in the step's post-CFG list: Forge Classic merges a
    sampler's model options into the UNet's by ``dict.update``, so the CFG++ samplers' own
    post-CFG list would replace the one ASAG's function is in (forge_sampler.py ``forge_sample``)."""
    if host == detect.REFORGE:  # ComfyUI form: one dict, runs after the batch, returns the outputs
        def asag_pre_cfg(args):
            state.note_call_input(args["input"])
            return args["conds_out"]
    else:
        def asag_pre_cfg(model, cond, uncond, x, timestep, model_options):
            state.note_call_input(x)
            if post_cfg not in model_options.get("sampler_post_cfg_function", []):
                model_options = dict(model_options)
                _put_first(model_options, "sampler_post_cfg_function", post_cfg)
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


class UnetPerturbation:
    """The extra pass's ``model_options`` with the Sinkhorn ``attn1`` replacement at ``keys``."""

    def __init__(self, params, keys, budget_bytes: int):
        self.keys, self.budget_bytes = keys, budget_bytes
        self.attn1 = sinkhorn_attn1(params, budget_bytes=budget_bytes)
        self.params = params

    @contextlib.contextmanager
    def perturbed(self, model_options: dict, observe=None):
        attn1 = self.attn1 if observe is None else sinkhorn_attn1(self.params, observe, self.budget_bytes)
        yield with_attn1_replacement(model_options, attn1, self.keys)


def _post_cfg_function(p, params, state: ForgeJob, perturbation, cond_prediction):
    def asag_post_cfg(args):
        denoised = args["denoised"]
        if not state.main_call:
            return denoised  # reference-only's recording call: leave its recordings alone
        model, sigma = args["model"], args["sigma"]
        scale = guidance.scale_at(params, _progress(params, state, model, sigma))
        if scale == 0 or not state.acts(args["input"]):
            state.stop_recording()
            return denoised
        diagnostics = state.diagnostics
        if diagnostics is not None:
            synchronize(denoised)
            diagnostics.main_seconds += time.perf_counter() - state.step_started
        observe = None if diagnostics is None else diagnostics.plan_observer(params.iterations, params.strength)
        watch = Stopwatch(denoised) if diagnostics is not None else contextlib.nullcontext()
        conds = args["cond"]
        try:
            if state.reuse is not None:
                state.reuse.replay()
                conds = [context_as_recorded(cond, state.reuse) for cond in conds]
            with watch, perturbation.perturbed(args["model_options"], observe) as options:
                perturbed = cond_prediction(model, conds, args["input"], sigma, options)
        finally:
            reused_blocks = state.stop_recording()
        cond = args["cond_denoised"]
        if diagnostics is not None:
            diagnostics.record_pass(guidance.guidance_term(cond, perturbed, scale), perturbed, cond, watch.seconds)
            if state.reuse is not None:
                diagnostics.record_reuse(state.reuse, reused_blocks)
        job.note_full_extra_pass(p, state.reuse, reused_blocks)
        return guidance.apply_guidance(denoised, cond, perturbed, scale, params.rescale)

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


def with_attn1_replacement(model_options: dict, patch, keys) -> dict:
    """A copy of ``model_options`` with ``patch`` as the attn1 replacement at ``keys``. Each level
    on the way is copied, so ``model_options`` and everything it holds stay as they were (Forge's
    own helper writes back into the dict it is given: A.3)."""
    transformer_options = dict(model_options.get("transformer_options", {}))
    patches_replace = dict(transformer_options.get("patches_replace", {}))
    patches_replace["attn1"] = {**patches_replace.get("attn1", {}), **{key: patch for key in keys}}
    transformer_options["patches_replace"] = patches_replace
    return {**model_options, "transformer_options": transformer_options}
