# Stand-in for Forge Neo backend/nn/lumina.py (exo101/sd-webui-forge-neo-v3 5692d2d,
# webui/backend/nn/lumina.py; ComfyUI v0.3.77's comfy/ldm/lumina/model.py), NextDiT: Lumina 2 and,
# with `z_image_modulation` and `pad_tokens_multiple`, Z-Image. Written here for the tests; with
# Z-Image's settings it computes what diffusers' ZImageTransformer2DModel computes (negated, as
# Neo's model is), which tests/hosts/test_forge_dit.py checks.
#
# Kept faithful, because ASAG depends on it:
# - JointAttention.forward (:70-97): fused qkv, RMS q/k norms, rope by flux's `apply_rope` (the real
#   comfy_kitchen kernel), then this module's global `attention_function(q, k, v, heads, x_mask,
#   skip_reshape=True, transformer_options=...)` with the mask POSITIONAL and q, k, v as
#   (batch, heads, tokens, dim); the attention is not told which block runs;
# - JointTransformerBlock (:118-189): adaLN modulation (tanh gates, Z-Image's from a 256-wide
#   embedding) or none (the context refiner), sandwich RMS norms;
# - patchify_and_embed (:305-343): caption and image padded with learned pad tokens to a
#   multiple (Z-Image), caption positions 1..L, image positions after the caption; the context
#   refiner over the caption alone (with its mask), the noise refiner over the image alone, then
#   the joint sequence cat(caption, image), text first;
# - forward (:345-372): t = 1 - timesteps, the main layers called as
#   `layer(x, mask, freqs_cis, adaln_input, transformer_options=...)`, the output negated.
# Simplified: grouped-query heads (n_kv_heads < n_heads; Neo's models use equal counts), the
# pooled-CLIP variant (clip_text_dim), x given as a list.
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from backend.attention import attention_function
from backend.nn.flux import EmbedND, apply_rope
from backend.utils import fp16_fix as clamp_fp16
from backend.utils import pad_to_patch_size


def modulate(x, scale):
    return x * (1 + scale.unsqueeze(1))


def timestep_embedding(timesteps, dim, max_period=10000):
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half)
    args = timesteps[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class TimestepEmbedder(nn.Module):
    def __init__(self, hidden_size, frequency_embedding_size=256, output_size=None):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(frequency_embedding_size, hidden_size, bias=True), nn.SiLU(),
                                 nn.Linear(hidden_size, output_size or hidden_size, bias=True))
        self.frequency_embedding_size = frequency_embedding_size

    def forward(self, t, dtype, **kwargs):
        return self.mlp(timestep_embedding(t, self.frequency_embedding_size).to(dtype))


class JointAttention(nn.Module):
    def __init__(self, dim, n_heads, n_kv_heads, qk_norm, out_bias=False):
        super().__init__()
        self.n_local_heads = self.n_local_kv_heads = n_heads
        self.head_dim = dim // n_heads
        self.qkv = nn.Linear(dim, 3 * n_heads * self.head_dim, bias=False)
        self.out = nn.Linear(n_heads * self.head_dim, dim, bias=out_bias)
        if qk_norm:
            self.q_norm = nn.RMSNorm(self.head_dim, elementwise_affine=True)
            self.k_norm = nn.RMSNorm(self.head_dim, elementwise_affine=True)
        else:
            self.q_norm = self.k_norm = nn.Identity()

    def forward(self, x, x_mask, freqs_cis, transformer_options={}):
        batch, tokens, _ = x.shape
        xq, xk, xv = (t.view(batch, tokens, self.n_local_heads, self.head_dim) for t in self.qkv(x).chunk(3, dim=-1))
        xq, xk = apply_rope(self.q_norm(xq), self.k_norm(xk), freqs_cis)
        output = attention_function(xq.movedim(1, 2), xk.movedim(1, 2), xv.movedim(1, 2), self.n_local_heads, x_mask,
                                    skip_reshape=True, transformer_options=transformer_options)
        return self.out(output)


