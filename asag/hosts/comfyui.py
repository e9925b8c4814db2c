"""ComfyUI adapter: what the ASAG node does to a MODEL (host facts: comfyui.md sections 2-4, 7).

The mechanism is that of ComfyUI's own PAG node (comfy_extras/nodes_pag.py), so it chains with
every other node: the node clones the model patcher and appends a post-CFG function. At each step
inside the active window that function runs the extra pass on the cond rows through
``comfy.samplers.calc_cond_batch``, on a copy of the step's ``model_options`` with the
perturbation set, and returns ``cfg_result + scale * (cond - perturbed)``, optionally rescaled.
ControlNet (on the cond), IP-Adapter's ``attn2`` patches, LoRA and the other post-CFG functions
apply to the extra pass as to the main one; the main pass and the input MODEL are never touched.
At CFG 1 ComfyUI skips the uncond rows and the CFG result is the cond prediction, so the result
is ``cond + scale * (cond - perturbed)``.

The perturbation: on a UNet (SD1.x, SD2.x, SDXL) the Sinkhorn ``attn1`` replacement at the
selected layers (``set_model_options_patch_replace`` copies every level it writes); on a
transformer ComfyUI runs (asag/hosts/families: Flux, Flux.2, Chroma, SD3, Qwen-Image, Lumina 2,
Z-Image) an attention override at the selected blocks (asag/hosts/comfyui_dit.py).

Reuse of the main pass (asag/reuse.py): a ``PREDICT_NOISE`` wrapper (around one step's main pass
and post-CFG functions) records the main pass's cond rows (``transformer_options["cond_or_uncond"]``
says which they are, however ComfyUI batched them) in the blocks before the first perturbed one;
the extra pass takes them where its inputs are the main pass's exactly (the UNet's cond given its
context as the main pass ran it: repeated to the negative prompt's length), else computes in full
and the console says why, once per run. The recordings are dropped when the step ends, however
it ends.

The active window is ComfyUI's, as SkipLayerGuidanceDiT (comfy_extras/nodes_slg.py) has it: start
and end in percent of the model's timestep range, turned into sigmas by the sampling model's
``model_sampling.percent_to_sigma``. A wrapper around each sampling run
(``WrappersMP.OUTER_SAMPLE``) writes the run's console line.
"""
from __future__ import annotations

import contextlib
import importlib
from types import SimpleNamespace

import comfy.ldm.modules.attention
import comfy.model_patcher
import comfy.samplers
from comfy.patcher_extension import WrappersMP

from .. import guidance, layers
from ..diagnostics import Diagnostics
from ..log import logger
from ..params import AsagParams
from ..reuse import BlockReuse, remove_leftovers
from . import comfyui_dit, families, job
from .families.base import class_name
from .patcher_protocol import cond_rows, context_as_recorded, sinkhorn_attn1, unet_host_blocks

OWNER_KEY = "asag"  # the key of ASAG's wrappers on the model patcher
UNET_CLASS = "comfy.ldm.modules.diffusionmodules.openaimodel.UNetModel"  # SD1.x, SD2.x, SDXL (not SVD's VideoUNet)
UNET_MODULE = "comfy.ldm.modules.diffusionmodules.openaimodel"


