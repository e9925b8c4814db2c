# Stand-in for Forge Neo backend/nn/flux.py (exo101/sd-webui-forge-neo-v3 5692d2d,
# webui/backend/nn/flux.py; ComfyUI v0.9.0's comfy/ldm/flux, the BFL architecture and parameter
# names), written here for the tests; it computes what diffusers' FluxTransformer2DModel computes
# with the same weights, which tests/hosts/test_forge_dit.py checks.
#
# Kept faithful, because ASAG depends on it:
# - the module-level `attention(q, k, v, pe, mask, transformer_options)` (:18): rope by the real
#   comfy_kitchen.apply_rope, then this module's global `attention_function` with q, k, v as
#   (batch, heads, tokens, dim) and skip_reshape=True;
# - DoubleStreamBlock (:186-268): separate img/txt modulation, qkv, RMS q/k norms; ONE attention
#   over cat(txt, img) (text first); the split at txt.shape[1]; in-place residual adds on the
#   block's inputs; modulation from `vec`, or a precomputed pair of ModulationOut (Chroma);
# - SingleStreamBlock (:271-329): fused linear1 -> (qkv, mlp), attention over the joint sequence,
#   in-place residual;
# - forward_orig (:434-565): img_in / time_in / guidance_in / vector_in / txt_in, the pe of
#   cat(txt_ids, img_ids), `patches["post_input"]`, `transformer_options["total_blocks"]`,
#   `["block_type"]` and `["block_index"]` set before each block, whole-block replacement through
#   `patches_replace["dit"][("double_block" | "single_block", i)]` with `original_block`, ControlNet
#   residuals added in place after each block, the joint sequence cat(txt, img) between the lists;
# - forward (:581-634): patchify (2x2), img_ids (rows, cols), zero txt_ids, Kontext references
#   from dynamic_args.ref_latents ("offset" method) appended to the image tokens.
# Simplified: the variants Flux.2 Klein adds (global modulation, SiLU / Yak MLPs, txt_norm,
# txt_ids_dims, no biases), modulation_dims (never set for these models), and the device
# fallbacks of `rope` (MPS, XPU, DirectML).
import math
from dataclasses import dataclass

import torch
from comfy_kitchen import apply_rope
from einops import rearrange, repeat
from torch import nn

from backend.args import dynamic_args
from backend.attention import attention_function
from backend.utils import fp16_fix, pad_to_patch_size


def attention(q, k, v, pe, mask=None, transformer_options={}):
    if pe is not None:
        q, k = apply_rope(q, k, pe)
    return attention_function(q, k, v, q.shape[1], skip_reshape=True, mask=mask, transformer_options=transformer_options)


def rope(pos, dim, theta):
    """Per position and frequency, the 2x2 rotation [[cos, -sin], [sin, cos]]."""
    scale = torch.linspace(0, (dim - 2) / dim, steps=dim // 2, dtype=torch.float64, device=pos.device)
    omega = 1.0 / (theta ** scale)
    angles = torch.einsum("...n,d->...nd", pos.to(dtype=torch.float32), omega)
    rotation = torch.stack([torch.cos(angles), -torch.sin(angles), torch.sin(angles), torch.cos(angles)], dim=-1)
    return rearrange(rotation, "b n d (i j) -> b n d i j", i=2, j=2).to(dtype=torch.float32)


def timestep_embedding(t, dim, max_period=10000, time_factor=1000.0):
    t = time_factor * t
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None].float() * freqs[None]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
    return embedding.to(t) if torch.is_floating_point(t) else embedding


class EmbedND(nn.Module):
    def __init__(self, dim, theta, axes_dim):
        super().__init__()
        self.dim, self.theta, self.axes_dim = dim, theta, axes_dim

    def forward(self, ids):
        per_axis = [rope(ids[..., i], self.axes_dim[i], self.theta) for i in range(ids.shape[-1])]
        return torch.cat(per_axis, dim=-3).unsqueeze(1)


