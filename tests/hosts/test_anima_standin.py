"""The Anima stand-in (tests/hosts/forge_neo_standin/backend/nn/anima.py) is NVIDIA's Cosmos-Predict2
MiniTrainDIT: its weights, under diffusers' names, give diffusers' CosmosTransformer3DModel the same
output. A small model of Anima's layout (adaLN-LoRA, q/k RMS norms, padding-mask channel, patch 2x2x1,
rope extrapolation h=w=4, t=1, no extra position embedding); a non-square latent, so that a swap of
height and width anywhere would show.

Two differences to diffusers are Neo's own, kept in the stand-in, and left as they are here: Neo
computes the rope frequencies in float16 (diffusers in float32), and its q/k RMS norms use eps 1e-6
(diffusers 1e-5). Over the 12 x 16 token positions here the rope's cos and sin differ by about 1e-4
and the outputs by about 1e-5, well inside the tolerance."""
import importlib
import re

import pytest
import torch

from tests.hosts.forge_env import _host

IN_CHANNELS, CONTEXT_DIM, WIDTH, HEADS, BLOCKS, ADALN_LORA_DIM = 16, 40, 96, 3, 2, 16  # head_dim 32: rope splits t 12, h 10, w 10

# Stand-in name pattern -> diffusers name, applied in order.
RENAMES = [
    (r"^x_embedder\.proj\.1\.", "patch_embed.proj."),
    (r"^t_embedder\.1\.", "time_embed.t_embedder."),
    (r"^t_embedding_norm\.", "time_embed.norm."),
    (r"^final_layer\.linear\.", "proj_out."),
    (r"^final_layer\.adaln_modulation\.(\d)\.", r"norm_out.linear_\1."),
    (r"^blocks\.", "transformer_blocks."),
    (r"\.self_attn\.", ".attn1."),
    (r"\.cross_attn\.", ".attn2."),
    (r"\.q_proj\.", ".to_q."),
    (r"\.k_proj\.", ".to_k."),
    (r"\.v_proj\.", ".to_v."),
    (r"\.output_proj\.", ".to_out.0."),
    (r"\.q_norm\.", ".norm_q."),
    (r"\.k_norm\.", ".norm_k."),
    (r"\.mlp\.layer1\.", ".ff.net.0.proj."),
    (r"\.mlp\.layer2\.", ".ff.net.2."),
    (r"\.adaln_modulation_self_attn\.(\d)\.", r".norm1.linear_\1."),
    (r"\.adaln_modulation_cross_attn\.(\d)\.", r".norm2.linear_\1."),
    (r"\.adaln_modulation_mlp\.(\d)\.", r".norm3.linear_\1."),
]


@pytest.fixture
def neo():
    yield from _host("neo")


def to_diffusers(state_dict):
    renamed = {}
    for name, tensor in state_dict.items():
        for pattern, replacement in RENAMES:
            name = re.sub(pattern, replacement, name)
        renamed[name] = tensor
    return renamed


def test_the_anima_stand_in_computes_what_diffusers_cosmos_computes(neo):
    from diffusers import CosmosTransformer3DModel

    torch.manual_seed(0)
    model = importlib.import_module("backend.nn.anima").Anima(
        IN_CHANNELS, IN_CHANNELS, patch_spatial=2, patch_temporal=1, model_channels=WIDTH, concat_padding_mask=True,
        crossattn_emb_channels=CONTEXT_DIM, adaln_lora_dim=ADALN_LORA_DIM, num_blocks=BLOCKS, num_heads=HEADS,
        rope_h_extrapolation_ratio=4.0, rope_w_extrapolation_ratio=4.0, rope_t_extrapolation_ratio=1.0)
    with torch.no_grad():  # RMS norm weights start at one, which would hide a swap of two norms
        for name, param in model.named_parameters():
            if "norm" in name:
                param.uniform_(0.5, 1.5)
    reference = CosmosTransformer3DModel(
        in_channels=IN_CHANNELS, out_channels=IN_CHANNELS, num_attention_heads=HEADS, attention_head_dim=WIDTH // HEADS,
        num_layers=BLOCKS, text_embed_dim=CONTEXT_DIM, adaln_lora_dim=ADALN_LORA_DIM, patch_size=(1, 2, 2),
        rope_scale=(1.0, 4.0, 4.0), concat_padding_mask=True, extra_pos_embed_type=None)  # rope_scale is (t, h, w)
    reference.load_state_dict(to_diffusers(model.state_dict()), strict=True)
    x, context = torch.randn(1, IN_CHANNELS, 1, 24, 32), torch.randn(1, 8, CONTEXT_DIM)
    timestep = torch.tensor([700.0])  # both embed the raw value sinusoidally
    with torch.no_grad():
        ours = model(x, timestep, context)
        # The stand-in, as Neo given no mask, concatenates a zeros padding-mask channel.
        theirs = reference(x, timestep, context, padding_mask=torch.zeros(1, 1, 24, 32)).sample
    assert ours.abs().max() > 0.1
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
