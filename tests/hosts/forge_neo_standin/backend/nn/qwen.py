# Stand-in for Forge Neo backend/nn/qwen.py (exo101/sd-webui-forge-neo-v3 5692d2d,
# webui/backend/nn/qwen.py; ComfyUI v0.3.64's comfy/ldm/qwen_image/model.py), the diffusion
# transformer of Qwen-Image. Written here for the tests.
#
# Kept faithful, because ASAG depends on it:
# - Attention.forward (:200-243): the image and the text stream each project q, k, v, RMS-normed
#   per head; the joint sequence cat(txt, img), text first, rotated by this module's
#   apply_rotary_emb, then this module's global `attention_function(q, k, v, heads, attention_mask)`
#   with q, k, v flattened to (batch, tokens, heads * dim), the mask POSITIONAL (the block never
#   passes one), no skip_reshape and NO transformer_options: the attention is not told which
#   block runs;
# - QwenImageTransformerBlock.forward (:282-318): called with keyword arguments only
#   (hidden_states=img, encoder_hidden_states=txt, encoder_hidden_states_mask, temb,
#   image_rotary_emb), returns (txt, img), text FIRST;
# - QwenImageTransformer2DModel.forward (:391-483): the 5-D latent (batch, C, 1, H, W) patchified,
#   reference latents (Qwen-Image-Edit) appended to the image tokens, rope positions of the text
#   after the image's centre, the blocks in order with the `dit` replacement key
#   ("double_block", i), `double_block` patches and ControlNet residuals after each block.
# Simplified: the distilled-guidance branch (Neo's timestep embedder takes no guidance and its
# engine sends none), TimestepEmbedding's unused options.
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import repeat

from backend.args import dynamic_args
from backend.attention import attention_function
from backend.nn.flux import EmbedND
from backend.utils import pad_to_patch_size


def get_timestep_embedding(timesteps, embedding_dim, flip_sin_to_cos=False, downscale_freq_shift=1, scale=1, max_period=10000):
    half = embedding_dim // 2
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / (half - downscale_freq_shift)
    angles = scale * (timesteps[:, None].float() * torch.exp(exponent)[None, :])
    emb = torch.cat([angles.sin(), angles.cos()], dim=-1)
    if flip_sin_to_cos:
        emb = torch.cat([emb[:, half:], emb[:, :half]], dim=-1)
    return F.pad(emb, (0, 1, 0, 0)) if embedding_dim % 2 == 1 else emb


class TimestepEmbedding(nn.Module):
    def __init__(self, in_channels, time_embed_dim):
        super().__init__()
        self.linear_1 = nn.Linear(in_channels, time_embed_dim)
        self.act = nn.SiLU()
        self.linear_2 = nn.Linear(time_embed_dim, time_embed_dim)

    def forward(self, sample):
        return self.linear_2(self.act(self.linear_1(sample)))


class QwenTimestepProjEmbeddings(nn.Module):
    def __init__(self, embedding_dim):
        super().__init__()
        self.timestep_embedder = TimestepEmbedding(256, embedding_dim)

    def forward(self, timestep, hidden_states):
        projected = get_timestep_embedding(timestep, 256, flip_sin_to_cos=True, downscale_freq_shift=0, scale=1000)
        return self.timestep_embedder(projected.to(dtype=hidden_states.dtype))


class GELU(nn.Module):
    def __init__(self, dim_in, dim_out):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out)

    def forward(self, hidden_states):
        return F.gelu(self.proj(hidden_states), approximate="tanh")


class FeedForward(nn.Module):
    def __init__(self, dim, dim_out=None, mult=4):
        super().__init__()
        self.net = nn.ModuleList([GELU(dim, int(dim * mult)), nn.Dropout(0.0), nn.Linear(int(dim * mult), dim_out or dim)])

    def forward(self, hidden_states, *args, **kwargs):
        for module in self.net:
            hidden_states = module(hidden_states)
        return hidden_states


def apply_rotary_emb(x, freqs_cis):
    if x.shape[1] == 0:
        return x
    pairs = x.reshape(*x.shape[:-1], -1, 1, 2)
    return (freqs_cis[..., 0] * pairs[..., 0] + freqs_cis[..., 1] * pairs[..., 1]).reshape(*x.shape)


