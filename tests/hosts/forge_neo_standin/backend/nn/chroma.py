# Stand-in for Forge Neo backend/nn/chroma.py (exo101/sd-webui-forge-neo-v3 5692d2d,
# webui/backend/nn/chroma.py; ComfyUI v0.10.0's comfy/ldm/chroma), written here for the tests.
# Kept faithful: Flux's block classes imported from backend.nn.flux (so the blocks attend through
# flux's `attention`), built without their own modulation; every block's modulation precomputed
# by the distilled-guidance Approximator from the timestep, the guidance and a modulation index,
# and sliced per block (get_modulations: single 3 per block, then double img 6, double txt 6,
# final 2); no pooled vector; the block loop of forward_orig (shared with the Flux stand-in:
# flux.run_blocks), including the pruned-block lists `skip_mmdit` / `skip_dit`.
# Simplified: Neo fixes the modulation index length at 344 (19 double + 38 single blocks); here it
# is computed from the depths, so small test models work; ControlNet residuals are added as Flux
# adds them (Chroma adds the double blocks' to the whole image stream).
from dataclasses import dataclass

import torch
from einops import rearrange, repeat
from torch import nn

from backend.nn.flux import DoubleStreamBlock, EmbedND, MLPEmbedder, ModulationOut, SingleStreamBlock, run_blocks, timestep_embedding
from backend.utils import pad_to_patch_size


def _modulation(tensor, offset):
    return ModulationOut(shift=tensor[:, offset:offset + 1], scale=tensor[:, offset + 1:offset + 2], gate=tensor[:, offset + 2:offset + 3])


class Approximator(nn.Module):
    def __init__(self, in_dim, out_dim, hidden_dim, n_layers=5):
        super().__init__()
        self.in_proj = nn.Linear(in_dim, hidden_dim, bias=True)
        self.layers = nn.ModuleList([MLPEmbedder(hidden_dim, hidden_dim) for _ in range(n_layers)])
        self.norms = nn.ModuleList([nn.RMSNorm(hidden_dim) for _ in range(n_layers)])
        self.out_proj = nn.Linear(hidden_dim, out_dim)

    def forward(self, x):
        x = self.in_proj(x)
        for layer, norm in zip(self.layers, self.norms):
            x = x + layer(norm(x))
        return self.out_proj(x)


class LastLayer(nn.Module):
    def __init__(self, hidden_size, patch_size, out_channels):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, out_channels, bias=True)

    def forward(self, x, vec):
        shift, scale = (part.squeeze(1) for part in vec)
        return self.linear(torch.addcmul(shift[:, None, :], 1 + scale[:, None, :], self.norm_final(x)))


@dataclass
class ChromaParams:
    in_channels: int
    out_channels: int
    context_in_dim: int
    hidden_size: int
    mlp_ratio: float
    num_heads: int
    depth: int
    depth_single_blocks: int
    axes_dim: list
    theta: int
    patch_size: int
    qkv_bias: bool
    in_dim: int
    out_dim: int
    hidden_dim: int
    n_layers: int