class FeedForward(nn.Module):
    def __init__(self, dim, hidden_dim, multiple_of, ffn_dim_multiplier):
        super().__init__()
        if ffn_dim_multiplier is not None:
            hidden_dim = int(ffn_dim_multiplier * hidden_dim)
        hidden_dim = multiple_of * ((hidden_dim + multiple_of - 1) // multiple_of)
        self.w1 = nn.Linear(dim, hidden_dim, bias=False)
        self.w2 = nn.Linear(hidden_dim, dim, bias=False)
        self.w3 = nn.Linear(dim, hidden_dim, bias=False)

    def forward(self, x):
        return self.w2(clamp_fp16(F.silu(self.w1(x)) * self.w3(x)))


class JointTransformerBlock(nn.Module):
    def __init__(self, layer_id, dim, n_heads, n_kv_heads, multiple_of, ffn_dim_multiplier, norm_eps, qk_norm, modulation=True,
                 z_image_modulation=False):
        super().__init__()
        self.layer_id, self.dim = layer_id, dim
        self.attention = JointAttention(dim, n_heads, n_kv_heads, qk_norm)
        self.feed_forward = FeedForward(dim, dim, multiple_of, ffn_dim_multiplier)
        for name in ("attention_norm1", "ffn_norm1", "attention_norm2", "ffn_norm2"):
            setattr(self, name, nn.RMSNorm(dim, eps=norm_eps, elementwise_affine=True))
        self.modulation = modulation
        if modulation:
            width = min(dim, 256) if z_image_modulation else min(dim, 1024)
            layers = [nn.Linear(width, 4 * dim, bias=True)] if z_image_modulation else [nn.SiLU(), nn.Linear(width, 4 * dim, bias=True)]
            self.adaLN_modulation = nn.Sequential(*layers)

    def forward(self, x, x_mask, freqs_cis, adaln_input=None, transformer_options={}):
        if self.modulation:
            scale_msa, gate_msa, scale_mlp, gate_mlp = self.adaLN_modulation(adaln_input).chunk(4, dim=1)
            attended = self.attention(modulate(self.attention_norm1(x), scale_msa), x_mask, freqs_cis, transformer_options=transformer_options)
            x = x + gate_msa.unsqueeze(1).tanh() * self.attention_norm2(clamp_fp16(attended))
            return x + gate_mlp.unsqueeze(1).tanh() * self.ffn_norm2(clamp_fp16(self.feed_forward(modulate(self.ffn_norm1(x), scale_mlp))))
        attended = self.attention(self.attention_norm1(x), x_mask, freqs_cis, transformer_options=transformer_options)
        x = x + self.attention_norm2(clamp_fp16(attended))
        return x + self.ffn_norm2(self.feed_forward(self.ffn_norm1(x)))


class FinalLayer(nn.Module):
    def __init__(self, hidden_size, patch_size, out_channels, z_image_modulation=False):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels, bias=True)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(min(hidden_size, 256 if z_image_modulation else 1024), hidden_size, bias=True))

    def forward(self, x, c):
        return self.linear(modulate(self.norm_final(x), self.adaLN_modulation(c)))


