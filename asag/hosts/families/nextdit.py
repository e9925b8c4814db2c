"""Lumina 2 and Z-Image: NextDiT, on Forge Neo (``backend/nn/lumina.py``) and ComfyUI
(``comfy/ldm/lumina/model.py``).

A NextDiT runs two text-only ``context_refiner`` blocks over the caption, two image-only
``noise_refiner`` blocks over the image (here ``refiner``), then its main ``layers`` over the
joint sequence ``cat(caption, image)`` (26 in Lumina 2, 30 in Z-Image). Every block attends
through ``JointAttention.forward``, with the mask passed positionally.
Z-Image pads the caption with learned tokens to a multiple of ``pad_tokens_multiple``.

* Neo: the attention is the module-level ``attention_function``, which is not told which block
  runs: the adapter marks the selected blocks running itself.
* ComfyUI: ``optimized_attention_masked(q, k, v, heads, mask, skip_reshape=True,
  transformer_options=)``; no ``dit`` replacement. Since PR #11227 the main ``layers`` are named
  (``block_type`` "double"); the refiners never are, nor anything before that PR: the adapter
  marks the selected blocks itself there.

Default blocks: no guidance of this family has been published for NextDiT (ComfyUI's
SkipLayerGuidanceDiT acts through ``dit`` block replacements, which NextDiT does not offer), so
``layers 7-9`` carries over the early-middle placement of Flux's and SD3.5's 7-9. Stated for
Lumina 2's 26 layers and kept for Z-Image's 30; ``auto`` fits it to a shallower model
(``DitFamily.auto_spec``).
"""
from __future__ import annotations

from .base import ComfyModel, DitFamily, NeoModel

NEXTDIT = DitFamily(
    name="Lumina 2 / Z-Image", block_lists=(("context", "context_refiner"), ("refiner", "noise_refiner"), ("layers", "layers")),
    neo=NeoModel("backend.nn.lumina.NextDiT", attention_module="backend.nn.lumina", names_blocks=False),
    comfyui=ComfyModel("comfy.ldm.lumina.model.NextDiT", block_types={"double": "layers"}),
    image_only=("refiner",), text_only=("context",), side_chains=("context",), text_padding="pad_tokens_multiple", default_blocks="layers 7-9",
    default_source="the early-middle placement of SLG's 7-9 on Flux and SD3.5 (none published for NextDiT)",
    reference_depths={"layers": 26},  # Lumina 2; Z-Image has 30
    checkpoint_keys=("cap_embedder.1.", "layers.0.attention."),
)
