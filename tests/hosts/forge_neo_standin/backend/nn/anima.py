# Stand-in for Forge Neo backend/nn/anima.py (exo101/sd-webui-forge-neo-v3 5692d2d,
# webui/backend/nn/anima.py:1-432; ComfyUI's comfy/ldm/cosmos/predict2.py, NVIDIA's Cosmos-Predict2
# MiniTrainDIT), the diffusion transformer of Anima. Written here for the tests.
#
# Kept faithful, because ASAG depends on it:
# - SelfCrossAttention (:98-152): q/k/v projections, RMS q/k norms over each head, rope on the
#   self-attention only (comfy_kitchen's `apply_rope_split_half`, the real kernel), then
#   `torch_attention_op` calls this module's global `attention_function(q, k, v, heads,
#   skip_reshape=True, transformer_options=...)` with q, k, v as (batch, heads, tokens, dim) for
#   the self-attention AND the cross-attention alike, not told which block or which of the two runs;
# - Block.forward (:275-367): adaLN-LoRA modulation, then self-attention over the image tokens
#   alone, cross-attention to the context, MLP, each gated into the residual, called as
#   `block(x, t_emb, context, rope_emb_L_1_1_D=..., adaln_lora_B_T_3D=..., extra_per_block_pos_emb=None,
#   transformer_options=...)` with x of shape (batch, T, H, W, dim);
# - Anima.forward (:404-432): Kontext-style reference latents from `dynamic_args` appended along
#   T, the padding-mask channel, patchify, the rope with its float16 frequencies, the residual
#   kept in float32 under float16 compute, final layer, unpatchify.
# Simplified: a given padding mask (Neo's engine passes none; the real one resizes it with
# torchvision), the text adapter (LLMAdapter, which Neo runs in the text encoder).
import math

import comfy_kitchen as ck
import torch
from einops import rearrange, repeat
from torch import nn

from backend.args import dynamic_args
from backend.attention import attention_function
from backend.utils import pad_to_patch_size


