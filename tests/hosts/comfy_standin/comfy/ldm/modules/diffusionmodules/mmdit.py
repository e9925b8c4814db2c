# Stand-in for Comfy-Org/ComfyUI comfy/ldm/modules/diffusionmodules/mmdit.py at
# a125cd84b054a57729b5eecab930ca9408719832: SD3 / SD3.5's MMDiT as ComfyUI runs it.
# Kept faithful, because ASAG depends on it:
# - SelfAttention.pre_attention (:296-301): q and k flattened to (batch, tokens, heads * head_dim)
#   after their norms, v left as (batch, tokens, heads, head_dim) by split_qkv;
# - DismantledBlock: adaLN modulation (6 chunks; 2 for the last block's pre_only context half; 9
#   with x_block_self_attn, SD3.5 Medium's MMDiT-X, whose attn2 attends over the image alone),
#   pre_attention / pre_attention_x and post_attention / post_attention_x (gate_cat);
# - _block_mixing (:609-646): cat(context, x) per q, k, v (context first), ONE
#   optimized_attention(q, k, v, heads=, transformer_options=) over it, split at the context's
#   length, then with x_block_self_attn a second optimized_attention over the image's qkv2 alone;
#   the context half of a pre_only block returns None;
# - JointBlock.forward(context, x, c=, use_checkpoint=, transformer_options=) -> (context, x);
# - MMDiT.forward_core_with_concat (:937-984): register tokens before the context, the blocks in
#   order with patches_replace["dit"][("double_block", i)](args {img, txt, vec,
#   transformer_options}, {"original_block"}) whose block_wrap calls the block with the text
#   first, ControlNet residuals control["output"][i] added to x in place after each block;
# - OpenAISignatureMMDITWrapper.forward(x, timesteps, context, y, control, transformer_options):
#   no DIFFUSION_MODEL wrappers at this commit.
# Simplified: torch.utils.checkpoint is not used (inference under no_grad computes the same), the
# positional embedding is learned at the latent's size (no cropping from a larger grid), no
# context_processor, no qk norms, no swiglu / scale_mod_only variants.
import torch
from einops import rearrange
from torch import nn

from comfy.ldm.flux.layers import timestep_embedding
from comfy.ldm.modules.attention import optimized_attention


def modulate(x, shift, scale):
    return x * (1 + scale.unsqueeze(1)) + (0 if shift is None else shift.unsqueeze(1))


def split_qkv(qkv, head_dim):
    qkv = qkv.reshape(qkv.shape[0], qkv.shape[1], 3, -1, head_dim).movedim(2, 0)
    return qkv[0], qkv[1], qkv[2]


class SelfAttention(nn.Module):
    def __init__(self, dim, num_heads=8, qkv_bias=False, pre_only=False):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        if not pre_only:
            self.proj = nn.Linear(dim, dim)
        self.pre_only = pre_only
        self.ln_q = self.ln_k = nn.Identity()

    def pre_attention(self, x):
        q, k, v = split_qkv(self.qkv(x), self.head_dim)
        q = self.ln_q(q).reshape(q.shape[0], q.shape[1], -1)
        k = self.ln_k(k).reshape(q.shape[0], q.shape[1], -1)
        return q, k, v

    def post_attention(self, x):
        return self.proj(x)