class Attention(nn.Module):
    def __init__(self, query_dim, dim_head=64, heads=8, bias=False, eps=1e-5, out_dim=None):
        super().__init__()
        inner = out_dim if out_dim is not None else dim_head * heads
        self.heads = heads
        self.norm_q = nn.RMSNorm(dim_head, eps=eps, elementwise_affine=True)
        self.norm_k = nn.RMSNorm(dim_head, eps=eps, elementwise_affine=True)
        self.norm_added_q = nn.RMSNorm(dim_head, eps=eps)
        self.norm_added_k = nn.RMSNorm(dim_head, eps=eps)
        self.to_q, self.to_k, self.to_v = (nn.Linear(query_dim, inner, bias=bias) for _ in range(3))
        self.add_q_proj, self.add_k_proj, self.add_v_proj = (nn.Linear(query_dim, inner, bias=bias) for _ in range(3))
        self.to_out = nn.ModuleList([nn.Linear(inner, out_dim or query_dim), nn.Dropout(0.0)])
        self.to_add_out = nn.Linear(inner, query_dim)

    def forward(self, hidden_states, encoder_hidden_states=None, encoder_hidden_states_mask=None, attention_mask=None,
                image_rotary_emb=None):
        seq_txt = encoder_hidden_states.shape[1]

        def heads(projection, states):
            return projection(states).unflatten(-1, (self.heads, -1))

        img_q, img_k, img_v = heads(self.to_q, hidden_states), heads(self.to_k, hidden_states), heads(self.to_v, hidden_states)
        txt_q = heads(self.add_q_proj, encoder_hidden_states)
        txt_k, txt_v = heads(self.add_k_proj, encoder_hidden_states), heads(self.add_v_proj, encoder_hidden_states)
        joint_q = apply_rotary_emb(torch.cat([self.norm_added_q(txt_q), self.norm_q(img_q)], dim=1), image_rotary_emb)
        joint_k = apply_rotary_emb(torch.cat([self.norm_added_k(txt_k), self.norm_k(img_k)], dim=1), image_rotary_emb)
        joint_v = torch.cat([txt_v, img_v], dim=1)
        joint = attention_function(joint_q.flatten(start_dim=2), joint_k.flatten(start_dim=2), joint_v.flatten(start_dim=2), self.heads,
                                   attention_mask)
        return self.to_out[1](self.to_out[0](joint[:, seq_txt:])), self.to_add_out(joint[:, :seq_txt])


def _modulate(x, mod_params):
    shift, scale, gate = torch.chunk(mod_params, 3, dim=-1)
    return torch.addcmul(shift.unsqueeze(1), x, 1 + scale.unsqueeze(1)), gate.unsqueeze(1)


class QwenImageTransformerBlock(nn.Module):
    def __init__(self, dim, num_attention_heads, attention_head_dim, eps=1e-6):
        super().__init__()
        self.img_mod = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim, bias=True))
        self.img_norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=eps)
        self.img_norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=eps)
        self.img_mlp = FeedForward(dim=dim, dim_out=dim)
        self.txt_mod = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim, bias=True))
        self.txt_norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=eps)
        self.txt_norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=eps)
        self.txt_mlp = FeedForward(dim=dim, dim_out=dim)
        self.attn = Attention(query_dim=dim, dim_head=attention_head_dim, heads=num_attention_heads, out_dim=dim, bias=True, eps=eps)

    def forward(self, hidden_states, encoder_hidden_states, encoder_hidden_states_mask, temb, image_rotary_emb=None):
        img_mod1, img_mod2 = self.img_mod(temb).chunk(2, dim=-1)
        txt_mod1, txt_mod2 = self.txt_mod(temb).chunk(2, dim=-1)
        img_modulated, img_gate1 = _modulate(self.img_norm1(hidden_states), img_mod1)
        txt_modulated, txt_gate1 = _modulate(self.txt_norm1(encoder_hidden_states), txt_mod1)
        img_attn, txt_attn = self.attn(hidden_states=img_modulated, encoder_hidden_states=txt_modulated,
                                       encoder_hidden_states_mask=encoder_hidden_states_mask, image_rotary_emb=image_rotary_emb)
        hidden_states = hidden_states + img_gate1 * img_attn
        encoder_hidden_states = encoder_hidden_states + txt_gate1 * txt_attn
        img_modulated2, img_gate2 = _modulate(self.img_norm2(hidden_states), img_mod2)
        hidden_states = torch.addcmul(hidden_states, img_gate2, self.img_mlp(img_modulated2))
        txt_modulated2, txt_gate2 = _modulate(self.txt_norm2(encoder_hidden_states), txt_mod2)
        encoder_hidden_states = torch.addcmul(encoder_hidden_states, txt_gate2, self.txt_mlp(txt_modulated2))
        return encoder_hidden_states, hidden_states


