# Stand-in for Comfy-Org/ComfyUI comfy/ldm/modules/attention.py at a125cd84b054a57729b5eecab930ca9408719832,
# over the modules of a real ldm UNet (stable-diffusion-sdkit): its layers compute, ComfyUI's
# forwards below decide what is called (comfy/ldm/modules/diffusionmodules/openaimodel.py
# ``from_ldm`` gives a loaded ldm UNet these classes).
#
# Kept faithful: ``wrap_attn`` (a call whose transformer_options hold
# "optimized_attention_override" goes to override(func, *args, **kwargs); calling func inside does
# not recurse) around the attention backend, whose form is attention_pytorch's ((B, N, H*D) in and
# out, or (B, H, N, D) in with skip_reshape, (B, H, N, D) out with skip_output_reshape; a 2-D or
# 3-D mask broadcast over batch and heads); optimized_attention and optimized_attention_masked as
# module globals, which the models' code calls (SD3's mmdit.py and Flux's math.py call
# optimized_attention, Lumina 2's model.py optimized_attention_masked, Qwen-Image's model.py
# optimized_attention without skip_reshape); CrossAttention.forward (projections, the backend
# with transformer_options, to_out); BasicTransformerBlock.forward's patch protocol: extra_options
# = transformer_options minus "patches" and "patches_replace", plus n_heads, dim_head and
# attn_precision; attn1_patch / attn2_patch before the projections; the replace patch looked up
# by (block[0], block[1], block_index), then (block[0], block[1]), called with q, k, v already
# projected and extra_options, its output through to_out; attn1_output_patch, middle_patch,
# attn2_output_patch; SpatialTransformer.forward setting "activations_shape" and "block_index".
# Simplified: the backend is PyTorch's SDPA for every choice (ComfyUI picks one by device and
# flags: on the CPU sub-quadratic attention, wrapped the same way), no SDP batch limit, no
# attention precision upcast; no ff_in / temporal blocks (video models).
import functools

import torch
from ldm.modules import attention as ldm_attention


def wrap_attn(func):
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        remove_attn_wrapper_key = False
        try:
            if "_inside_attn_wrapper" not in kwargs:
                transformer_options = kwargs.get("transformer_options", None)
                remove_attn_wrapper_key = True
                kwargs["_inside_attn_wrapper"] = True
                if transformer_options is not None and "optimized_attention_override" in transformer_options:
                    return transformer_options["optimized_attention_override"](func, *args, **kwargs)
            return func(*args, **kwargs)
        finally:
            if remove_attn_wrapper_key:
                del kwargs["_inside_attn_wrapper"]
    return wrapper


@wrap_attn
def attention_pytorch(q, k, v, heads, mask=None, attn_precision=None, skip_reshape=False, skip_output_reshape=False, **kwargs):
    if skip_reshape:
        b, _, _, dim_head = q.shape
    else:
        b, _, dim_head = q.shape
        dim_head //= heads
        q, k, v = (t.view(b, -1, heads, dim_head).transpose(1, 2) for t in (q, k, v))
    if mask is not None:
        if mask.ndim == 2:
            mask = mask.unsqueeze(0)
        if mask.ndim == 3:
            mask = mask.unsqueeze(1)
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=0.0, is_causal=False)
    if not skip_output_reshape:
        out = out.transpose(1, 2).reshape(b, -1, heads * dim_head)
    return out


optimized_attention = attention_pytorch
optimized_attention_masked = optimized_attention


class CrossAttention(ldm_attention.CrossAttention):
    def forward(self, x, context=None, value=None, mask=None, transformer_options={}):
        q = self.to_q(x)
        context = x if context is None else context
        k = self.to_k(context)
        v = self.to_v(value) if value is not None else self.to_v(context)
        if mask is None:
            out = optimized_attention(q, k, v, self.heads, transformer_options=transformer_options)
        else:
            out = optimized_attention_masked(q, k, v, self.heads, mask, transformer_options=transformer_options)
        return self.to_out(out)