def patch(model, params: AsagParams, reuse: bool = True):
    """The MODEL the node outputs: a clone of ``model`` whose sampling runs ASAG's extra pass, or
    ``model`` itself where ASAG has nothing to do (scale 0) or cannot guide the model (said in the
    console). Raises ``ValueError`` naming the input where the layers or blocks do not fit the
    model. ``reuse``: take the blocks before the first perturbed one from the main pass where
    that gives the same result (the node always does; tests and the benchmark compare)."""
    if params.scale == 0:
        return model
    diffusion_model = model.get_model_object("diffusion_model")
    if class_name(diffusion_model) == UNET_CLASS:
        perturbation = UnetPerturbation(params, diffusion_model)
        host = unet_host_blocks(importlib.import_module(UNET_MODULE), through_function=True)
    else:
        family = families.comfyui_family_for(diffusion_model)
        if family is None:
            logger.warning("not applied: this is not a UNet model (SD1.x, SD2.x, SDXL) nor a transformer ASAG supports (%s): the "
                           "model is %s; the image is made as without the node",
                           ", ".join(f.name for f in families.COMFYUI_FAMILIES), type(diffusion_model).__name__)
            return model
        if not hasattr(comfy.ldm.modules.attention, "wrap_attn"):
            logger.warning("not applied: this ComfyUI is too old for ASAG on transformer models (%s): its attention has no "
                           "override (optimized_attention_override, ComfyUI of 2025-09 or later); the image is made as "
                           "without the node", family.name)
            return model
        selected = family.resolve(params.dit_layers, diffusion_model)
        job.note_auto_blocks(SimpleNamespace(extra_generation_params={}), params, family, family.kinds(diffusion_model))  # the console line
        perturbation = comfyui_dit.DitPerturbation(family, diffusion_model, selected, params)
        host = comfyui_dit.host_blocks(family)
    runs = Runs(params, perturbation, diffusion_model, model.get_model_object("model_sampling"), host, reuse)
    guided = model.clone()
    guided.set_model_sampler_post_cfg_function(_post_cfg_function(params, diffusion_model, perturbation, runs))
    guided.add_wrapper_with_key(WrappersMP.OUTER_SAMPLE, OWNER_KEY, runs.wrap_run)
    if reuse:
        guided.add_wrapper_with_key(WrappersMP.PREDICT_NOISE, OWNER_KEY, runs.wrap_step)
    return guided


class UnetPerturbation:
    """The extra pass's ``model_options`` with the Sinkhorn ``attn1`` replacement at the selected
    layers."""

    def __init__(self, params: AsagParams, diffusion_model):
        self.params, self.diffusion_model = params, diffusion_model
        self.selected = layers.resolve_layers(params.layers, layers.self_attention_modules(diffusion_model))
        self.attn1 = sinkhorn_attn1(params)

    @contextlib.contextmanager
    def perturbed(self, model_options: dict):
        options = model_options.copy()
        for address in self.selected:
            options = comfy.model_patcher.set_model_options_patch_replace(options, self.attn1, "attn1", *address.patch_key)
        yield options

    def acts(self, latent) -> bool:
        """Whether the selected layers can change anything for this latent (not where each holds
        a single token: job.acts_at says so in the post-CFG function)."""
        return not layers.single_token_only(self.diffusion_model, self.selected, *latent.shape[-2:])

    def describe(self) -> str:
        count = len(self.selected)
        return f"{count} self-attention layer{'s' * (count != 1)} ({self.params.layers})"


