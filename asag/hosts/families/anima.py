"""Anima on Forge Neo (``backend/nn/anima.py``): NVIDIA's Cosmos-Predict2 2B transformer
(MiniTrainDIT), 28 ``blocks`` of width 2048, 16 heads of 128.

Each block attends twice: ``self_attn`` over the image tokens alone (a UNet's ``attn1``), then
``cross_attn`` from the image to the text adapter's context, both through
``SelfCrossAttention.torch_attention_op`` -> the module-level ``attention_function``, which is
not told which block, nor which of the two, runs. The adapter marks the selected blocks'
``self_attn`` running for the extra pass; the cross-attention stays the model's. The
self-attention holds no text, so ASAG there is the plain operator (asag/sinkhorn.py), as on a
UNet.

Default blocks: no attention or layer guidance has been published for Anima or Cosmos, so
``blocks 7-9`` carries over the early-middle placement of Flux's and SD3.5's 7-9, stated for
Anima's 28 blocks; ``auto`` fits it to a shallower model (``DitFamily.auto_spec``).
"""
from __future__ import annotations

from .base import DitFamily, NeoModel

ANIMA = DitFamily(
    name="Anima", block_lists=(("blocks", "blocks"),),
    neo=NeoModel("backend.nn.anima.Anima", attention_module="backend.nn.anima", names_blocks=False),
    attention_part="self_attn", image_only=("blocks",),
    default_blocks="blocks 7-9", default_source="the early-middle placement of SLG's 7-9 on Flux and SD3.5 (none published for Anima)",
    reference_depths={"blocks": 28},
    checkpoint_keys=("blocks.0.mlp.layer1.",),
)