class DismantledBlock(nn.Module):
    def __init__(self, hidden_size, num_heads, mlp_ratio=4.0, qkv_bias=False, pre_only=False, x_block_self_attn=False):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = SelfAttention(hidden_size, num_heads, qkv_bias, pre_only=pre_only)
        self.x_block_self_attn = x_block_self_attn
        if x_block_self_attn:
            self.attn2 = SelfAttention(hidden_size, num_heads, qkv_bias)
        if not pre_only:
            self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
            hidden = int(hidden_size * mlp_ratio)
            self.mlp = nn.Sequential(nn.Linear(hidden_size, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, hidden_size))
        n_mods = 9 if x_block_self_attn else (6 if not pre_only else 2)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, n_mods * hidden_size, bias=True))
        self.pre_only = pre_only

    def pre_attention(self, x, c):
        if not self.pre_only:
            shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=1)
            return self.attn.pre_attention(modulate(self.norm1(x), shift_msa, scale_msa)), (x, gate_msa, shift_mlp, scale_mlp, gate_mlp)
        shift_msa, scale_msa = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.attn.pre_attention(modulate(self.norm1(x), shift_msa, scale_msa)), None

    def post_attention(self, attn, x, gate_msa, shift_mlp, scale_mlp, gate_mlp):
        x = x + gate_msa.unsqueeze(1) * self.attn.post_attention(attn)
        return x + gate_mlp.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))

    def pre_attention_x(self, x, c):
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp, shift_msa2, scale_msa2, gate_msa2 = self.adaLN_modulation(c).chunk(9, dim=1)
        x_norm = self.norm1(x)
        qkv = self.attn.pre_attention(modulate(x_norm, shift_msa, scale_msa))
        qkv2 = self.attn2.pre_attention(modulate(x_norm, shift_msa2, scale_msa2))
        return qkv, qkv2, (x, gate_msa, shift_mlp, scale_mlp, gate_mlp, gate_msa2)

    def post_attention_x(self, attn, attn2, x, gate_msa, shift_mlp, scale_mlp, gate_mlp, gate_msa2):
        x = torch.stack([x, gate_msa.unsqueeze(1) * self.attn.post_attention(attn), gate_msa2.unsqueeze(1) * self.attn2.post_attention(attn2)],
                        dim=0).sum(dim=0)
        return x + gate_mlp.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))


def _block_mixing(context, x, context_block, x_block, c, transformer_options={}):
    context_qkv, context_intermediates = context_block.pre_attention(context, c)
    if x_block.x_block_self_attn:
        x_qkv, x_qkv2, x_intermediates = x_block.pre_attention_x(x, c)
    else:
        x_qkv, x_intermediates = x_block.pre_attention(x, c)
    qkv = tuple(torch.cat((context_qkv[t], x_qkv[t]), dim=1) for t in range(3))
    attn = optimized_attention(qkv[0], qkv[1], qkv[2], heads=x_block.attn.num_heads, transformer_options=transformer_options)
    context_attn, x_attn = attn[:, : context_qkv[0].shape[1]], attn[:, context_qkv[0].shape[1]:]
    context = context_block.post_attention(context_attn, *context_intermediates) if not context_block.pre_only else None
    if x_block.x_block_self_attn:
        attn2 = optimized_attention(x_qkv2[0], x_qkv2[1], x_qkv2[2], heads=x_block.attn2.num_heads, transformer_options=transformer_options)
        x = x_block.post_attention_x(x_attn, attn2, *x_intermediates)
    else:
        x = x_block.post_attention(x_attn, *x_intermediates)
    return context, x


def block_mixing(*args, use_checkpoint=True, **kwargs):
    return _block_mixing(*args, **kwargs)


class JointBlock(nn.Module):
    def __init__(self, *args, **kwargs):
        super().__init__()
        pre_only = kwargs.pop("pre_only")
        x_block_self_attn = kwargs.pop("x_block_self_attn", False)
        self.context_block = DismantledBlock(*args, pre_only=pre_only, **kwargs)
        self.x_block = DismantledBlock(*args, pre_only=False, x_block_self_attn=x_block_self_attn, **kwargs)

    def forward(self, *args, **kwargs):
        return block_mixing(*args, context_block=self.context_block, x_block=self.x_block, **kwargs)


