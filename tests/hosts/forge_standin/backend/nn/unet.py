# Stand-in for lllyasviel/stable-diffusion-webui-forge backend/nn/unet.py at
# dfdcbab685e57677014f05a3309b48cc87383167: Forge's UNet forward, run over the modules of a real
# ldm UNetModel (whose own forward knows nothing of transformer_options).
#
# Kept faithful: transformer_options["original_shape"], "transformer_index" (counted per
# SpatialTransformer), "block" = (part, id) set before each block, "block_index" set per
# transformer block; the blocks called as module(h, emb, context, transformer_options[,
# output_shape]) (Forge's TimestepEmbedSequential, with block_inner_modifiers inside it); around
# them apply_control (in place: h += ctrl), block modifiers, input_block_patch,
# input_block_patch_after_skip and output_block_patch; and BasicTransformerBlock._forward's patch
# protocol: attn1_patch / attn2_patch before the projections, the replace patch looked up by
# (block[0], block[1], block_index) and then (block[0], block[1]), called with q, k, v already
# projected by to_q/to_k/to_v and extra_options = transformer_options minus "patches" and
# "patches_replace", plus n_heads and dim_head; its output goes through to_out.
# Not modelled: Forge's own layer classes (the ldm layers run inside Forge's block class),
# group_norm_wrapper.
import torch
from einops import rearrange
from ldm.modules.attention import SpatialTransformer
from ldm.modules.diffusionmodules import openaimodel
from ldm.modules.diffusionmodules.openaimodel import TimestepBlock
from ldm.modules.diffusionmodules.util import timestep_embedding


def apply_control(h, control, name):
    if control is not None and name in control and len(control[name]) > 0:
        ctrl = control[name].pop()
        if ctrl is not None:
            try:
                h += ctrl
            except Exception:
                print("warning control could not be applied", h.shape, ctrl.shape)
    return h


def _attention(attn, q, k, v, heads):
    b, n, inner = q.shape
    split = lambda t: t.reshape(b, t.shape[1], heads, -1).transpose(1, 2)
    out = torch.nn.functional.scaled_dot_product_attention(split(q), split(k), split(v))
    return out.transpose(1, 2).reshape(b, n, inner)


def _cross_attention(attn, x, context, value, heads):
    """ldm's CrossAttention when no value is given (the real module); Forge's form otherwise."""
    if value is None:
        return attn(x, context=context)
    context = x if context is None else context
    return attn.to_out(_attention(attn, attn.to_q(x), attn.to_k(context), attn.to_v(value), heads))


def basic_transformer_block(block, x, context=None, transformer_options={}):
    extra_options = {}
    block_id = transformer_options.get("block", None)
    block_index = transformer_options.get("block_index", 0)
    transformer_patches, transformer_patches_replace = {}, {}
    for k in transformer_options:
        if k == "patches":
            transformer_patches = transformer_options[k]
        elif k == "patches_replace":
            transformer_patches_replace = transformer_options[k]
        else:
            extra_options[k] = transformer_options[k]
    n_heads = block.attn1.heads
    extra_options["n_heads"] = n_heads
    extra_options["dim_head"] = block.attn1.to_q.out_features // n_heads

    n = block.norm1(x)
    context_attn1 = context if block.disable_self_attn else None
    value_attn1 = None
    if "attn1_patch" in transformer_patches:
        if context_attn1 is None:
            context_attn1 = n
        value_attn1 = context_attn1
        for p in transformer_patches["attn1_patch"]:
            n, context_attn1, value_attn1 = p(n, context_attn1, value_attn1, extra_options)
    transformer_block = (block_id[0], block_id[1], block_index) if block_id is not None else None
    attn1_replace_patch = transformer_patches_replace.get("attn1", {})
    block_attn1 = transformer_block if transformer_block in attn1_replace_patch else block_id
    if block_attn1 in attn1_replace_patch:
        if context_attn1 is None:
            context_attn1 = n
            value_attn1 = n
        q = block.attn1.to_q(n)
        k = block.attn1.to_k(context_attn1)
        v = block.attn1.to_v(value_attn1)
        n = block.attn1.to_out(attn1_replace_patch[block_attn1](q, k, v, extra_options))
    else:
        n = _cross_attention(block.attn1, n, context_attn1, value_attn1, n_heads)
    for p in transformer_patches.get("attn1_output_patch", []):
        n = p(n, extra_options)
    x = x + n

    n = block.norm2(x)
    context_attn2, value_attn2 = context, None
    if "attn2_patch" in transformer_patches:
        value_attn2 = context_attn2
        for p in transformer_patches["attn2_patch"]:
            n, context_attn2, value_attn2 = p(n, context_attn2, value_attn2, extra_options)
    attn2_replace_patch = transformer_patches_replace.get("attn2", {})
    block_attn2 = transformer_block if transformer_block in attn2_replace_patch else block_id
    if block_attn2 in attn2_replace_patch:
        if value_attn2 is None:
            value_attn2 = context_attn2
        q = block.attn2.to_q(n)
        k = block.attn2.to_k(context_attn2)
        v = block.attn2.to_v(value_attn2)
        n = block.attn2.to_out(attn2_replace_patch[block_attn2](q, k, v, extra_options))
    else:
        n = _cross_attention(block.attn2, n, context_attn2, value_attn2, n_heads)
    for p in transformer_patches.get("attn2_output_patch", []):
        n = p(n, extra_options)
    x = x + n
    return block.ff(block.norm3(x)) + x