class VideoRopePosition3DEmb(nn.Module):
    def __init__(self, head_dim, h_extrapolation_ratio, w_extrapolation_ratio, t_extrapolation_ratio):
        super().__init__()
        self.dim_h = self.dim_w = head_dim // 6 * 2
        self.dim_t = head_dim - 2 * self.dim_h
        self.register_buffer("dim_spatial_range", torch.arange(0, self.dim_h, 2)[: self.dim_h // 2].float() / self.dim_h, persistent=False)
        self.register_buffer("dim_temporal_range", torch.arange(0, self.dim_t, 2)[: self.dim_t // 2].float() / self.dim_t, persistent=False)
        self.h_ntk_factor = h_extrapolation_ratio ** (self.dim_h / (self.dim_h - 2))
        self.w_ntk_factor = w_extrapolation_ratio ** (self.dim_w / (self.dim_w - 2))
        self.t_ntk_factor = t_extrapolation_ratio ** (self.dim_t / (self.dim_t - 2))

    def forward(self, x_B_T_H_W_C, device):
        _, T, H, W, _ = x_B_T_H_W_C.shape

        def rotations(positions, ntk_factor, exponents):
            # Neo raises the theta to exponents cast to float16 (anima.py:58-60), kept.
            freqs = 1.0 / ((10000.0 * ntk_factor) ** exponents.to(dtype=torch.float16, device=device))
            angles = torch.outer(torch.arange(positions, dtype=torch.float, device=device), freqs)
            return torch.stack([angles.cos(), -angles.sin(), angles.sin(), angles.cos()], dim=-1)

        t = rotations(T, self.t_ntk_factor, self.dim_temporal_range)
        h = rotations(H, self.h_ntk_factor, self.dim_spatial_range)
        w = rotations(W, self.w_ntk_factor, self.dim_spatial_range)
        grid = torch.cat([repeat(t, "t d x -> t h w d x", h=H, w=W), repeat(h, "h d x -> t h w d x", t=T, w=W),
                          repeat(w, "w d x -> t h w d x", t=T, h=H)], dim=-2)
        return rearrange(grid, "t h w d (i j) -> (t h w) d i j", i=2, j=2).float()


class GPT2FeedForward(nn.Module):
    def __init__(self, d_model, d_ff):
        super().__init__()
        self.activation = nn.GELU()
        self.layer1 = nn.Linear(d_model, d_ff, bias=False)
        self.layer2 = nn.Linear(d_ff, d_model, bias=False)

    def forward(self, x):
        return self.layer2(self.activation(self.layer1(x)))


class SelfCrossAttention(nn.Module):
    def __init__(self, query_dim, context_dim=None, n_heads=8, head_dim=64):
        super().__init__()
        self.is_SelfAttn = context_dim is None
        inner_dim = head_dim * n_heads
        self.n_heads, self.head_dim = n_heads, head_dim
        self.context_dim = context_dim or query_dim
        self.q_proj = nn.Linear(query_dim, inner_dim, bias=False)
        self.q_norm = nn.RMSNorm(head_dim, eps=1e-6)
        self.k_proj = nn.Linear(self.context_dim, inner_dim, bias=False)
        self.k_norm = nn.RMSNorm(head_dim, eps=1e-6)
        self.v_proj = nn.Linear(self.context_dim, inner_dim, bias=False)
        self.v_norm = nn.Identity()
        self.output_proj = nn.Linear(inner_dim, query_dim, bias=False)
        self.output_dropout = nn.Identity()

    def compute_qkv(self, x, context=None, rope_emb=None):
        source = x if context is None else context
        q, k, v = (rearrange(t, "b ... (h d) -> b ... h d", h=self.n_heads, d=self.head_dim)
                   for t in (self.q_proj(x), self.k_proj(source), self.v_proj(source)))
        q, k, v = self.q_norm(q), self.k_norm(k), self.v_norm(v)
        if self.is_SelfAttn and rope_emb is not None:
            q, k = ck.apply_rope_split_half(q, k, rope_emb)
        return q, k, v

    @staticmethod
    def torch_attention_op(q_B_S_H_D, k_B_S_H_D, v_B_S_H_D, transformer_options={}):
        q, k, v = (rearrange(t, "b s h d -> b h s d") for t in (q_B_S_H_D, k_B_S_H_D, v_B_S_H_D))
        return attention_function(q, k, v, q_B_S_H_D.shape[-2], skip_reshape=True, transformer_options=transformer_options)

    def compute_attention(self, q, k, v, transformer_options={}):
        return self.output_dropout(self.output_proj(self.torch_attention_op(q, k, v, transformer_options=transformer_options)))

    def forward(self, x, context=None, rope_emb=None, transformer_options={}):
        q, k, v = self.compute_qkv(x, context, rope_emb=rope_emb)
        return self.compute_attention(q, k, v, transformer_options=transformer_options)


class Timesteps(nn.Module):
    def __init__(self, num_channels):
        super().__init__()
        self.num_channels = num_channels

    def forward(self, timesteps_B_T):
        half = self.num_channels // 2
        exponent = -math.log(10000) * torch.arange(half, dtype=torch.float32, device=timesteps_B_T.device) / half
        angles = timesteps_B_T.flatten().float()[:, None] * torch.exp(exponent)[None, :]
        emb = torch.cat([angles.cos(), angles.sin()], dim=-1)
        return rearrange(emb, "(b t) d -> b t d", b=timesteps_B_T.shape[0], t=timesteps_B_T.shape[1])


class TimestepEmbedding(nn.Module):
    def __init__(self, in_features, out_features):
        super().__init__()
        self.linear_1 = nn.Linear(in_features, out_features, bias=False)
        self.activation = nn.SiLU()
        self.linear_2 = nn.Linear(out_features, 3 * out_features, bias=False)

    def forward(self, sample):
        return sample, self.linear_2(self.activation(self.linear_1(sample)))


class PatchEmbed(nn.Module):
    def __init__(self, spatial_patch_size, temporal_patch_size, in_channels, out_channels):
        super().__init__()
        self.spatial_patch_size, self.temporal_patch_size = spatial_patch_size, temporal_patch_size
        self.proj = nn.Sequential(nn.Identity(), nn.Linear(in_channels * spatial_patch_size ** 2 * temporal_patch_size, out_channels, bias=False))

    def forward(self, x):
        x = rearrange(x, "b c (t r) (h m) (w n) -> b t h w (c r m n)", r=self.temporal_patch_size, m=self.spatial_patch_size,
                      n=self.spatial_patch_size)
        return self.proj(x)


def _modulated(x, norm, scale, shift):
    return norm(x) * (1 + scale) + shift


def _adaln(hidden, lora_dim, chunks):
    return nn.Sequential(nn.SiLU(), nn.Linear(hidden, lora_dim, bias=False), nn.Linear(lora_dim, chunks * hidden, bias=False))


class FinalLayer(nn.Module):
    def __init__(self, hidden_size, spatial_patch_size, temporal_patch_size, out_channels, adaln_lora_dim=256):
        super().__init__()
        self.layer_norm = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, spatial_patch_size ** 2 * temporal_patch_size * out_channels, bias=False)
        self.hidden_size = hidden_size
        self.adaln_modulation = _adaln(hidden_size, adaln_lora_dim, 2)

    def forward(self, x_B_T_H_W_D, emb_B_T_D, adaln_lora_B_T_3D=None):
        shift, scale = (self.adaln_modulation(emb_B_T_D) + adaln_lora_B_T_3D[:, :, : 2 * self.hidden_size]).chunk(2, dim=-1)
        shift, scale = (rearrange(t, "b t d -> b t 1 1 d") for t in (shift, scale))
        return self.linear(_modulated(x_B_T_H_W_D, self.layer_norm, scale, shift))


class Block(nn.Module):
    def __init__(self, x_dim, context_dim, num_heads, mlp_ratio=4.0, adaln_lora_dim=256):
        super().__init__()
        self.x_dim = x_dim
        self.layer_norm_self_attn = nn.LayerNorm(x_dim, elementwise_affine=False, eps=1e-6)
        self.self_attn = SelfCrossAttention(x_dim, None, num_heads, x_dim // num_heads)
        self.layer_norm_cross_attn = nn.LayerNorm(x_dim, elementwise_affine=False, eps=1e-6)
        self.cross_attn = SelfCrossAttention(x_dim, context_dim, num_heads, x_dim // num_heads)
        self.layer_norm_mlp = nn.LayerNorm(x_dim, elementwise_affine=False, eps=1e-6)
        self.mlp = GPT2FeedForward(x_dim, int(x_dim * mlp_ratio))
        self.adaln_modulation_self_attn = _adaln(x_dim, adaln_lora_dim, 3)
        self.adaln_modulation_cross_attn = _adaln(x_dim, adaln_lora_dim, 3)
        self.adaln_modulation_mlp = _adaln(x_dim, adaln_lora_dim, 3)

    def forward(self, x_B_T_H_W_D, emb_B_T_D, crossattn_emb, rope_emb_L_1_1_D=None, adaln_lora_B_T_3D=None,
                extra_per_block_pos_emb=None, transformer_options={}):
        residual_dtype, compute_dtype = x_B_T_H_W_D.dtype, emb_B_T_D.dtype
        if extra_per_block_pos_emb is not None:
            x_B_T_H_W_D = x_B_T_H_W_D + extra_per_block_pos_emb
        _, T, H, W, _ = x_B_T_H_W_D.shape

        def modulation(adaln):
            return (rearrange(t, "b t d -> b t 1 1 d") for t in (adaln(emb_B_T_D) + adaln_lora_B_T_3D).chunk(3, dim=-1))

        def tokens(attention, normalized, context):
            out = attention(rearrange(normalized.to(compute_dtype), "b t h w d -> b (t h w) d"), context, rope_emb=rope_emb_L_1_1_D,
                            transformer_options=transformer_options)
            return rearrange(out, "b (t h w) d -> b t h w d", t=T, h=H, w=W)

        shift, scale, gate = modulation(self.adaln_modulation_self_attn)
        result = tokens(self.self_attn, _modulated(x_B_T_H_W_D, self.layer_norm_self_attn, scale, shift), None)
        x_B_T_H_W_D = torch.addcmul(x_B_T_H_W_D, gate.to(residual_dtype), result.to(residual_dtype))
        shift, scale, gate = modulation(self.adaln_modulation_cross_attn)
        result = tokens(self.cross_attn, _modulated(x_B_T_H_W_D, self.layer_norm_cross_attn, scale, shift), crossattn_emb)
        x_B_T_H_W_D = torch.addcmul(x_B_T_H_W_D, gate.to(residual_dtype), result.to(residual_dtype))
        shift, scale, gate = modulation(self.adaln_modulation_mlp)
        result = self.mlp(_modulated(x_B_T_H_W_D, self.layer_norm_mlp, scale, shift).to(compute_dtype))
        return torch.addcmul(x_B_T_H_W_D, gate.to(residual_dtype), result.to(residual_dtype))


class Anima(nn.Module):
    def __init__(self, in_channels, out_channels, patch_spatial, patch_temporal, model_channels=768, concat_padding_mask=True,
                 crossattn_emb_channels=1024, adaln_lora_dim=256, num_blocks=10, num_heads=16, rope_h_extrapolation_ratio=1.0,
                 rope_w_extrapolation_ratio=1.0, rope_t_extrapolation_ratio=1.0, mlp_ratio=4.0):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.patch_spatial, self.patch_temporal = patch_spatial, patch_temporal
        self.pos_embedder = VideoRopePosition3DEmb(model_channels // num_heads, rope_h_extrapolation_ratio, rope_w_extrapolation_ratio,
                                                   rope_t_extrapolation_ratio)
        self.t_embedder = nn.Sequential(Timesteps(model_channels), TimestepEmbedding(model_channels, model_channels))
        self.x_embedder = PatchEmbed(patch_spatial, patch_temporal, in_channels + 1 if concat_padding_mask else in_channels, model_channels)
        self.blocks = nn.ModuleList([Block(model_channels, crossattn_emb_channels, num_heads, mlp_ratio, adaln_lora_dim) for _ in range(num_blocks)])
        self.final_layer = FinalLayer(model_channels, patch_spatial, patch_temporal, out_channels, adaln_lora_dim)
        self.t_embedding_norm = nn.RMSNorm(model_channels, eps=1e-6)

    def prepare_embedded_sequence(self, x_B_C_T_H_W):
        padding_mask = torch.zeros(x_B_C_T_H_W.shape[0], 1, x_B_C_T_H_W.shape[3], x_B_C_T_H_W.shape[4], dtype=x_B_C_T_H_W.dtype,
                                   device=x_B_C_T_H_W.device)
        x_B_C_T_H_W = torch.cat([x_B_C_T_H_W, padding_mask.unsqueeze(1).repeat(1, 1, x_B_C_T_H_W.shape[2], 1, 1)], dim=1)
        x_B_T_H_W_D = self.x_embedder(x_B_C_T_H_W)
        return x_B_T_H_W_D, self.pos_embedder(x_B_T_H_W_D, device=x_B_C_T_H_W.device)

    def unpatchify(self, x_B_T_H_W_M):
        return rearrange(x_B_T_H_W_M, "B T H W (p1 p2 t C) -> B C (T t) (H p1) (W p2)", p1=self.patch_spatial, p2=self.patch_spatial,
                         t=self.patch_temporal)

    def forward(self, x, timesteps, context, padding_mask=None, **kwargs):
        orig_shape = list(x.shape)
        for ref in dynamic_args.ref_latents:
            if x.shape[0] == 2:  # Neo's own test for a batched cond and uncond
                ref = torch.cat((ref, ref), dim=0)
            x = torch.cat((x, ref.to(x)), dim=2)
        x = pad_to_patch_size(x, (self.patch_temporal, self.patch_spatial, self.patch_spatial))
        x_B_T_H_W_D, rope_emb_L_1_1_D = self.prepare_embedded_sequence(x)
        timesteps_B_T = timesteps.unsqueeze(1) if timesteps.ndim == 1 else timesteps
        t_embedding_B_T_D, adaln_lora_B_T_3D = self.t_embedder[1](self.t_embedder[0](timesteps_B_T).to(x_B_T_H_W_D.dtype))
        t_embedding_B_T_D = self.t_embedding_norm(t_embedding_B_T_D)
        block_kwargs = {"rope_emb_L_1_1_D": rope_emb_L_1_1_D.unsqueeze(1).unsqueeze(0), "adaln_lora_B_T_3D": adaln_lora_B_T_3D,
                        "extra_per_block_pos_emb": None, "transformer_options": kwargs.get("transformer_options", {})}
        if x_B_T_H_W_D.dtype is torch.float16:  # the residual stream in float32 under float16 compute
            x_B_T_H_W_D = x_B_T_H_W_D.float()
        for block in self.blocks:
            x_B_T_H_W_D = block(x_B_T_H_W_D, t_embedding_B_T_D, context, **block_kwargs)
        x_B_T_H_W_O = self.final_layer(x_B_T_H_W_D.to(context.dtype), t_embedding_B_T_D, adaln_lora_B_T_3D=adaln_lora_B_T_3D)
        return self.unpatchify(x_B_T_H_W_O)[:, :, : orig_shape[-3], : orig_shape[-2], : orig_shape[-1]]