class Runs:
    """The sampling runs of one patched model: the run under way (its statistics, the notes said
    once per run, its reuse of the main pass), and its console line when it ends."""

    def __init__(self, params: AsagParams, perturbation, diffusion_model, model_sampling, host, reuse: bool):
        self.params, self.perturbation, self.diffusion_model, self.host = params, perturbation, diffusion_model, host
        self.model_sampling = model_sampling
        self.reuse = BlockReuse(diffusion_model, perturbation.selected, host) if reuse else None
        self.total_blocks = len(host.blocks(diffusion_model))
        self.current = self._new_run()

    @staticmethod
    def _new_run() -> SimpleNamespace:
        # extra_generation_params: where job.acts_at keeps its note, so that it is said once per run
        return SimpleNamespace(steps=0, diagnostics=Diagnostics(), extra_generation_params={}, replayed=[], perturbed=[])

    def wrap_run(self, executor, *args, **kwargs):
        """``WrappersMP.OUTER_SAMPLE``: around one sampling run (``CFGGuider.outer_sample``)."""
        self.current = self._new_run()
        remove_leftovers(self.diffusion_model, self.host)  # what a run that ended in an exception mid-step left
        try:
            return executor(*args, **kwargs)
        finally:
            if self.reuse is not None:
                self.reuse.stop()
            run, self.current = self.current, self._new_run()
            logger.info("%s", self.summary(run))

    def wrap_step(self, executor, x, timestep, model_options={}, seed=None):
        """``WrappersMP.PREDICT_NOISE``: around one step's main pass and post-CFG functions; where
        the extra pass will run, the main pass's cond rows are recorded for it."""
        if scale_at(self.params, self.model_sampling, float(timestep.max())) != 0 and self.perturbation.acts(x):
            self.reuse.record(cond_rows)
        try:
            return executor(x, timestep, model_options, seed)
        finally:
            self.reuse.stop()

    def summary(self, run) -> str:
        what = self.perturbation.describe()
        diagnostics = run.diagnostics
        if not diagnostics.passes:
            return f"no extra pass in {run.steps} steps (outside the active window, or no effect at this size); {what} selected"
        relative = sum(diagnostics.relative) / diagnostics.passes
        replayed = [blocks for blocks in run.replayed if blocks]
        reuse = (f"{sum(replayed) // len(replayed)} of {self.total_blocks} blocks replayed from the main pass in {len(replayed)} of "
                 f"{diagnostics.passes} extra passes" if replayed else f"0 of {self.total_blocks} blocks replayed from the main pass")
        perturbed = ""
        if run.perturbed and min(run.perturbed) < len(self.perturbation.selected):
            perturbed = f" ({min(run.perturbed)} of them perturbed in some passes: see the warnings)"
        return (f"{diagnostics.passes} extra passes in {run.steps} steps, Sinkhorn attention at {what}{perturbed}; {reuse}; "
                f"guidance RMS {sum(diagnostics.term_rms) / diagnostics.passes:.4g} ({relative:.1%} of the cond prediction)"
                + (f"; NaN values {diagnostics.nan_count}" if diagnostics.nan_count else ""))


def _post_cfg_function(params: AsagParams, diffusion_model, perturbation, runs: Runs):
    is_unet = isinstance(perturbation, UnetPerturbation)

    def asag_post_cfg(args):
        denoised, model, sigma, x = args["denoised"], args["model"], args["sigma"], args["input"]
        run, reuse = runs.current, runs.reuse
        run.steps += 1
        scale = scale_at(params, model.model_sampling, float(sigma.max()))
        if scale == 0 or (is_unet and not job.acts_at(run, params, diffusion_model, perturbation.selected, x)):
            return denoised
        conds = args["cond"]
        try:
            if reuse is not None:
                reuse.replay()
                if is_unet:
                    conds = [context_as_recorded(cond, reuse) for cond in conds]
            with perturbation.perturbed(args["model_options"]) as options:
                (perturbed,) = comfy.samplers.calc_cond_batch(model, [conds], x, sigma, options)
        finally:
            replayed = reuse.stop() if reuse is not None else 0
        run.replayed.append(replayed)
        if not is_unet:
            run.perturbed.append(len(perturbation.perturbed_blocks))
        job.note_full_extra_pass(run, reuse, replayed)
        cond = args["cond_denoised"]
        run.diagnostics.record_pass(guidance.guidance_term(cond, perturbed, scale), perturbed, cond, 0.0)
        return guidance.apply_guidance(denoised, cond, perturbed, scale, params.rescale)

    return asag_post_cfg


def scale_at(params: AsagParams, model_sampling, sigma: float) -> float:
    """ASAG's scale at ``sigma``: 0 outside the window from ``params.start`` to ``params.end``
    (percent of the model's timestep range, turned into sigmas as ComfyUI's guidance nodes do);
    inside it, the schedule's value at the step's place in the window."""
    if not model_sampling.percent_to_sigma(params.end) <= sigma <= model_sampling.percent_to_sigma(params.start):
        return 0.0
    return guidance.scale_at(params, min(max(percent_at(model_sampling, sigma), params.start), params.end))


def percent_at(model_sampling, sigma: float, iterations: int = 40) -> float:
    """The percent of the timestep range at which ``percent_to_sigma`` gives ``sigma``: its
    inverse, by bisection (it falls from the largest sigma at 0 to 0 at 1, for every model)."""
    low, high = 0.0, 1.0
    for _ in range(iterations):
        middle = (low + high) / 2
        if model_sampling.percent_to_sigma(middle) > sigma:
            low = middle
        else:
            high = middle
    return (low + high) / 2