class BasicTransformerBlock(ldm_attention.BasicTransformerBlock):
    def forward(self, x, context=None, transformer_options={}):
        extra_options = {}
        block = transformer_options.get("block", None)
        block_index = transformer_options.get("block_index", 0)
        transformer_patches, transformer_patches_replace = {}, {}
        for k in transformer_options:
            if k == "patches":
                transformer_patches = transformer_options[k]
            elif k == "patches_replace":
                transformer_patches_replace = transformer_options[k]
            else:
                extra_options[k] = transformer_options[k]
        extra_options["n_heads"] = self.attn1.heads
        extra_options["dim_head"] = self.attn1.to_q.out_features // self.attn1.heads
        extra_options["attn_precision"] = None

        n = self.norm1(x)
        context_attn1 = context if self.disable_self_attn else None
        value_attn1 = None
        if "attn1_patch" in transformer_patches:
            if context_attn1 is None:
                context_attn1 = n
            value_attn1 = context_attn1
            for p in transformer_patches["attn1_patch"]:
                n, context_attn1, value_attn1 = p(n, context_attn1, value_attn1, extra_options)

        transformer_block = (block[0], block[1], block_index) if block is not None else None
        attn1_replace_patch = transformer_patches_replace.get("attn1", {})
        block_attn1 = transformer_block if transformer_block in attn1_replace_patch else block
        if block_attn1 in attn1_replace_patch:
            if context_attn1 is None:
                context_attn1 = n
                value_attn1 = n
            n = self.attn1.to_q(n)
            context_attn1 = self.attn1.to_k(context_attn1)
            value_attn1 = self.attn1.to_v(value_attn1)
            n = attn1_replace_patch[block_attn1](n, context_attn1, value_attn1, extra_options)
            n = self.attn1.to_out(n)
        else:
            n = self.attn1(n, context=context_attn1, value=value_attn1, transformer_options=transformer_options)
        for p in transformer_patches.get("attn1_output_patch", []):
            n = p(n, extra_options)
        x = n + x
        for p in transformer_patches.get("middle_patch", []):
            x = p(x, extra_options)

        n = self.norm2(x)
        context_attn2, value_attn2 = context, None
        if "attn2_patch" in transformer_patches:
            value_attn2 = context_attn2
            for p in transformer_patches["attn2_patch"]:
                n, context_attn2, value_attn2 = p(n, context_attn2, value_attn2, extra_options)
        attn2_replace_patch = transformer_patches_replace.get("attn2", {})
        block_attn2 = transformer_block if transformer_block in attn2_replace_patch else block
        if block_attn2 in attn2_replace_patch:
            if value_attn2 is None:
                value_attn2 = context_attn2
            n = self.attn2.to_q(n)
            context_attn2 = self.attn2.to_k(context_attn2)
            value_attn2 = self.attn2.to_v(value_attn2)
            n = attn2_replace_patch[block_attn2](n, context_attn2, value_attn2, extra_options)
            n = self.attn2.to_out(n)
        else:
            n = self.attn2(n, context=context_attn2, value=value_attn2, transformer_options=transformer_options)
        for p in transformer_patches.get("attn2_output_patch", []):
            n = p(n, extra_options)
        x = n + x
        return self.ff(self.norm3(x)) + x


class SpatialTransformer(ldm_attention.SpatialTransformer):
    def forward(self, x, context=None, transformer_options={}):
        if not isinstance(context, list):
            context = [context] * len(self.transformer_blocks)
        b, c, h, w = x.shape
        transformer_options["activations_shape"] = list(x.shape)
        x_in = x
        x = self.norm(x)
        if not self.use_linear:
            x = self.proj_in(x)
        x = x.movedim(1, 3).flatten(1, 2).contiguous()
        if self.use_linear:
            x = self.proj_in(x)
        for i, block in enumerate(self.transformer_blocks):
            transformer_options["block_index"] = i
            x = block(x, context=context[i], transformer_options=transformer_options)
        if self.use_linear:
            x = self.proj_out(x)
        x = x.reshape(x.shape[0], h, w, x.shape[-1]).movedim(3, 1).contiguous()
        if not self.use_linear:
            x = self.proj_out(x)
        return x + x_in