def spatial_transformer(module, x, context=None, transformer_options={}):
    if not isinstance(context, list):
        context = [context] * len(module.transformer_blocks)
    b, c, h, w = x.shape
    x_in = x
    x = module.norm(x)
    if not module.use_linear:
        x = module.proj_in(x)
    x = rearrange(x, "b c h w -> b (h w) c").contiguous()
    if module.use_linear:
        x = module.proj_in(x)
    for i, block in enumerate(module.transformer_blocks):
        transformer_options["block_index"] = i
        x = basic_transformer_block(block, x, context=context[i], transformer_options=transformer_options)
    if module.use_linear:
        x = module.proj_out(x)
    x = rearrange(x, "b (h w) c -> b c h w", h=h, w=w).contiguous()
    if not module.use_linear:
        x = module.proj_out(x)
    return x + x_in


def run_block_layers(block, x, emb, context=None, transformer_options={}, output_shape=None):
    """The body of Forge's ``TimestepEmbedSequential.forward`` (and of ldm_patched's
    ``forward_timestep_embed``): the block's layers, block_inner_modifiers around each, and
    ``transformer_index`` counted per SpatialTransformer."""
    block_inner_modifiers = transformer_options.get("block_inner_modifiers", [])
    for layer_index, layer in enumerate(block):
        for modifier in block_inner_modifiers:
            x = modifier(x, "before", layer, layer_index, block, transformer_options)
        if isinstance(layer, TimestepBlock):
            x = layer(x, emb)
        elif isinstance(layer, SpatialTransformer):
            x = spatial_transformer(layer, x, context, transformer_options)
            if "transformer_index" in transformer_options:
                transformer_options["transformer_index"] += 1
        else:
            x = layer(x)  # ldm's Upsample takes no output_shape: sizes here are powers of two
        for modifier in block_inner_modifiers:
            x = modifier(x, "after", layer, layer_index, block, transformer_options)
    return x


class TimestepEmbedSequential(openaimodel.TimestepEmbedSequential):
    """Forge's block class: the ldm block's layers, Forge's call signature (``forge_blocks``
    gives a real ldm UNet's blocks this class, as Forge builds its UNet from its own)."""

    def forward(self, x, emb, context=None, transformer_options={}, output_shape=None):
        return run_block_layers(self, x, emb, context, transformer_options, output_shape)


def forge_unet(unet):
    """A real ldm UNetModel with Forge's forward and block class."""
    unet.__class__ = IntegratedUNet2DConditionModel
    for block in [*unet.input_blocks, unet.middle_block, *unet.output_blocks]:
        block.__class__ = TimestepEmbedSequential
    return unet


def call_block(block, *args):
    return block(*args)


def unet_forward(unet, x, timesteps=None, context=None, y=None, control=None, transformer_options={},
                 call_block=call_block, **kwargs):
    """Forge's UNet forward over the ldm UNetModel ``unet`` (its blocks made Forge's by ``forge_unet``).
    ``call_block(block, h, emb, context, transformer_options[, output_shape])``: how the UNet calls
    a block (ldm_patched's UNet calls ``forward_timestep_embed``, not the block)."""
    transformer_options["original_shape"] = list(x.shape)
    transformer_options["transformer_index"] = 0
    transformer_patches = transformer_options.get("patches", {})
    block_modifiers = transformer_options.get("block_modifiers", [])
    emb = unet.time_embed(timestep_embedding(timesteps, unet.model_channels, repeat_only=False).to(x.dtype))
    if unet.num_classes is not None:
        emb = emb + unet.label_emb(y)
    hs = []
    h = x
    for id, module in enumerate(unet.input_blocks):
        transformer_options["block"] = ("input", id)
        for block_modifier in block_modifiers:
            h = block_modifier(h, "before", transformer_options)
        h = call_block(module, h, emb, context, transformer_options)
        h = apply_control(h, control, "input")
        for block_modifier in block_modifiers:
            h = block_modifier(h, "after", transformer_options)
        for patch in transformer_patches.get("input_block_patch", []):
            h = patch(h, transformer_options)
        hs.append(h)
        for patch in transformer_patches.get("input_block_patch_after_skip", []):
            h = patch(h, transformer_options)
    transformer_options["block"] = ("middle", 0)
    for block_modifier in block_modifiers:
        h = block_modifier(h, "before", transformer_options)
    h = call_block(unet.middle_block, h, emb, context, transformer_options)
    h = apply_control(h, control, "middle")
    for block_modifier in block_modifiers:
        h = block_modifier(h, "after", transformer_options)
    for id, module in enumerate(unet.output_blocks):
        transformer_options["block"] = ("output", id)
        hsp = hs.pop()
        hsp = apply_control(hsp, control, "output")
        for patch in transformer_patches.get("output_block_patch", []):
            h, hsp = patch(h, hsp, transformer_options)
        h = torch.cat([h, hsp], dim=1)
        del hsp
        output_shape = hs[-1].shape if len(hs) > 0 else None
        for block_modifier in block_modifiers:
            h = block_modifier(h, "before", transformer_options)
        h = call_block(module, h, emb, context, transformer_options, output_shape)
        for block_modifier in block_modifiers:
            h = block_modifier(h, "after", transformer_options)
    transformer_options["block"] = ("last", 0)
    for block_modifier in block_modifiers:
        h = block_modifier(h, "before", transformer_options)
    h = unet.out(h)
    for block_modifier in block_modifiers:
        h = block_modifier(h, "after", transformer_options)
    return h.type(x.dtype)


class IntegratedUNet2DConditionModel(openaimodel.UNetModel):
    """Forge's UNet class: ldm's modules, Forge's forward."""

    forward = unet_forward