class LastLayer(nn.Module):
    def __init__(self, embedding_dim, conditioning_embedding_dim, eps=1e-6):
        super().__init__()
        self.silu = nn.SiLU()
        self.linear = nn.Linear(conditioning_embedding_dim, embedding_dim * 2)
        self.norm = nn.LayerNorm(embedding_dim, eps, elementwise_affine=False)

    def forward(self, x, conditioning_embedding):
        scale, shift = torch.chunk(self.linear(self.silu(conditioning_embedding)), 2, dim=1)
        return torch.addcmul(shift[:, None, :], self.norm(x), (1 + scale)[:, None, :])


class QwenImageTransformer2DModel(nn.Module):
    def __init__(self, patch_size=2, in_channels=64, out_channels=16, num_layers=60, attention_head_dim=128, num_attention_heads=24,
                 joint_attention_dim=3584, pooled_projection_dim=768, guidance_embeds=False, axes_dims_rope=(16, 56, 56)):
        super().__init__()
        self.patch_size, self.in_channels = patch_size, in_channels
        self.out_channels = out_channels or in_channels
        self.inner_dim = num_attention_heads * attention_head_dim
        self.pe_embedder = EmbedND(dim=attention_head_dim, theta=10000, axes_dim=list(axes_dims_rope))
        self.time_text_embed = QwenTimestepProjEmbeddings(self.inner_dim)
        self.txt_norm = nn.RMSNorm(joint_attention_dim, eps=1e-6)
        self.img_in = nn.Linear(in_channels, self.inner_dim)
        self.txt_in = nn.Linear(joint_attention_dim, self.inner_dim)
        self.transformer_blocks = nn.ModuleList([QwenImageTransformerBlock(self.inner_dim, num_attention_heads, attention_head_dim)
                                                 for _ in range(num_layers)])
        self.norm_out = LastLayer(self.inner_dim, self.inner_dim)
        self.proj_out = nn.Linear(self.inner_dim, patch_size * patch_size * self.out_channels, bias=True)

    def process_img(self, x, index=0, h_offset=0, w_offset=0):
        _, _, _, h, w = x.shape
        half = self.patch_size // 2
        padded = pad_to_patch_size(x, (1, self.patch_size, self.patch_size))
        orig_shape = padded.shape
        tokens = padded.view(orig_shape[0], orig_shape[1], orig_shape[-2] // 2, 2, orig_shape[-1] // 2, 2).permute(0, 2, 4, 1, 3, 5)
        tokens = tokens.reshape(orig_shape[0], (orig_shape[-2] // 2) * (orig_shape[-1] // 2), orig_shape[1] * 4)
        h_len, w_len = (h + half) // self.patch_size, (w + half) // self.patch_size
        h_offset, w_offset = (h_offset + half) // self.patch_size, (w_offset + half) // self.patch_size
        img_ids = torch.zeros((h_len, w_len, 3), device=x.device)
        img_ids[:, :, 0] = img_ids[:, :, 1] + index
        img_ids[:, :, 1] += torch.linspace(h_offset, h_len - 1 + h_offset, steps=h_len, device=x.device, dtype=x.dtype).unsqueeze(1) - h_len // 2
        img_ids[:, :, 2] += torch.linspace(w_offset, w_len - 1 + w_offset, steps=w_len, device=x.device, dtype=x.dtype).unsqueeze(0) - w_len // 2
        return tokens, repeat(img_ids, "h w c -> b (h w) c", b=orig_shape[0]), orig_shape

    def forward(self, x, timesteps, context, attention_mask=None, guidance=None, ref_latents=None, transformer_options={}, control=None,
                **kwargs):
        encoder_hidden_states_mask = attention_mask
        hidden_states, img_ids, orig_shape = self.process_img(x)
        num_embeds = hidden_states.shape[1]
        ref_latents = ref_latents or dynamic_args.ref_latents
        if ref_latents is not None:
            h = w = index = 0
            by_index = kwargs.get("ref_latents_method", "index") == "index"
            for ref in ref_latents:
                if by_index:
                    index, h_offset, w_offset = index + 1, 0, 0
                else:
                    index, h_offset, w_offset = 1, 0, 0
                    if ref.shape[-2] + h > ref.shape[-1] + w:
                        w_offset = w
                    else:
                        h_offset = h
                    h, w = max(h, ref.shape[-2] + h_offset), max(w, ref.shape[-1] + w_offset)
                kontext, kontext_ids, _ = self.process_img(ref.to(x), index=index, h_offset=h_offset, w_offset=w_offset)
                hidden_states = torch.cat([hidden_states, kontext], dim=1)
                img_ids = torch.cat([img_ids, kontext_ids], dim=1)

        half = self.patch_size // 2
        txt_start = round(max(((x.shape[-1] + half) // self.patch_size) // 2, ((x.shape[-2] + half) // self.patch_size) // 2))
        txt_ids = torch.arange(txt_start, txt_start + context.shape[1], device=x.device).reshape(1, -1, 1).repeat(x.shape[0], 1, 3)
        image_rotary_emb = self.pe_embedder(torch.cat((txt_ids, img_ids), dim=1)).squeeze(1).unsqueeze(2).to(x.dtype)
        hidden_states = self.img_in(hidden_states)
        encoder_hidden_states = self.txt_in(self.txt_norm(context))
        temb = self.time_text_embed(timesteps, hidden_states)

        blocks_replace = transformer_options.get("patches_replace", {}).get("dit", {})
        patches = transformer_options.get("patches", {})
        for i, block in enumerate(self.transformer_blocks):
            if ("double_block", i) in blocks_replace:
                def block_wrap(args, block=block):
                    txt, img = block(hidden_states=args["img"], encoder_hidden_states=args["txt"], encoder_hidden_states_mask=encoder_hidden_states_mask,
                                     temb=args["vec"], image_rotary_emb=args["pe"])
                    return {"txt": txt, "img": img}

                out = blocks_replace[("double_block", i)]({"img": hidden_states, "txt": encoder_hidden_states, "vec": temb, "pe": image_rotary_emb},
                                                          {"original_block": block_wrap})
                hidden_states, encoder_hidden_states = out["img"], out["txt"]
            else:
                encoder_hidden_states, hidden_states = block(hidden_states=hidden_states, encoder_hidden_states=encoder_hidden_states,
                                                             encoder_hidden_states_mask=encoder_hidden_states_mask, temb=temb,
                                                             image_rotary_emb=image_rotary_emb)
            for patch in patches.get("double_block", []):
                out = patch({"img": hidden_states, "txt": encoder_hidden_states, "x": x, "block_index": i})
                hidden_states, encoder_hidden_states = out["img"], out["txt"]
            if control is not None:
                control_i = control.get("input")
                if i < len(control_i) and control_i[i] is not None:
                    hidden_states[:, : control_i[i].shape[1]] += control_i[i]

        hidden_states = self.proj_out(self.norm_out(hidden_states, temb))
        hidden_states = hidden_states[:, :num_embeds].view(orig_shape[0], orig_shape[-2] // 2, orig_shape[-1] // 2, orig_shape[1], 2, 2)
        return hidden_states.permute(0, 3, 1, 4, 2, 5).reshape(orig_shape)[:, :, :, : x.shape[-2], : x.shape[-1]]