class IntegratedChromaTransformer2DModel(nn.Module):
    def __init__(self, **kwargs):
        super().__init__()
        self.params = params = ChromaParams(**kwargs)
        self.patch_size, self.in_channels, self.out_channels = params.patch_size, params.in_channels, params.out_channels
        self.hidden_size, self.num_heads = params.hidden_size, params.num_heads
        self.pe_embedder = EmbedND(dim=params.hidden_size // params.num_heads, theta=params.theta, axes_dim=params.axes_dim)
        self.img_in = nn.Linear(params.in_channels, params.hidden_size, bias=True)
        self.txt_in = nn.Linear(params.context_in_dim, params.hidden_size)
        self.distilled_guidance_layer = Approximator(params.in_dim, params.out_dim, params.hidden_dim, params.n_layers)
        self.double_blocks = nn.ModuleList([DoubleStreamBlock(params.hidden_size, params.num_heads, params.mlp_ratio, qkv_bias=params.qkv_bias,
                                                              modulation=False) for _ in range(params.depth)])
        self.single_blocks = nn.ModuleList([SingleStreamBlock(params.hidden_size, params.num_heads, params.mlp_ratio, modulation=False)
                                            for _ in range(params.depth_single_blocks)])
        self.final_layer = LastLayer(params.hidden_size, 1, params.out_channels)
        self.skip_mmdit, self.skip_dit = [], []

    def get_modulations(self, tensor, block_type, *, idx=0):
        if block_type == "final":
            return tensor[:, -2:-1, :], tensor[:, -1:, :]
        if block_type == "single":
            return _modulation(tensor, 3 * idx)
        offset = 6 * idx + 3 * self.params.depth_single_blocks + (6 * self.params.depth if block_type == "double_txt" else 0)
        return _modulation(tensor, offset), _modulation(tensor, offset + 3)

    def forward_orig(self, img, img_ids, txt, txt_ids, timesteps, guidance=None, control=None, transformer_options={}, attn_mask=None):
        img = self.img_in(img)
        mod_index_length = 3 * self.params.depth_single_blocks + 12 * self.params.depth + 2
        distill_timestep = timestep_embedding(timesteps.detach().clone(), 16).to(img.device, img.dtype)
        distill_guidance = timestep_embedding(guidance.detach().clone(), 16).to(img.device, img.dtype)
        modulation_index = timestep_embedding(torch.arange(mod_index_length, device=img.device), 32).to(img.device, img.dtype)
        modulation_index = modulation_index.unsqueeze(0).repeat(img.shape[0], 1, 1)
        timestep_guidance = torch.cat([distill_timestep, distill_guidance], dim=1).unsqueeze(1).repeat(1, mod_index_length, 1).to(img.dtype)
        mod_vectors = self.distilled_guidance_layer(torch.cat([timestep_guidance, modulation_index], dim=-1))
        txt = self.txt_in(txt)
        pe = self.pe_embedder(torch.cat((txt_ids, img_ids), dim=1))

        def modulations(kind, i):
            if kind == "single":
                return self.get_modulations(mod_vectors, "single", idx=i)
            return self.get_modulations(mod_vectors, "double_img", idx=i), self.get_modulations(mod_vectors, "double_txt", idx=i)

        img = run_blocks(self, img, txt, None, None, pe, attn_mask, control, transformer_options, modulations)
        return self.final_layer(img, vec=self.get_modulations(mod_vectors, "final"))

    def forward(self, x, timestep, context, guidance=None, control=None, transformer_options={}, **kwargs):
        batch, _, h, w = x.shape
        ps = self.patch_size
        img = rearrange(pad_to_patch_size(x, (ps, ps)), "b c (h ph) (w pw) -> b (h w) (c ph pw)", ph=ps, pw=ps)
        h_len, w_len = (h + ps // 2) // ps, (w + ps // 2) // ps
        img_ids = torch.zeros((h_len, w_len, 3), device=x.device, dtype=x.dtype)
        img_ids[:, :, 1] = torch.linspace(0, h_len - 1, steps=h_len, device=x.device, dtype=x.dtype).unsqueeze(1)
        img_ids[:, :, 2] = torch.linspace(0, w_len - 1, steps=w_len, device=x.device, dtype=x.dtype).unsqueeze(0)
        img_ids = repeat(img_ids, "h w c -> b (h w) c", b=batch)
        txt_ids = torch.zeros((batch, context.shape[1], 3), device=x.device, dtype=x.dtype)
        out = self.forward_orig(img, img_ids, context, txt_ids, timestep, guidance or torch.zeros_like(timestep), control,
                                transformer_options, attn_mask=kwargs.get("attention_mask", None))
        return rearrange(out, "b (h w) (c ph pw) -> b c (h ph) (w pw)", h=h_len, w=w_len, ph=ps, pw=ps)[:, :, :h, :w]
