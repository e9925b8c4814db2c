# Stand-in for Comfy-Org/ComfyUI comfy/ldm/lumina/model.py at a125cd84b054a57729b5eecab930ca9408719832
# (Lumina 2), and, with NAMES_BLOCKS set, as Comfy-Org/ComfyUI 617048a59f17d98b0b4b9f36e75dd5aafced0c2b
# has it (after PR #11227; Z-Image's pad_tokens_multiple): the main layers named (total_blocks,
# block_type "double", block_index), the refiners not, the caption kept whole (padded to the
# multiple) and the noise refiner called without a mask.
# Kept faithful, because ASAG depends on it:
# - JointAttention.forward (:102-144): fused qkv, RMS q/k norms, rope, then
#   optimized_attention_masked(q, k, v, heads, x_mask, skip_reshape=True, transformer_options=) with
#   the mask POSITIONAL and q, k, v as (batch, heads, tokens, dim); the attention is not told which
#   block runs (no dit replacement, no patches at a125cd84);
# - JointTransformerBlock.forward(x, x_mask, freqs_cis, adaln_input=None, transformer_options=):
#   adaLN modulation (tanh gates) or none (the caption refiner);
# - the order of the blocks: 2 context_refiner blocks over the caption alone, 2 noise_refiner
#   blocks over the image alone (at a125cd84 with its padding mask, all zeros for one image size),
#   then the layers over cat(caption, image), the caption first; at a125cd84 the caption's length
#   in the joint sequence is the model call's num_tokens;
# - forward(x, timesteps, context, num_tokens, attention_mask=None, **kwargs) with DIFFUSION_MODEL
#   wrappers from kwargs["transformer_options"]; t = 1 - timesteps; the output negated.
# Simplified: one image size per batch (no per-row lengths), no caption mask, equal q and kv heads,
# Flux's rope and time embedding.
import torch
from torch import nn

import comfy.patcher_extension
from comfy.ldm.flux.layers import EmbedND, MLPEmbedder, RMSNorm, timestep_embedding
from comfy.ldm.modules.attention import optimized_attention_masked

NAMES_BLOCKS = False  # True: as Comfy-Org/ComfyUI 617048a5 (see above)


def apply_rotary_emb(x_in, freqs_cis):
    t_ = x_in.reshape(*x_in.shape[:-1], -1, 1, 2)
    return (freqs_cis[..., 0] * t_[..., 0] + freqs_cis[..., 1] * t_[..., 1]).reshape(*x_in.shape)


class JointAttention(nn.Module):
    def __init__(self, dim, n_heads):
        super().__init__()
        self.n_local_heads, self.head_dim = n_heads, dim // n_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.out = nn.Linear(dim, dim, bias=False)
        self.q_norm, self.k_norm = RMSNorm(self.head_dim), RMSNorm(self.head_dim)

    def forward(self, x, x_mask, freqs_cis, transformer_options={}):
        bsz, seqlen, _ = x.shape
        xq, xk, xv = (t.view(bsz, seqlen, self.n_local_heads, self.head_dim) for t in self.qkv(x).chunk(3, dim=-1))
        xq = apply_rotary_emb(self.q_norm(xq), freqs_cis)
        xk = apply_rotary_emb(self.k_norm(xk), freqs_cis)
        output = optimized_attention_masked(xq.movedim(1, 2), xk.movedim(1, 2), xv.movedim(1, 2), self.n_local_heads, x_mask,
                                            skip_reshape=True, transformer_options=transformer_options)
        return self.out(output)


class JointTransformerBlock(nn.Module):
    def __init__(self, layer_id, dim, n_heads, modulation=True):
        super().__init__()
        self.layer_id = layer_id
        self.attention = JointAttention(dim, n_heads)
        self.feed_forward = nn.Sequential(nn.Linear(dim, 2 * dim, bias=False), nn.SiLU(), nn.Linear(2 * dim, dim, bias=False))
        self.attention_norm1, self.ffn_norm1, self.attention_norm2, self.ffn_norm2 = (RMSNorm(dim) for _ in range(4))
        self.modulation = modulation
        if modulation:
            self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(min(dim, 1024), 4 * dim, bias=True))

    def forward(self, x, x_mask, freqs_cis, adaln_input=None, transformer_options={}):
        if self.modulation:
            scale_msa, gate_msa, scale_mlp, gate_mlp = self.adaLN_modulation(adaln_input).chunk(4, dim=1)
            attended = self.attention(self.attention_norm1(x) * (1 + scale_msa.unsqueeze(1)), x_mask, freqs_cis, transformer_options=transformer_options)
            x = x + gate_msa.unsqueeze(1).tanh() * self.attention_norm2(attended)
            return x + gate_mlp.unsqueeze(1).tanh() * self.ffn_norm2(self.feed_forward(self.ffn_norm1(x) * (1 + scale_mlp.unsqueeze(1))))
        x = x + self.attention_norm2(self.attention(self.attention_norm1(x), x_mask, freqs_cis, transformer_options=transformer_options))
        return x + self.ffn_norm2(self.feed_forward(self.ffn_norm1(x)))


