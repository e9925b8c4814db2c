"""Qwen-Image, on Forge Neo (``backend/nn/qwen.py``) and ComfyUI (``comfy/ldm/qwen_image/model.py``):
60 ``transformer_blocks``, each with a text and an image stream and one attention over the joint
sequence ``cat(txt, img)``, text first (as a Flux double block), width 3072 (24 heads of 128).
The blocks are called by keyword and return ``(txt, img)``. Qwen-Image-Edit's reference latents
are appended to the image tokens and count as image.

* Neo: ``Attention.forward`` calls the module-level ``attention_function(q, k, v, heads, mask)``
  with q, k, v as (batch, tokens, heads * dim) and no ``transformer_options``: the adapter marks
  the selected blocks running itself.
* ComfyUI: ``optimized_attention_masked(q, k, v, heads, mask, transformer_options=)``, the same
  layout; the ``dit`` replacement ``("double_block", i)``; the blocks named (``block_type``
  "double") in newer ComfyUI.

Default blocks: Neo's Qwen-Image honours ComfyUI's ``dit`` block replacement key
``("double_block", i)``, so ComfyUI's SkipLayerGuidanceDiT applies to it with its default blocks
7, 8, 9 (from SD3.5's skip-layer guidance); ASAG perturbs the same blocks' attention. Stated for
Qwen-Image's 60 blocks; ``auto`` fits it to a shallower model (``DitFamily.auto_spec``).
"""
from __future__ import annotations

from .base import ComfyModel, DitFamily, NeoModel

QWEN_IMAGE = DitFamily(
    name="Qwen-Image", block_lists=(("blocks", "transformer_blocks"),),
    neo=NeoModel("backend.nn.qwen.QwenImageTransformer2DModel", attention_module="backend.nn.qwen", names_blocks=False),
    comfyui=ComfyModel("comfy.ldm.qwen_image.model.QwenImageTransformer2DModel", block_types={"double": "blocks"}),
    replace_keys={"blocks": "double_block"}, default_blocks="blocks 7-9",
    default_source="ComfyUI SkipLayerGuidanceDiT's default double blocks (7-9), which Qwen-Image's double_block key takes",
    reference_depths={"blocks": 60},
    checkpoint_keys=("txt_norm.", "transformer_blocks.0."),
)