class MLPEmbedder(nn.Module):
    def __init__(self, in_dim, hidden_dim, bias=True):
        super().__init__()
        self.in_layer = nn.Linear(in_dim, hidden_dim, bias=bias)
        self.silu = nn.SiLU()
        self.out_layer = nn.Linear(hidden_dim, hidden_dim, bias=bias)

    def forward(self, x):
        return self.out_layer(self.silu(self.in_layer(x)))


class QKNorm(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.query_norm = nn.RMSNorm(dim)
        self.key_norm = nn.RMSNorm(dim)

    def forward(self, q, k, v):
        return self.query_norm(q).to(v), self.key_norm(k).to(v)


class SelfAttention(nn.Module):
    def __init__(self, dim, num_heads=8, qkv_bias=False, proj_bias=True):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.norm = QKNorm(dim // num_heads)
        self.proj = nn.Linear(dim, dim, bias=proj_bias)


@dataclass
class ModulationOut:
    shift: torch.Tensor
    scale: torch.Tensor
    gate: torch.Tensor


class Modulation(nn.Module):
    def __init__(self, dim, double, bias=True):
        super().__init__()
        self.is_double = double
        self.multiplier = 6 if double else 3
        self.lin = nn.Linear(dim, self.multiplier * dim, bias=bias)

    def forward(self, vec):
        if vec.ndim == 2:
            vec = vec[:, None, :]
        out = self.lin(nn.functional.silu(vec)).chunk(self.multiplier, dim=-1)
        return ModulationOut(*out[:3]), ModulationOut(*out[3:]) if self.is_double else None


def apply_mod(tensor, m_mult, m_add=None, modulation_dims=None):
    if m_add is not None:
        return torch.addcmul(m_add, tensor, m_mult)
    return tensor * m_mult


def _heads(qkv, heads):
    """(batch, tokens, 3 * heads * dim) -> q, k, v of (batch, heads, tokens, dim)."""
    return qkv.view(qkv.shape[0], qkv.shape[1], 3, heads, -1).permute(2, 0, 3, 1, 4)


class DoubleStreamBlock(nn.Module):
    def __init__(self, hidden_size, num_heads, mlp_ratio, qkv_bias=False, modulation=True, proj_bias=True):
        super().__init__()
        mlp_hidden = int(hidden_size * mlp_ratio)
        self.num_heads, self.hidden_size, self.modulation = num_heads, hidden_size, modulation
        for stream in ("img", "txt"):
            if modulation:
                setattr(self, f"{stream}_mod", Modulation(hidden_size, double=True))
            setattr(self, f"{stream}_norm1", nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6))
            setattr(self, f"{stream}_attn", SelfAttention(hidden_size, num_heads, qkv_bias=qkv_bias, proj_bias=proj_bias))
            setattr(self, f"{stream}_norm2", nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6))
            setattr(self, f"{stream}_mlp", nn.Sequential(nn.Linear(hidden_size, mlp_hidden, bias=True), nn.GELU(approximate="tanh"),
                                                         nn.Linear(mlp_hidden, hidden_size, bias=True)))

    def _qkv(self, stream, x, mod):
        attn = getattr(self, f"{stream}_attn")
        q, k, v = _heads(attn.qkv(apply_mod(getattr(self, f"{stream}_norm1")(x), 1 + mod.scale, mod.shift)), self.num_heads)
        q, k = attn.norm(q, k, v)
        return q, k, v

    def forward(self, img, txt, vec, pe, attn_mask=None, modulation_dims_img=None, modulation_dims_txt=None, transformer_options={}):
        if self.modulation:
            (img_mod1, img_mod2), (txt_mod1, txt_mod2) = self.img_mod(vec), self.txt_mod(vec)
        else:
            (img_mod1, img_mod2), (txt_mod1, txt_mod2) = vec
        img_q, img_k, img_v = self._qkv("img", img, img_mod1)
        txt_q, txt_k, txt_v = self._qkv("txt", txt, txt_mod1)
        q, k, v = (torch.cat(pair, dim=2) for pair in ((txt_q, img_q), (txt_k, img_k), (txt_v, img_v)))
        attn = attention(q, k, v, pe=pe, mask=attn_mask, transformer_options=transformer_options)
        txt_attn, img_attn = attn[:, : txt.shape[1]], attn[:, txt.shape[1]:]

        img += apply_mod(self.img_attn.proj(img_attn), img_mod1.gate)
        img += apply_mod(self.img_mlp(apply_mod(self.img_norm2(img), 1 + img_mod2.scale, img_mod2.shift)), img_mod2.gate)
        txt += apply_mod(self.txt_attn.proj(txt_attn), txt_mod1.gate)
        txt += apply_mod(self.txt_mlp(apply_mod(self.txt_norm2(txt), 1 + txt_mod2.scale, txt_mod2.shift)), txt_mod2.gate)
        return img, fp16_fix(txt)


