"""The perturbed self-attention on ldm/sgm ``CrossAttention`` modules (SD1, SD2, SDXL): their
``forward`` swapped on the instances for the duration of one call.

Used where the host runs the UNet's own modules and offers no attention-replacement hook
(AUTOMATIC1111); Forge's patcher takes ``asag.hosts.forge.sinkhorn_attn1`` instead.
"""
from __future__ import annotations

import contextlib

from .params import AsagParams
from .sinkhorn import MEMORY_BUDGET_BYTES, adversarial_sinkhorn_attention_heads


def sinkhorn_forward(module, params: AsagParams, observe=None, budget_bytes: int = MEMORY_BUDGET_BYTES):
    """A replacement ``forward`` for one ``CrossAttention`` used as attn1.

    Projections go through the module's own layers (so LoRA and ControlNet-LLLite hooks apply);
    ``context`` may carry more tokens than ``x`` (ControlNet reference-only's feature bank).
    ``observe(q, k, heads, scale)``, when given, sees the projections (diagnostics)."""

    def forward(x, context=None, mask=None, **kwargs):
        context = x if context is None else context
        q, k, v = module.to_q(x), module.to_k(context), module.to_v(context)
        if observe is not None:
            observe(q, k, module.heads, module.scale)
        out = adversarial_sinkhorn_attention_heads(q, k, v, module.heads, iterations=params.iterations,
                                                   strength=params.strength, scale=module.scale, budget_bytes=budget_bytes)
        return module.to_out(out.to(q.dtype))

    return forward


@contextlib.contextmanager
def sinkhorn_attention(modules, params: AsagParams, observe=None, budget_bytes: int = MEMORY_BUDGET_BYTES):
    """Swap the instances' ``forward`` for the duration of one perturbed call, then put back exactly
    what was there (an instance-level forward of another extension, such as Hypertile's, or none,
    which leaves the class's current optimised forward in charge)."""
    saved = [module.__dict__.get("forward") for module in modules]
    try:
        for module in modules:
            module.forward = sinkhorn_forward(module, params, observe, budget_bytes)
        yield
    finally:
        for module, original in zip(modules, saved):
            if original is None:
                module.__dict__.pop("forward", None)
            else:
                module.forward = original
