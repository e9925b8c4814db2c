"""Flux.1, Flux.2 Klein and Chroma on Forge Neo (``backend/nn/flux.py``, ``backend/nn/chroma.py``).

Both run 19 double-stream blocks (text and image each with their own weights, one attention over
``cat(txt, img)``), then 38 single-stream blocks over the joint sequence; Chroma reuses Flux's
block classes, so both attend through ``backend.nn.flux.attention`` -> its module-level
``attention_function``, after the rope. ``forward_orig`` names the block in
``transformer_options`` (``block_type`` "double" / "single", ``block_index``) before each call.

Default blocks: ComfyUI's SkipLayerGuidanceDiT (comfy_extras/nodes_slg.py), the guidance
ComfyUI offers for Flux, Chroma and SD3, defaults to blocks 7, 8, 9 of each kind, taken from
Stability AI's skip-layer guidance for SD3.5 (layers 7-9); ASAG perturbs the same blocks'
attention rather than skipping them.
"""
from __future__ import annotations

from .base import DitFamily

_COMMON = dict(
    block_lists=(("double", "double_blocks"), ("single", "single_blocks")), attention_module="backend.nn.flux", caller="attention",
    names_blocks=True, replace_keys={"double": "double_block", "single": "single_block"}, default_blocks="double 7-9, single 7-9",
    default_source="ComfyUI SkipLayerGuidanceDiT's default blocks (7-9 of each kind), from SD3.5's skip-layer guidance",
)
FLUX = DitFamily(name="Flux", model_class="backend.nn.flux.IntegratedFluxTransformer2DModel", **_COMMON)
CHROMA = DitFamily(name="Chroma", model_class="backend.nn.chroma.IntegratedChromaTransformer2DModel",
                   skip_lists={"double": "skip_mmdit", "single": "skip_dit"}, **_COMMON)
