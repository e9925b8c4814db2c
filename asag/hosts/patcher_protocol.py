"""What the hosts built on ComfyUI's model patcher share: ComfyUI itself, and Forge, reForge and
Forge Classic, which took its protocol (comfyui.md sections 2-3, forge-and-controlnet.md A).

* The ``attn1`` replacement: ``f(q, k, v, extra_options)`` with q, k, v already projected,
  ``(batch, tokens, heads * dim_head)``, ``extra_options["n_heads"]``; the host applies ``to_out``.
* ``transformer_options["cond_or_uncond"]``: one entry per chunk of a batched model call, 0 for a
  chunk of the positive prompt, in the order the chunks were batched.
* A cond's text context, ``model_conds["c_crossattn"]``: prompts of different lengths are batched
  by repeating the shorter contexts to a common length (``CONDCrossAttn.concat``).
* A UNet (ldm's layout) whose blocks are called as ``f(block, h, emb, context, transformer_options,
  ...)`` through a module-level ``forward_timestep_embed`` (ComfyUI, ldm_patched) or by the block
  itself (Forge's backend), counting ``transformer_index`` per transformer inside the call, with
  patches and replacements that act inside the blocks (``unet_host_blocks``: asag/reuse.py).
"""
from __future__ import annotations

from .. import sinkhorn
from ..reuse import BlockReuse, HostBlocks

# transformer_options entries that run code inside block calls (Forge's backend/nn/unet.py and
# ldm_patched's openaimodel.py / attention.py): a replayed block would skip it.
IN_BLOCK_OPTIONS = ("block_inner_modifiers", "group_norm_wrapper")
IN_BLOCK_PATCHES = ("attn1_patch", "attn2_patch", "attn1_output_patch", "attn2_output_patch", "middle_patch")


def sinkhorn_attn1(params, observe=None, budget_bytes: int = sinkhorn.MEMORY_BUDGET_BYTES):
    """The ``attn1`` replacement: q, k, v already projected, ``(B, N, heads * dim_head)``; k and v
    may have more tokens than q. The host applies ``to_out`` to the result (and its attention's
    scale is ``dim_head ** -0.5``, the operator's default). ``observe(q, k, heads, scale)`` sees the
    projections (diagnostics)."""
    def asag_sinkhorn_attn1(q, k, v, extra_options):
        heads = extra_options["n_heads"]
        if observe is not None:
            observe(q, k, heads, (q.shape[-1] // heads) ** -0.5)
        return sinkhorn.adversarial_sinkhorn_attention_heads(
            q, k, v, heads, iterations=params.iterations, strength=params.strength, budget_bytes=budget_bytes
        )
    return asag_sinkhorn_attn1


def transformer_options_of(args: tuple, kwargs: dict) -> dict:
    """The ``transformer_options`` of a block call ``(h, emb, context, transformer_options, ...)``
    or of a model call that passes them by name."""
    return (args[3] if len(args) > 3 else kwargs.get("transformer_options")) or {}


def cond_rows(rows: int, args: tuple, kwargs: dict) -> list[int]:
    """The cond rows of one model call of the host's batch helper: ``cond_or_uncond`` holds one
    entry per chunk of equal size (0 = cond), in the order the chunks were batched."""
    options = transformer_options_of(args, kwargs)
    kinds = options.get("cond_or_uncond") or []
    if not kinds or rows % len(kinds):
        return []
    size = rows // len(kinds)
    return [chunk * size + row for chunk, kind in enumerate(kinds) if kind == 0 for row in range(size)]


def context_as_recorded(cond: dict, reuse: BlockReuse) -> dict:
    """``cond`` with its text context as the main pass ran it: repeated to the length of the
    prompts it was batched with (``CONDCrossAttn.concat``; Forge's ``ConditionCrossAttn``)."""
    model_conds = cond.get("model_conds") or {}
    crossattn = model_conds.get("c_crossattn")
    if crossattn is None:
        return cond
    context = reuse.repeated_as_recorded(crossattn.cond)
    if context is crossattn.cond:
        return cond
    return {**cond, "model_conds": {**model_conds, "c_crossattn": type(crossattn)(context)}}


def unet_host_blocks(unet_module, through_function: bool) -> HostBlocks:
    """What a UNet block call does besides computing (see asag/reuse.py), for the UNet of
    ``unet_module`` (its ``SpatialTransformer`` classes; with ``through_function``, the module's
    ``forward_timestep_embed`` calls every block)."""
    transformers = tuple(getattr(unet_module, name) for name in ("SpatialTransformer", "SpatialVideoTransformer")
                         if hasattr(unet_module, name))

    def skipped(block, args, kwargs):
        options = transformer_options_of(args, kwargs)
        if "transformer_index" in options:  # counted per transformer layer inside the block call
            options["transformer_index"] += sum(isinstance(layer, transformers) for layer in block)

    def unreplayable(args, kwargs, replayed):
        options = transformer_options_of(args, kwargs)
        inside = [name for name in IN_BLOCK_OPTIONS if options.get(name)]
        inside += [name for name in IN_BLOCK_PATCHES if (options.get("patches") or {}).get(name)]
        if inside:
            return f"{inside[0]} runs inside the blocks"
        for name, table in (options.get("patches_replace") or {}).items():
            for key in table:
                if isinstance(key, tuple) and tuple(key[:2]) in set(replayed):
                    return f"a {name} replacement is set on {key[0]} block {key[1]}"
        return None

    function = (unet_module, "forward_timestep_embed") if through_function else None
    return HostBlocks(block_function=function, unreplayable=unreplayable, skipped=skipped)