class MMDiT(nn.Module):
    def __init__(self, input_size=8, patch_size=2, in_channels=16, depth=4, mlp_ratio=4.0, out_channels=None, adm_in_channels=None,
                 context_dim=32, register_length=0, x_block_self_attn_layers=(), num_heads=None, hidden_size=None, dtype=None,
                 device=None, operations=None, **kwargs):
        super().__init__()
        self.patch_size, self.in_channels = patch_size, in_channels
        self.out_channels = out_channels or in_channels
        self.hidden_size = hidden_size or 64 * depth
        num_heads = num_heads or depth
        self.x_embedder = nn.Conv2d(in_channels, self.hidden_size, kernel_size=patch_size, stride=patch_size)
        self.pos_embed = nn.Parameter(torch.randn(1, (input_size // patch_size) ** 2, self.hidden_size) * 0.02)
        self.t_embedder = nn.Sequential(nn.Linear(256, self.hidden_size), nn.SiLU(), nn.Linear(self.hidden_size, self.hidden_size))
        self.y_embedder = nn.Sequential(nn.Linear(adm_in_channels, self.hidden_size), nn.SiLU(),
                                        nn.Linear(self.hidden_size, self.hidden_size)) if adm_in_channels else None
        self.context_embedder = nn.Linear(context_dim, self.hidden_size)
        self.register_length = register_length
        if register_length > 0:
            self.register = nn.Parameter(torch.randn(1, register_length, self.hidden_size))
        self.joint_blocks = nn.ModuleList([JointBlock(self.hidden_size, num_heads, mlp_ratio=mlp_ratio, pre_only=i == depth - 1,
                                                      x_block_self_attn=i in x_block_self_attn_layers) for i in range(depth)])
        self.final_norm = nn.LayerNorm(self.hidden_size, elementwise_affine=False, eps=1e-6)
        self.final_linear = nn.Linear(self.hidden_size, patch_size * patch_size * self.out_channels)
        self.final_modulation = nn.Sequential(nn.SiLU(), nn.Linear(self.hidden_size, 2 * self.hidden_size))
        self.use_checkpoint = False

    def forward_core_with_concat(self, x, c_mod, context=None, control=None, transformer_options={}):
        patches_replace = transformer_options.get("patches_replace", {})
        if self.register_length > 0:
            context = torch.cat((self.register.repeat(x.shape[0], 1, 1), context), 1)
        blocks_replace = patches_replace.get("dit", {})
        for i in range(len(self.joint_blocks)):
            if ("double_block", i) in blocks_replace:
                def block_wrap(args, i=i):
                    out = {}
                    out["txt"], out["img"] = self.joint_blocks[i](args["txt"], args["img"], c=args["vec"],
                                                                  transformer_options=args["transformer_options"])
                    return out
                out = blocks_replace[("double_block", i)]({"img": x, "txt": context, "vec": c_mod, "transformer_options": transformer_options},
                                                          {"original_block": block_wrap})
                context, x = out["txt"], out["img"]
            else:
                context, x = self.joint_blocks[i](context, x, c=c_mod, use_checkpoint=self.use_checkpoint,
                                                  transformer_options=transformer_options)
            if control is not None:
                control_o = control.get("output")
                if i < len(control_o) and control_o[i] is not None:
                    x += control_o[i]
        shift, scale = self.final_modulation(c_mod).chunk(2, dim=1)
        return self.final_linear(modulate(self.final_norm(x), shift, scale))

    def forward(self, x, t, y=None, context=None, control=None, transformer_options={}):
        hw = x.shape[-2:]
        x = rearrange(self.x_embedder(x), "b c h w -> b (h w) c") + self.pos_embed.to(x.dtype)
        c = self.t_embedder(timestep_embedding(t, 256, time_factor=1.0).to(x.dtype))
        if y is not None and self.y_embedder is not None:
            c = c + self.y_embedder(y)
        context = self.context_embedder(context)
        x = self.forward_core_with_concat(x, c, context, control, transformer_options)
        p = self.patch_size
        return rearrange(x, "b (h w) (p q c) -> b c (h p) (w q)", h=hw[0] // p, w=hw[1] // p, p=p, q=p)


class OpenAISignatureMMDITWrapper(MMDiT):
    def forward(self, x, timesteps, context=None, y=None, control=None, transformer_options={}, **kwargs):
        return super().forward(x, timesteps, context=context, y=y, control=control, transformer_options=transformer_options)