class SingleStreamBlock(nn.Module):
    def __init__(self, hidden_size, num_heads, mlp_ratio=4.0, modulation=True, bias=True):
        super().__init__()
        self.hidden_size, self.num_heads = hidden_size, num_heads
        self.mlp_hidden_dim = int(hidden_size * mlp_ratio)
        self.linear1 = nn.Linear(hidden_size, hidden_size * 3 + self.mlp_hidden_dim, bias=bias)
        self.linear2 = nn.Linear(hidden_size + self.mlp_hidden_dim, hidden_size, bias=bias)
        self.norm = QKNorm(hidden_size // num_heads)
        self.pre_norm = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp_act = nn.GELU(approximate="tanh")
        self.modulation = Modulation(hidden_size, double=False) if modulation else None

    def forward(self, x, vec, pe, attn_mask=None, modulation_dims=None, transformer_options={}):
        mod = self.modulation(vec)[0] if self.modulation else vec
        qkv, mlp = torch.split(self.linear1(apply_mod(self.pre_norm(x), 1 + mod.scale, mod.shift)),
                               [3 * self.hidden_size, self.mlp_hidden_dim], dim=-1)
        q, k, v = _heads(qkv, self.num_heads)
        q, k = self.norm(q, k, v)
        attn = attention(q, k, v, pe=pe, mask=attn_mask, transformer_options=transformer_options)
        x += apply_mod(self.linear2(torch.cat((attn, self.mlp_act(mlp)), 2)), mod.gate)
        return fp16_fix(x)


class LastLayer(nn.Module):
    def __init__(self, hidden_size, patch_size, out_channels, bias=True):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels, bias=bias)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size, bias=bias))

    def forward(self, x, vec, modulation_dims=None):
        if vec.ndim == 2:
            vec = vec[:, None, :]
        shift, scale = self.adaLN_modulation(vec).chunk(2, dim=-1)
        return self.linear(apply_mod(self.norm_final(x), 1 + scale, shift))


