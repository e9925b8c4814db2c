"""ASAG guidance arithmetic, as pure functions of tensors and the sampler's progress.

    D = D_cfg + w * (D_cond - D_asag)              (asag-method.md, section 1)

``D_*`` are predictions in whatever space the host's denoiser returns (x0 for k-diffusion, eps
for the timestep samplers); the term is linear, so it is valid in both as long as ``cond`` and
``perturbed`` come from the same model wrapper with the same inputs.
"""
from __future__ import annotations

import math

import torch

from .params import AsagParams


def guidance_term(cond: torch.Tensor, perturbed: torch.Tensor, scale: float) -> torch.Tensor:
    """``w * (cond - perturbed)``: what ASAG adds to the CFG result."""
    return (cond - perturbed) * scale


def rescale_to(guided: torch.Tensor, reference: torch.Tensor, amount: float) -> torch.Tensor:
    """Blend ``guided`` towards itself rescaled to ``reference``'s per-sample standard deviation
    (Lin et al. 2023, "Common Diffusion Noise Schedules and Sample Steps are Flawed", eq. 15-16).
    ``amount`` 0 returns ``guided`` unchanged; 1 returns the fully rescaled prediction."""
    if amount == 0:
        return guided
    dims = tuple(range(1, guided.ndim))
    std_ref = reference.std(dim=dims, keepdim=True)
    std_guided = guided.std(dim=dims, keepdim=True).clamp_min(torch.finfo(guided.dtype).tiny)
    return torch.lerp(guided, guided * (std_ref / std_guided), amount)


def apply_guidance(cfg: torch.Tensor, cond: torch.Tensor, perturbed: torch.Tensor, scale: float, rescale: float = 0.0) -> torch.Tensor:
    """The guided prediction ``cfg + scale * (cond - perturbed)``, optionally std-rescaled to ``cond``."""
    return rescale_to(cfg + guidance_term(cond, perturbed, scale), cond, rescale)


def progress_from_steps(step: int, total_steps: int) -> float:
    """Fraction of sampling done at model call ``step`` (0-based) of ``total_steps``: 0 at the
    first call, 1 at the last. One-step sampling counts as the start."""
    if total_steps <= 1:
        return 0.0
    return min(max(step / (total_steps - 1), 0.0), 1.0)


def progress_from_sigma(sigma: float, sigma_min: float, sigma_max: float) -> float:
    """Fraction of the model's noise range already removed, in log-sigma: 0 at ``sigma_max``,
    1 at ``sigma_min``. Independent of the sampler, step count and denoising strength."""
    if not (0 < sigma_min < sigma_max):
        raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
    sigma = min(max(sigma, sigma_min), sigma_max)
    return (math.log(sigma_max) - math.log(sigma)) / (math.log(sigma_max) - math.log(sigma_min))


def scale_at(params: AsagParams, progress: float) -> float:
    """The ASAG scale at ``progress`` (0..1): 0 outside the active window, else the schedule's
    value. A 0 result means the extra pass is skipped altogether."""
    if not params.enabled or params.scale == 0 or not (params.start <= progress <= params.end):
        return 0.0
    span = params.end - params.start
    position = (progress - params.start) / span if span > 0 else 0.0
    if params.schedule == "linear":
        factor = 1.0 - position
    elif params.schedule == "cosine":
        factor = 0.5 * (1.0 + math.cos(math.pi * position))
    else:
        factor = 1.0
    return params.scale * factor
