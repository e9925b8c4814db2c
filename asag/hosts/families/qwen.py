"""Qwen-Image on Forge Neo (``backend/nn/qwen.py``): 60 ``transformer_blocks``, each with a text and
an image stream and one attention over the joint sequence ``cat(txt, img)``, text first (as a
Flux double block), width 3072 (24 heads of 128).

``Attention.forward`` calls the module-level ``attention_function(q, k, v, heads, mask)`` with q,
k, v as (batch, tokens, heads * dim) and no ``transformer_options``: the adapter marks the
selected blocks running itself. The blocks are called by keyword and return ``(txt, img)``.
Qwen-Image-Edit's reference latents are appended to the image tokens and count as image.

Default blocks: Neo's Qwen-Image honours ComfyUI's ``dit`` block replacement key
``("double_block", i)``, so ComfyUI's SkipLayerGuidanceDiT applies to it with its default blocks
7, 8, 9 (from SD3.5's skip-layer guidance); ASAG perturbs the same blocks' attention.
"""
from __future__ import annotations

from .base import DitFamily

QWEN_IMAGE = DitFamily(
    name="Qwen-Image", model_class="backend.nn.qwen.QwenImageTransformer2DModel", block_lists=(("blocks", "transformer_blocks"),),
    attention_module="backend.nn.qwen", names_blocks=False, replace_keys={"blocks": "double_block"}, default_blocks="blocks 7-9",
    default_source="ComfyUI SkipLayerGuidanceDiT's default double blocks (7-9), which Qwen-Image's double_block key takes",
)