def run_blocks(model, img, txt, vec, single_vec, pe, attn_mask, control, transformer_options, modulations=None):
    """The two block lists as forward_orig runs them (Flux :509-563; Chroma :179-235, which asks
    ``modulations(kind, i)`` for each block's precomputed modulation and skips pruned blocks)."""
    blocks_replace = transformer_options.get("patches_replace", {}).get("dit", {})
    transformer_options["total_blocks"] = len(model.double_blocks)
    transformer_options["block_type"] = "double"
    for i, block in enumerate(model.double_blocks):
        transformer_options["block_index"] = i
        if i in getattr(model, "skip_mmdit", ()):
            continue
        block_vec = vec if modulations is None else modulations("double", i)
        if ("double_block", i) in blocks_replace:
            def block_wrap(args, block=block):
                out = {}
                out["img"], out["txt"] = block(img=args["img"], txt=args["txt"], vec=args["vec"], pe=args["pe"],
                                               attn_mask=args.get("attn_mask"), transformer_options=args.get("transformer_options"))
                return out
            out = blocks_replace[("double_block", i)]({"img": img, "txt": txt, "vec": block_vec, "pe": pe, "attn_mask": attn_mask,
                                                       "transformer_options": transformer_options}, {"original_block": block_wrap})
            img, txt = out["img"], out["txt"]
        else:
            img, txt = block(img=img, txt=txt, vec=block_vec, pe=pe, attn_mask=attn_mask, transformer_options=transformer_options)
        if control is not None:
            residuals = control.get("input")
            if i < len(residuals) and residuals[i] is not None:
                img[:, : residuals[i].shape[1]] += residuals[i]

    img = torch.cat((txt, fp16_fix(img)), 1)
    transformer_options["total_blocks"] = len(model.single_blocks)
    transformer_options["block_type"] = "single"
    for i, block in enumerate(model.single_blocks):
        transformer_options["block_index"] = i
        if i in getattr(model, "skip_dit", ()):
            continue
        block_vec = single_vec if modulations is None else modulations("single", i)
        if ("single_block", i) in blocks_replace:
            def block_wrap(args, block=block):
                return {"img": block(args["img"], vec=args["vec"], pe=args["pe"], attn_mask=args.get("attn_mask"),
                                     transformer_options=args.get("transformer_options"))}
            img = blocks_replace[("single_block", i)]({"img": img, "vec": block_vec, "pe": pe, "attn_mask": attn_mask,
                                                       "transformer_options": transformer_options}, {"original_block": block_wrap})["img"]
        else:
            img = block(img, vec=block_vec, pe=pe, attn_mask=attn_mask, transformer_options=transformer_options)
        if control is not None:
            residuals = control.get("output")
            if i < len(residuals) and residuals[i] is not None:
                img[:, txt.shape[1]: txt.shape[1] + residuals[i].shape[1], ...] += residuals[i]
    return img[:, txt.shape[1]:, ...]


def image_ids(batch, h_len, w_len, device, index=0, h_offset=0, w_offset=0):
    ids = torch.zeros((h_len, w_len, 3), device=device, dtype=torch.float32)
    ids[:, :, 0] = index
    ids[:, :, 1] = torch.linspace(h_offset, h_len - 1 + h_offset, steps=h_len, device=device).unsqueeze(1)
    ids[:, :, 2] = torch.linspace(w_offset, w_len - 1 + w_offset, steps=w_len, device=device).unsqueeze(0)
    return repeat(ids, "h w c -> b (h w) c", b=batch)


