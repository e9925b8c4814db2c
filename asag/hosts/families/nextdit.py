"""Lumina 2 and Z-Image on Forge Neo: NextDiT (``backend/nn/lumina.py``).

A NextDiT runs two text-only ``context_refiner`` blocks over the caption, two image-only
``noise_refiner`` blocks over the image (here ``refiner``), then its main ``layers`` over the
joint sequence ``cat(caption, image)`` (26 in Lumina 2, 30 in Z-Image). Every block attends
through ``JointAttention.forward`` -> the module-level ``attention_function`` (the mask passed
positionally), which is not told which block runs: the adapter marks the selected blocks
running itself.
Z-Image pads the caption with learned tokens to a multiple of ``pad_tokens_multiple``.

Default blocks: no guidance of this family has been published for NextDiT (ComfyUI's
SkipLayerGuidanceDiT acts through ``dit`` block replacements, which NextDiT does not offer), so
``layers 7-9`` carries over the early-middle placement of Flux's and SD3.5's 7-9.
"""
from __future__ import annotations

from .base import DitFamily

NEXTDIT = DitFamily(
    name="Lumina 2 / Z-Image", model_class="backend.nn.lumina.NextDiT",
    block_lists=(("context", "context_refiner"), ("refiner", "noise_refiner"), ("layers", "layers")),
    attention_module="backend.nn.lumina", names_blocks=False,
    image_only=("refiner",), text_only=("context",), side_chains=("context",), text_padding="pad_tokens_multiple", default_blocks="layers 7-9",
    default_source="the early-middle placement of SLG's 7-9 on Flux and SD3.5 (none published for NextDiT)",
)
