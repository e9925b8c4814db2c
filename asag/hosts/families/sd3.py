"""SD3 and SD3.5 (Stability AI's MMDiT) on ComfyUI (``comfy/ldm/modules/diffusionmodules/mmdit.py``;
Forge Neo has no family for it here).

``joint_blocks``: each an MMDiT block with a context and an image stream and one attention over
the joint sequence ``cat(context, x)``, the context (text) first (``_block_mixing``), called as
``optimized_attention(q, k, v, heads=, transformer_options=)`` with q and k as (batch, tokens,
heads * 64) and v as (batch, tokens, heads, 64) (only q and k are flattened). SD3.5 Medium's first
blocks (MMDiT-X, ``x_block_self_attn``) make a second attention call in the same block, over
the image alone. The last block's context half is ``pre_only``. The blocks are offered to the
``dit`` replacement ``("double_block", i)``, called as ``block(context, x, c=...)`` and return
``(context, x)``; ComfyUI does not name them (``block_type``), so the adapter marks the selected
ones through that replacement. Depth per model: 24 blocks in SD3 Medium and SD3.5 Medium, 38 in
SD3.5 Large (ComfyUI reads it from the patch embedding's width, ``model_detection.py``).

Default blocks: 7, 8, 9, the layers of Stability AI's skip-layer guidance for SD3.5
(Stability-AI/sd3.5 ``sd3_infer.py``, ``--skip_layer_cfg``, recommended for SD3.5 Medium), which
ComfyUI's SkipLayerGuidanceSD3 and SkipLayerGuidanceDiT take as their default double layers;
ASAG perturbs those blocks' attention instead of skipping them. Stated for SD3 Medium's 24 blocks
and kept as stated on the deeper SD3.5 Large (``DitFamily.auto_spec``).
"""
from __future__ import annotations

from .base import ComfyModel, DitFamily

SD3 = DitFamily(
    name="SD3 / SD3.5", block_lists=(("double", "joint_blocks"),),
    comfyui=ComfyModel("comfy.ldm.modules.diffusionmodules.mmdit.OpenAISignatureMMDITWrapper"),
    replace_keys={"double": "double_block"}, default_blocks="double 7-9",
    default_source="Stability AI's SD3.5 skip-layer guidance (layers 7, 8, 9), SkipLayerGuidanceSD3's default",
    reference_depths={"double": 24},  # SD3 Medium, SD3.5 Medium; SD3.5 Large has 38
    checkpoint_keys=("joint_blocks.0.context_block.attn.qkv.",),
)
