"""The Qwen-Image stand-in (tests/hosts/forge_neo_standin/backend/nn/qwen.py) computes what diffusers'
QwenImageTransformer2DModel computes with the same weights. A small model of the same layout (two
double-stream blocks, 3 heads of 16, rope axes (frame, row, column) of 4, 4 and 8 dimensions, so
that rows and columns rotate differently); a non-square latent (12 x 16 tokens), so that a swap of
height and width anywhere would show; the latent packed and unpacked as diffusers' QwenImagePipeline
does (`_pack_latents`, `_unpack_latents`), the timestep in [0, 1] as that pipeline passes it.

The parameter names are diffusers' own (ComfyUI's port, which Neo copies, kept them; the rope and
the sinusoidal time projection have no weights), so the state dict loads as it is.

The two build the rope differently: the stand-in, as Neo, rotates by Flux's EmbedND over 3-axis ids,
diffusers by QwenEmbedRope's tables with scale_rope. With an even number of token rows and columns
they give the same positions: rows -h/2 .. h/2-1, columns likewise, frame 0, the text from
max(h, w)/2 on all three axes. With an odd number (Qwen-Image's own 1328 x 1328 has 83 x 83 tokens)
they do not: the stand-in, as Neo and ComfyUI (linspace(0, n-1) - n//2), centres the image at
-(n//2) .. n//2, diffusers at -(n - n//2) .. n//2-1, one lower, while the text starts at n//2 in both;
relative to the text the image sits one row and one column apart. Not exercised here."""
import importlib
import inspect

import pytest
import torch

from tests.hosts.forge_env import _host

CHANNELS, PATCH, CONTEXT_DIM, HEADS, HEAD_DIM, BLOCKS, AXES = 16, 2, 40, 3, 16, 2, (4, 4, 8)
HEIGHT, WIDTH, TEXT_TOKENS = 24, 32, 8


@pytest.fixture
def neo():
    yield from _host("neo")


def pack(latent):
    """(batch, C, 1, H, W) -> (batch, H/2 * W/2, 4C), QwenImagePipeline._pack_latents (frame 1)."""
    batch, channels, _, height, width = latent.shape
    patches = latent.view(batch, channels, height // 2, 2, width // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return patches.reshape(batch, (height // 2) * (width // 2), channels * 4)


def unpack(tokens, height, width):
    """(batch, H/2 * W/2, 4C) -> (batch, C, 1, H, W), QwenImagePipeline._unpack_latents."""
    batch, _, channels = tokens.shape
    patches = tokens.view(batch, height // 2, width // 2, channels // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return patches.reshape(batch, channels // 4, 1, height, width)


def test_the_qwen_image_stand_in_computes_what_diffusers_qwen_image_computes(neo):
    from diffusers import QwenImageTransformer2DModel

    config = dict(patch_size=PATCH, in_channels=CHANNELS * PATCH * PATCH, out_channels=CHANNELS, num_layers=BLOCKS,
                  attention_head_dim=HEAD_DIM, num_attention_heads=HEADS, joint_attention_dim=CONTEXT_DIM, axes_dims_rope=AXES)
    torch.manual_seed(0)
    model = importlib.import_module("backend.nn.qwen").QwenImageTransformer2DModel(**config)
    with torch.no_grad():  # RMS norm weights start at one, which would hide a swap of two norms
        for name, param in model.named_parameters():
            if "norm" in name:
                param.uniform_(0.5, 1.5)
    reference = QwenImageTransformer2DModel(**config)
    reference.load_state_dict(model.state_dict(), strict=True)
    x, context = torch.randn(1, CHANNELS, 1, HEIGHT, WIDTH), torch.randn(1, TEXT_TOKENS, CONTEXT_DIM)
    timestep = torch.tensor([0.7])  # both embed timestep * 1000
    with torch.no_grad():
        ours = model(x, timestep, context)
        # No text mask: Neo's blocks never pass one to the attention.
        theirs = reference(hidden_states=pack(x), encoder_hidden_states=context, encoder_hidden_states_mask=None,
                           timestep=timestep, img_shapes=[[(1, HEIGHT // 2, WIDTH // 2)]]).sample
    theirs = unpack(theirs, HEIGHT, WIDTH)
    assert ours.shape == x.shape
    assert ours.abs().max() > 0.1
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


def test_the_stand_in_is_built_at_qwen_images_real_shape_by_default(neo):
    """Its defaults are Qwen-Image's, as Neo's QwenImageTransformer2DModel (5692d2d) and diffusers'
    have them: 60 blocks of 24 heads of 128, the depth the family's ``auto`` is stated for."""
    from diffusers import QwenImageTransformer2DModel

    from asag.hosts.families.qwen import QWEN_IMAGE

    def defaults(function):
        return {name: p.default for name, p in inspect.signature(function).parameters.items() if p.default is not p.empty}

    ours = defaults(importlib.import_module("backend.nn.qwen").QwenImageTransformer2DModel.__init__)
    theirs = defaults(QwenImageTransformer2DModel.__init__)
    shared = set(ours) & set(theirs)
    assert {"num_layers", "num_attention_heads", "attention_head_dim", "joint_attention_dim", "axes_dims_rope"} <= shared
    assert {name: ours[name] for name in shared} == {name: theirs[name] for name in shared}
    assert ours["num_layers"] == QWEN_IMAGE.reference_depths["blocks"] == 60