class IntegratedFluxTransformer2DModel(nn.Module):
    def __init__(self, in_channels, out_channels, vec_in_dim, context_in_dim, hidden_size, mlp_ratio, num_heads, depth,
                 depth_single_blocks, axes_dim, theta, patch_size, qkv_bias, guidance_embed, **variants):
        super().__init__()
        if hidden_size % num_heads or sum(axes_dim) != hidden_size // num_heads:
            raise ValueError(f"hidden size {hidden_size}, heads {num_heads} and rope axes {axes_dim} do not fit")
        self.guidance_embed, self.patch_size = guidance_embed, patch_size
        self.in_channels = in_channels * patch_size * patch_size
        self.out_channels = out_channels * patch_size * patch_size
        self.axes_dim, self.hidden_size, self.num_heads = axes_dim, hidden_size, num_heads
        self.pe_embedder = EmbedND(dim=hidden_size // num_heads, theta=theta, axes_dim=axes_dim)
        self.img_in = nn.Linear(self.in_channels, hidden_size, bias=True)
        self.time_in = MLPEmbedder(256, hidden_size)
        if vec_in_dim is not None:
            self.vec_in_dim = vec_in_dim
            self.vector_in = MLPEmbedder(vec_in_dim, hidden_size)
        self.guidance_in = MLPEmbedder(256, hidden_size) if guidance_embed else nn.Identity()
        self.txt_in = nn.Linear(context_in_dim, hidden_size, bias=True)
        self.double_blocks = nn.ModuleList([DoubleStreamBlock(hidden_size, num_heads, mlp_ratio, qkv_bias=qkv_bias) for _ in range(depth)])
        self.single_blocks = nn.ModuleList([SingleStreamBlock(hidden_size, num_heads, mlp_ratio) for _ in range(depth_single_blocks)])
        self.final_layer = LastLayer(hidden_size, 1, self.out_channels)

    def forward_orig(self, img, img_ids, txt, txt_ids, timesteps, y, guidance=None, control=None, transformer_options={}, attn_mask=None):
        patches = transformer_options.get("patches", {})
        img = self.img_in(img)
        vec = self.time_in(timestep_embedding(timesteps, 256).to(img.dtype))
        if self.guidance_embed and guidance is not None:
            vec = vec + self.guidance_in(timestep_embedding(guidance, 256).to(img.dtype))
        if hasattr(self, "vec_in_dim"):
            if y is None:
                y = torch.zeros((img.shape[0], self.vec_in_dim), device=img.device, dtype=img.dtype)
            vec = vec + self.vector_in(y[:, : self.vec_in_dim])
        txt = self.txt_in(txt)
        for patch in patches.get("post_input", []):
            out = patch({"img": img, "txt": txt, "img_ids": img_ids, "txt_ids": txt_ids})
            img, txt, img_ids, txt_ids = out["img"], out["txt"], out["img_ids"], out["txt_ids"]
        pe = self.pe_embedder(torch.cat((txt_ids, img_ids), dim=1)) if img_ids is not None else None
        img = run_blocks(self, img, txt, vec, vec, pe, attn_mask, control, transformer_options)
        return self.final_layer(img, vec)

    def process_img(self, x, index=0, h_offset=0, w_offset=0):
        batch, _, h, w = x.shape
        ps = self.patch_size
        img = rearrange(pad_to_patch_size(x, (ps, ps)), "b c (h ph) (w pw) -> b (h w) (c ph pw)", ph=ps, pw=ps)
        h_len, w_len = (h + ps // 2) // ps, (w + ps // 2) // ps
        return img, image_ids(batch, h_len, w_len, x.device, index, (h_offset + ps // 2) // ps, (w_offset + ps // 2) // ps)

    def forward(self, x, timestep, context, y=None, guidance=None, ref_latents=None, control=None, transformer_options={}, **kwargs):
        batch, _, h_orig, w_orig = x.shape
        ps = self.patch_size
        h_len, w_len = (h_orig + ps // 2) // ps, (w_orig + ps // 2) // ps
        img, img_ids = self.process_img(x)
        img_tokens = img.shape[1]
        ref_latents = ref_latents or dynamic_args.ref_latents
        h = w = 0
        for ref in ref_latents or []:  # the "offset" method: each reference beside the last, index 1
            h_offset = w_offset = 0
            if ref.shape[-2] + h > ref.shape[-1] + w:
                w_offset = w
            else:
                h_offset = h
            h, w = max(h, ref.shape[-2] + h_offset), max(w, ref.shape[-1] + w_offset)
            kontext, kontext_ids = self.process_img(ref.to(x), index=1, h_offset=h_offset, w_offset=w_offset)
            img = torch.cat([img, kontext.expand(img.shape[0], *kontext.shape[1:])], dim=1)
            img_ids = torch.cat([img_ids, kontext_ids.expand(img_ids.shape[0], *kontext_ids.shape[1:])], dim=1)
        txt_ids = torch.zeros((batch, context.shape[1], len(self.axes_dim)), device=x.device, dtype=torch.float32)
        out = self.forward_orig(img, img_ids, context, txt_ids, timestep, y, guidance, control, transformer_options,
                                attn_mask=kwargs.get("attention_mask", None))
        out = out[:, :img_tokens]
        return rearrange(out, "b (h w) (c ph pw) -> b c (h ph) (w pw)", h=h_len, w=w_len, ph=ps, pw=ps)[:, :, :h_orig, :w_orig]
