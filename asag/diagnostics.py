"""Per-generation diagnostics (Settings > ASAG > "Log ASAG diagnostics"; off by default): how
strong the guidance was, how balanced the adversarial plans were, whether anything went NaN, and
what the extra pass cost. Host-free: adapters feed it tensors and timings."""
from __future__ import annotations

import math
import time

import torch

from .sinkhorn import adversarial_sinkhorn_attention


def plan_statistics(q: torch.Tensor, k: torch.Tensor, *, iterations: int, strength: float, scale: float) -> tuple[float, float]:
    """For one head's ``q (n_q, d)``, ``k (n_k, d)``: the plan's mean row entropy as a fraction of
    the uniform maximum ``log n_k`` (1 = every query spreads evenly), and the largest deviation of a
    column sum from its target ``n_q / n_k`` (0 = perfectly balanced)."""
    n_q, n_k = q.shape[0], k.shape[0]
    eye = torch.eye(n_k, dtype=torch.float32, device=q.device)
    plan = adversarial_sinkhorn_attention(q.float(), k.float(), eye, iterations=iterations, strength=strength, scale=scale)
    entropy = -(plan * plan.clamp_min(1e-30).log()).sum(-1).mean().item()
    column_error = (plan.sum(0) - n_q / n_k).abs().max().item()
    return entropy / math.log(n_k) if n_k > 1 else 1.0, column_error


def synchronize(tensor: torch.Tensor) -> None:
    if tensor.is_cuda:
        torch.cuda.synchronize(tensor.device)


class Diagnostics:
    def __init__(self):
        self.passes = 0
        self.term_rms = []  # RMS of w * (cond - perturbed) per extra pass
        self.relative = []  # that RMS over the RMS of the cond prediction
        self.nan_count = 0
        self.entropies, self.column_errors = [], []
        self.main_seconds = 0.0
        self.extra_seconds = 0.0
        self.reused_blocks = []  # per extra pass: UNet blocks taken from the main pass (0: none)
        self.total_blocks = 0
        self.full_reasons = {}  # why extra passes were computed in full -> how many
        self.recorded_bytes = 0  # the most the recordings of the main pass held in one step

    def plan_observer(self, iterations: int, strength: float):
        """``observe(q, k, heads, scale)`` for the perturbed layers of one extra pass: records the
        first layer's plan (first row, first head)."""
        seen = []

        def observe(q, k, heads, scale):
            if not seen:
                seen.append(True)
                d = q.shape[-1] // heads
                self.record_plan(q[0, :, :d], k[0, :, :d], iterations=iterations, strength=strength, scale=scale)
        return observe

    def record_reuse(self, reuse, blocks: int) -> None:
        """After an extra pass: ``blocks`` it took from the main pass through ``reuse`` (a BlockReuse)."""
        self.reused_blocks.append(blocks)
        self.total_blocks = reuse.total_blocks
        self.recorded_bytes = max(self.recorded_bytes, reuse.peak_bytes)
        if not blocks and reuse.blocks:
            reason = reuse.reason or "nothing was recorded"
            self.full_reasons[reason] = self.full_reasons.get(reason, 0) + 1

    def reuse_summary(self) -> str:
        passes = len(self.reused_blocks)
        reused = [blocks for blocks in self.reused_blocks if blocks]
        if reused:
            text = (f"{len(reused)} of {passes} extra passes took {sum(reused) / len(reused):.3g} of the model's "
                    f"{self.total_blocks} blocks from the main pass (recordings up to {self.recorded_bytes / 2**20:.1f} MiB)")
        else:
            text = f"none of the {passes} extra passes took blocks from the main pass"
        if self.full_reasons:
            text += "; computed in full: " + ", ".join(f"{reason} ({count}x)" for reason, count in self.full_reasons.items())
        return text

    def record_plan(self, q: torch.Tensor, k: torch.Tensor, **kwargs) -> None:
        entropy, column_error = plan_statistics(q, k, **kwargs)
        self.entropies.append(entropy)
        self.column_errors.append(column_error)

    def record_pass(self, term: torch.Tensor, perturbed: torch.Tensor, cond: torch.Tensor, seconds: float) -> None:
        self.passes += 1
        self.nan_count += int(torch.isnan(perturbed).sum()) + int(torch.isnan(term).sum())
        rms = term.float().pow(2).mean().sqrt().item()
        self.term_rms.append(rms)
        self.relative.append(rms / max(cond.float().pow(2).mean().sqrt().item(), 1e-12))
        self.extra_seconds += seconds

    def summary(self) -> str:
        if not self.passes:
            return "no extra pass ran (scale 0, outside the active window, or not applied)"
        mean = lambda values: sum(values) / len(values) if values else float("nan")  # noqa: E731
        overhead = f"{self.extra_seconds / self.main_seconds:.0%} of the main passes" if self.main_seconds else "n/a"
        reuse = f"; {self.reuse_summary()}" if self.reused_blocks else ""
        return (f"{self.passes} extra passes; guidance RMS {mean(self.term_rms):.4g} "
                f"({mean(self.relative):.1%} of the cond prediction); plan row entropy {mean(self.entropies):.3f} of uniform, "
                f"column-marginal error max {max(self.column_errors, default=float('nan')):.2e}; "
                f"NaN values {self.nan_count}; extra-pass time {self.extra_seconds:.2f} s = {overhead}{reuse}")


class Stopwatch:
    """Wall time of a block, synchronising the GPU when the given tensor lives there."""

    def __init__(self, like: torch.Tensor):
        self.like = like

    def __enter__(self):
        synchronize(self.like)
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        synchronize(self.like)
        self.seconds = time.perf_counter() - self.start
