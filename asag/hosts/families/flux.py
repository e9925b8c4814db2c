"""Flux.1, Flux.2 Klein and Chroma, on Forge Neo (``backend/nn/flux.py``, ``backend/nn/chroma.py``)
and ComfyUI (``comfy/ldm/flux/``, ``comfy/ldm/chroma/``).

Both run 19 double-stream blocks (text and image each with their own weights, one attention over
``cat(txt, img)``), then 38 single-stream blocks over the joint sequence; Chroma reuses Flux's
attention (its blocks are Flux's, with modulations computed ahead), and may prune blocks
(``skip_mmdit`` / ``skip_dit``). ComfyUI loads Flux.2 (Klein included) as the same class,
``comfy.ldm.flux.model.Flux`` (``model_base.Flux2``), with the block counts of its file, its text
padded to 512 tokens.

* Neo: the blocks attend through ``backend.nn.flux.attention`` -> its module-level
  ``attention_function``, after the rope; ``forward_orig`` names the block in
  ``transformer_options`` (``block_type`` "double" / "single", ``block_index``) before each call.
* ComfyUI: ``comfy.ldm.flux.math.attention`` applies the rope and calls ``optimized_attention(q,
  k, v, heads, skip_reshape=True, mask=, transformer_options=)``; ``forward_orig`` offers the
  ``dit`` replacement ``("double_block" | "single_block", i)`` with ``original_block``, and names
  its blocks since PR #10841 (Chroma: #10843). A double block with ``flipped_img_txt`` attends
  over ``cat(img, txt)`` (ComfyUI's class has the flag; Flux and Chroma leave it off).

Default blocks: ComfyUI's SkipLayerGuidanceDiT (comfy_extras/nodes_slg.py), the guidance
ComfyUI offers for Flux, Chroma and SD3, defaults to blocks 7, 8, 9 of each kind, taken from
Stability AI's skip-layer guidance for SD3.5 (layers 7-9); ASAG perturbs the same blocks'
attention rather than skipping them. Stated for Flux.1's 19 double and 38 single blocks (and
Chroma's, the same); ``auto`` fits it to a shallower model: Flux.2 Klein (5 + 20 blocks, 8 + 24 in
the 9B), pruned or distilled files (``DitFamily.auto_spec``).
"""
from __future__ import annotations

from .base import ComfyModel, DitFamily, NeoModel

_COMMON = dict(
    block_lists=(("double", "double_blocks"), ("single", "single_blocks")),
    replace_keys={"double": "double_block", "single": "single_block"}, default_blocks="double 7-9, single 7-9",
    default_source="ComfyUI SkipLayerGuidanceDiT's default blocks (7-9 of each kind), from SD3.5's skip-layer guidance",
    reference_depths={"double": 19, "single": 38},  # Flux.1 dev / schnell, Chroma
)
_NEO = dict(attention_module="backend.nn.flux", caller="attention", names_blocks=True)
_COMFYUI = dict(block_types={"double": "double", "single": "single"}, image_first="flipped_img_txt")
FLUX = DitFamily(name="Flux", neo=NeoModel("backend.nn.flux.IntegratedFluxTransformer2DModel", **_NEO),
                 comfyui=ComfyModel("comfy.ldm.flux.model.Flux", **_COMFYUI),
                 checkpoint_keys=("double_blocks.0.img_attn.", "single_blocks.0."), **_COMMON)
CHROMA = DitFamily(name="Chroma", neo=NeoModel("backend.nn.chroma.IntegratedChromaTransformer2DModel", **_NEO),
                   comfyui=ComfyModel("comfy.ldm.chroma.model.Chroma", **_COMFYUI),
                   skip_lists={"double": "skip_mmdit", "single": "skip_dit"},
                   checkpoint_keys=("double_blocks.0.img_attn.", "single_blocks.0.", "distilled_guidance_layer."), **_COMMON)