class NextDiT(nn.Module):
    def __init__(self, patch_size=2, in_channels=4, dim=4096, n_layers=32, n_refiner_layers=2, n_heads=32, n_kv_heads=None,
                 multiple_of=256, ffn_dim_multiplier=4.0, norm_eps=1e-5, qk_norm=False, cap_feat_dim=5120, axes_dims=(16, 56, 56),
                 axes_lens=(1, 512, 512), rope_theta=10000.0, z_image_modulation=False, time_scale=1.0, pad_tokens_multiple=None):
        super().__init__()
        self.in_channels = self.out_channels = in_channels
        self.patch_size, self.time_scale, self.pad_tokens_multiple = patch_size, time_scale, pad_tokens_multiple
        self.x_embedder = nn.Linear(patch_size * patch_size * in_channels, dim, bias=True)

        def blocks(count, **kwargs):
            return nn.ModuleList([JointTransformerBlock(i, dim, n_heads, n_kv_heads, multiple_of, ffn_dim_multiplier, norm_eps, qk_norm, **kwargs)
                                  for i in range(count)])

        self.noise_refiner = blocks(n_refiner_layers, modulation=True, z_image_modulation=z_image_modulation)
        self.context_refiner = blocks(n_refiner_layers, modulation=False)
        self.t_embedder = TimestepEmbedder(min(dim, 1024), output_size=256 if z_image_modulation else None)
        self.cap_embedder = nn.Sequential(nn.RMSNorm(cap_feat_dim, eps=norm_eps, elementwise_affine=True), nn.Linear(cap_feat_dim, dim, bias=True))
        self.layers = blocks(n_layers, z_image_modulation=z_image_modulation)
        self.final_layer = FinalLayer(dim, patch_size, self.out_channels, z_image_modulation=z_image_modulation)
        if pad_tokens_multiple is not None:
            self.x_pad_token = nn.Parameter(torch.randn((1, dim)))
            self.cap_pad_token = nn.Parameter(torch.randn((1, dim)))
        assert dim // n_heads == sum(axes_dims)
        self.axes_dims, self.axes_lens = axes_dims, axes_lens
        self.rope_embedder = EmbedND(dim=dim // n_heads, theta=rope_theta, axes_dim=axes_dims)
        self.dim, self.n_heads = dim, n_heads

    def _padded(self, tokens, pad_token):
        if self.pad_tokens_multiple is None:
            return tokens
        extra = (-tokens.shape[1]) % self.pad_tokens_multiple
        return torch.cat((tokens, pad_token.to(tokens).unsqueeze(0).repeat(tokens.shape[0], extra, 1)), dim=1)

    def patchify_and_embed(self, x, cap_feats, cap_mask, t, num_tokens, transformer_options={}):
        batch, channels, height, width = x.shape
        ps = self.patch_size
        cap_feats = self._padded(cap_feats, getattr(self, "cap_pad_token", None))
        cap_ids = torch.zeros(batch, cap_feats.shape[1], 3, dtype=torch.float32, device=x.device)
        cap_ids[:, :, 0] = torch.arange(cap_feats.shape[1], dtype=torch.float32, device=x.device) + 1.0
        x = self.x_embedder(x.view(batch, channels, height // ps, ps, width // ps, ps).permute(0, 2, 4, 3, 5, 1).flatten(3).flatten(1, 2))
        h_tokens, w_tokens = height // ps, width // ps
        x_ids = torch.zeros((batch, x.shape[1], 3), dtype=torch.float32, device=x.device)
        x_ids[:, :, 0] = cap_feats.shape[1] + 1
        x_ids[:, :, 1] = torch.arange(h_tokens, dtype=torch.float32, device=x.device).view(-1, 1).repeat(1, w_tokens).flatten()
        x_ids[:, :, 2] = torch.arange(w_tokens, dtype=torch.float32, device=x.device).view(1, -1).repeat(h_tokens, 1).flatten()
        if self.pad_tokens_multiple is not None:
            padded = self._padded(x, self.x_pad_token)
            x_ids = F.pad(x_ids, (0, 0, 0, padded.shape[1] - x.shape[1]))
            x = padded
        freqs_cis = self.rope_embedder(torch.cat((cap_ids, x_ids), dim=1)).movedim(1, 2).to(x.dtype)
        for layer in self.context_refiner:
            cap_feats = layer(cap_feats, cap_mask, freqs_cis[:, : cap_ids.shape[1]], transformer_options=transformer_options)
        for layer in self.noise_refiner:
            x = layer(x, None, freqs_cis[:, cap_ids.shape[1]:], t, transformer_options=transformer_options)
        return torch.cat((cap_feats, x), dim=1), None, [(height, width)] * batch, [cap_feats.shape[1]] * batch, freqs_cis

    def unpatchify(self, x, img_size, cap_size):
        ps = self.patch_size
        images = []
        for i in range(x.size(0)):
            height, width = img_size[i]
            begin = cap_size[i]
            end = begin + (height // ps) * (width // ps)
            images.append(x[i][begin:end].view(height // ps, width // ps, ps, ps, self.out_channels).permute(4, 0, 2, 1, 3).flatten(3, 4).flatten(1, 2))
        return torch.stack(images, dim=0)

    def forward(self, x, timesteps, context, num_tokens=None, attention_mask=None, transformer_options={}, **kwargs):
        t = 1.0 - timesteps
        _, _, h, w = x.shape
        x = pad_to_patch_size(x, (self.patch_size, self.patch_size))
        adaln_input = t = self.t_embedder(t * self.time_scale, dtype=x.dtype)
        cap_feats = self.cap_embedder(context)
        x, mask, img_size, cap_size, freqs_cis = self.patchify_and_embed(x, cap_feats, attention_mask, t, num_tokens, transformer_options)
        for layer in self.layers:
            x = layer(x, mask, freqs_cis, adaln_input, transformer_options=transformer_options)
        x = self.final_layer(x, adaln_input)
        return -self.unpatchify(x, img_size, cap_size)[:, :, :h, :w]