class NextDiT(nn.Module):
    def __init__(self, patch_size=2, in_channels=4, dim=4096, n_layers=32, n_refiner_layers=2, n_heads=32, cap_feat_dim=5120,
                 axes_dims=(16, 56, 56), rope_theta=10000.0, pad_tokens_multiple=None, image_model=None, dtype=None, device=None,
                 operations=None, **kwargs):
        super().__init__()
        self.patch_size, self.in_channels, self.out_channels = patch_size, in_channels, in_channels
        self.pad_tokens_multiple = pad_tokens_multiple
        self.x_embedder = nn.Linear(patch_size * patch_size * in_channels, dim, bias=True)
        self.noise_refiner = nn.ModuleList([JointTransformerBlock(i, dim, n_heads) for i in range(n_refiner_layers)])
        self.context_refiner = nn.ModuleList([JointTransformerBlock(i, dim, n_heads, modulation=False) for i in range(n_refiner_layers)])
        self.t_embedder = MLPEmbedder(256, min(dim, 1024))
        self.cap_embedder = nn.Sequential(RMSNorm(cap_feat_dim), nn.Linear(cap_feat_dim, dim, bias=True))
        self.layers = nn.ModuleList([JointTransformerBlock(i, dim, n_heads) for i in range(n_layers)])
        self.final_norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.final_linear = nn.Linear(dim, patch_size * patch_size * self.out_channels, bias=True)
        self.final_modulation = nn.Sequential(nn.SiLU(), nn.Linear(min(dim, 1024), dim, bias=True))
        if pad_tokens_multiple is not None:
            self.x_pad_token = nn.Parameter(torch.randn((1, dim)))
            self.cap_pad_token = nn.Parameter(torch.randn((1, dim)))
        self.rope_embedder = EmbedND(dim=dim // n_heads, theta=rope_theta, axes_dim=list(axes_dims))
        self.dim = dim

    def _padded(self, tokens, pad_token):
        if self.pad_tokens_multiple is None:
            return tokens
        extra = (-tokens.shape[1]) % self.pad_tokens_multiple
        return torch.cat((tokens, pad_token.to(tokens).unsqueeze(0).repeat(tokens.shape[0], extra, 1)), dim=1)

    def forward(self, x, timesteps, context, num_tokens, attention_mask=None, **kwargs):
        return comfy.patcher_extension.WrapperExecutor.new_class_executor(
            self._forward, self,
            comfy.patcher_extension.get_all_wrappers(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, kwargs.get("transformer_options", {})),
        ).execute(x, timesteps, context, num_tokens, attention_mask, **kwargs)

    def _forward(self, x, timesteps, context, num_tokens, attention_mask=None, **kwargs):
        transformer_options = kwargs.get("transformer_options", {})
        bsz, channels, height, width = x.shape
        ps = self.patch_size
        t = self.t_embedder(timestep_embedding(1.0 - timesteps, 256, time_factor=1.0).to(x.dtype))
        cap_feats = self._padded(self.cap_embedder(context), getattr(self, "cap_pad_token", None))
        img = self.x_embedder(x.view(bsz, channels, height // ps, ps, width // ps, ps).permute(0, 2, 4, 3, 5, 1).flatten(3).flatten(1, 2))
        img_len = img.shape[1]
        img = self._padded(img, getattr(self, "x_pad_token", None))
        cap_ids = torch.zeros(bsz, cap_feats.shape[1], 3, device=x.device)
        cap_ids[:, :, 0] = torch.arange(cap_feats.shape[1], dtype=torch.float32, device=x.device)
        img_ids = torch.zeros(bsz, img.shape[1], 3, device=x.device)
        img_ids[:, :, 0] = cap_feats.shape[1]
        rows = torch.arange(img.shape[1], device=x.device)
        img_ids[:, :, 1], img_ids[:, :, 2] = rows // (width // ps), rows % (width // ps)
        cap_freqs, img_freqs = self.rope_embedder(cap_ids).movedim(1, 2), self.rope_embedder(img_ids).movedim(1, 2)
        for layer in self.context_refiner:
            cap_feats = layer(cap_feats, None, cap_freqs, transformer_options=transformer_options)
        if not NAMES_BLOCKS:  # a125cd84: the caption's effective length, and the image's padding mask (zeros for one size)
            cap_feats, cap_freqs = cap_feats[:, :num_tokens], cap_freqs[:, :num_tokens]
        img_mask = None if NAMES_BLOCKS else torch.zeros(bsz, 1, img.shape[1], dtype=x.dtype, device=x.device)
        for layer in self.noise_refiner:
            img = layer(img, img_mask, img_freqs, t, transformer_options=transformer_options)
        joint, freqs = torch.cat((cap_feats, img), dim=1), torch.cat((cap_freqs, img_freqs), dim=1)
        if NAMES_BLOCKS:
            transformer_options["total_blocks"], transformer_options["block_type"] = len(self.layers), "double"
        for i, layer in enumerate(self.layers):
            if NAMES_BLOCKS:
                transformer_options["block_index"] = i
            joint = layer(joint, None, freqs, t, transformer_options=transformer_options)
        out = self.final_linear(self.final_norm(joint) * (1 + self.final_modulation(t).unsqueeze(1)))
        out = out[:, cap_feats.shape[1]: cap_feats.shape[1] + img_len]
        out = out.view(bsz, height // ps, width // ps, ps, ps, self.out_channels).permute(0, 5, 1, 3, 2, 4).flatten(4, 5).flatten(2, 3)
        return -out
