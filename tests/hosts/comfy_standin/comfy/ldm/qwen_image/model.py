# Stand-in for Comfy-Org/ComfyUI comfy/ldm/qwen_image/model.py at a125cd84b054a57729b5eecab930ca9408719832,
# and, with NAMES_BLOCKS set, as newer ComfyUI names its blocks (total_blocks, block_type "double",
# block_index before each block, the PRs after #10841).
# Kept faithful, because ASAG depends on it:
# - Attention.forward (:128-171): image and text projections, RMS q/k norms per head, cat(txt, img)
#   (text first), the rope, q, k, v flattened to (batch, tokens, heads * head_dim), then
#   optimized_attention_masked(q, k, v, heads, attention_mask, transformer_options=) with the mask
#   positional; the split at the text's length;
# - QwenImageTransformerBlock.forward(hidden_states=, encoder_hidden_states=,
#   encoder_hidden_states_mask=, temb=, image_rotary_emb=, transformer_options=) -> (txt, img);
# - forward (DIFFUSION_MODEL wrappers) and _forward: 2x2 patches, rope ids (text positions after
#   the image's centre), txt_norm and txt_in, the blocks called by keyword, whole-block replacement
#   patches_replace["dit"][("double_block", i)](args {img, txt, vec, pe, transformer_options},
#   {"original_block"}), ControlNet residuals control["input"][i] added to the image in place.
# Simplified: the latent is (batch, channels, height, width) (ComfyUI's carries a frame axis of 1),
# no reference latents (Qwen-Image-Edit), no guidance embedding, the time embedding as Flux's.
import torch
from torch import nn

import comfy.patcher_extension
from comfy.ldm.flux.layers import EmbedND, MLPEmbedder, RMSNorm, timestep_embedding
from comfy.ldm.modules.attention import optimized_attention_masked

NAMES_BLOCKS = False  # True: as newer ComfyUI names its blocks (see above)


def apply_rotary_emb(x, freqs_cis):
    t_ = x.reshape(*x.shape[:-1], -1, 1, 2)
    return (freqs_cis[..., 0] * t_[..., 0] + freqs_cis[..., 1] * t_[..., 1]).reshape(*x.shape)


class Attention(nn.Module):
    def __init__(self, dim, dim_head, heads):
        super().__init__()
        self.heads, self.inner_dim = heads, dim_head * heads
        self.to_q, self.to_k, self.to_v = (nn.Linear(dim, self.inner_dim) for _ in range(3))
        self.add_q_proj, self.add_k_proj, self.add_v_proj = (nn.Linear(dim, self.inner_dim) for _ in range(3))
        self.norm_q, self.norm_k, self.norm_added_q, self.norm_added_k = (RMSNorm(dim_head) for _ in range(4))
        self.to_out = nn.ModuleList([nn.Linear(self.inner_dim, dim), nn.Dropout(0.0)])
        self.to_add_out = nn.Linear(self.inner_dim, dim)

    def forward(self, hidden_states, encoder_hidden_states=None, encoder_hidden_states_mask=None, attention_mask=None,
                image_rotary_emb=None, transformer_options={}):
        seq_txt = encoder_hidden_states.shape[1]
        split = lambda t: t.unflatten(-1, (self.heads, -1))  # noqa: E731
        img_q, img_k, img_v = self.norm_q(split(self.to_q(hidden_states))), self.norm_k(split(self.to_k(hidden_states))), split(self.to_v(hidden_states))
        txt_q = self.norm_added_q(split(self.add_q_proj(encoder_hidden_states)))
        txt_k = self.norm_added_k(split(self.add_k_proj(encoder_hidden_states)))
        txt_v = split(self.add_v_proj(encoder_hidden_states))
        joint_query = apply_rotary_emb(torch.cat([txt_q, img_q], dim=1), image_rotary_emb).flatten(start_dim=2)
        joint_key = apply_rotary_emb(torch.cat([txt_k, img_k], dim=1), image_rotary_emb).flatten(start_dim=2)
        joint_value = torch.cat([txt_v, img_v], dim=1).flatten(start_dim=2)
        joint_hidden_states = optimized_attention_masked(joint_query, joint_key, joint_value, self.heads, attention_mask,
                                                         transformer_options=transformer_options)
        txt_attn_output, img_attn_output = joint_hidden_states[:, :seq_txt, :], joint_hidden_states[:, seq_txt:, :]
        return self.to_out[1](self.to_out[0](img_attn_output)), self.to_add_out(txt_attn_output)


class QwenImageTransformerBlock(nn.Module):
    def __init__(self, dim, num_attention_heads, attention_head_dim, eps=1e-6):
        super().__init__()
        for stream in ("img", "txt"):
            setattr(self, f"{stream}_mod", nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim, bias=True)))
            setattr(self, f"{stream}_norm1", nn.LayerNorm(dim, elementwise_affine=False, eps=eps))
            setattr(self, f"{stream}_norm2", nn.LayerNorm(dim, elementwise_affine=False, eps=eps))
            setattr(self, f"{stream}_mlp", nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(approximate="tanh"), nn.Linear(4 * dim, dim)))
        self.attn = Attention(dim, attention_head_dim, num_attention_heads)

    def _modulate(self, x, mod_params):
        shift, scale, gate = torch.chunk(mod_params, 3, dim=-1)
        return torch.addcmul(shift.unsqueeze(1), x, 1 + scale.unsqueeze(1)), gate.unsqueeze(1)

    def forward(self, hidden_states, encoder_hidden_states, encoder_hidden_states_mask, temb, image_rotary_emb=None, transformer_options={}):
        img_mod1, img_mod2 = self.img_mod(temb).chunk(2, dim=-1)
        txt_mod1, txt_mod2 = self.txt_mod(temb).chunk(2, dim=-1)
        img_modulated, img_gate1 = self._modulate(self.img_norm1(hidden_states), img_mod1)
        txt_modulated, txt_gate1 = self._modulate(self.txt_norm1(encoder_hidden_states), txt_mod1)
        img_attn_output, txt_attn_output = self.attn(hidden_states=img_modulated, encoder_hidden_states=txt_modulated,
                                                     encoder_hidden_states_mask=encoder_hidden_states_mask, image_rotary_emb=image_rotary_emb,
                                                     transformer_options=transformer_options)
        hidden_states = hidden_states + img_gate1 * img_attn_output
        encoder_hidden_states = encoder_hidden_states + txt_gate1 * txt_attn_output
        img_modulated2, img_gate2 = self._modulate(self.img_norm2(hidden_states), img_mod2)
        hidden_states = torch.addcmul(hidden_states, img_gate2, self.img_mlp(img_modulated2))
        txt_modulated2, txt_gate2 = self._modulate(self.txt_norm2(encoder_hidden_states), txt_mod2)
        encoder_hidden_states = torch.addcmul(encoder_hidden_states, txt_gate2, self.txt_mlp(txt_modulated2))
        return encoder_hidden_states, hidden_states


class QwenImageTransformer2DModel(nn.Module):
    def __init__(self, patch_size=2, in_channels=64, out_channels=16, num_layers=60, attention_head_dim=128, num_attention_heads=24,
                 joint_attention_dim=3584, axes_dims_rope=(16, 56, 56), image_model=None, final_layer=True, dtype=None, device=None,
                 operations=None):
        super().__init__()
        self.patch_size, self.in_channels, self.out_channels = patch_size, in_channels, out_channels
        self.inner_dim = num_attention_heads * attention_head_dim
        self.pe_embedder = EmbedND(dim=attention_head_dim, theta=10000, axes_dim=list(axes_dims_rope))
        self.time_text_embed = MLPEmbedder(256, self.inner_dim)
        self.txt_norm = RMSNorm(joint_attention_dim)
        self.img_in = nn.Linear(in_channels, self.inner_dim)
        self.txt_in = nn.Linear(joint_attention_dim, self.inner_dim)
        self.transformer_blocks = nn.ModuleList([QwenImageTransformerBlock(self.inner_dim, num_attention_heads, attention_head_dim)
                                                 for _ in range(num_layers)])
        self.norm_out_linear = nn.Linear(self.inner_dim, self.inner_dim * 2)
        self.norm_out = nn.LayerNorm(self.inner_dim, eps=1e-6, elementwise_affine=False)
        self.proj_out = nn.Linear(self.inner_dim, patch_size * patch_size * self.out_channels, bias=True)

    def process_img(self, x):
        bs, c, h, w = x.shape
        hidden_states = x.view(bs, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(bs, (h // 2) * (w // 2), c * 4)
        h_len, w_len = h // self.patch_size, w // self.patch_size
        img_ids = torch.zeros((h_len, w_len, 3), device=x.device)
        img_ids[:, :, 1] = img_ids[:, :, 1] + torch.linspace(0, h_len - 1, steps=h_len, device=x.device).unsqueeze(1) - (h_len // 2)
        img_ids[:, :, 2] = img_ids[:, :, 2] + torch.linspace(0, w_len - 1, steps=w_len, device=x.device).unsqueeze(0) - (w_len // 2)
        return hidden_states, img_ids.reshape(1, -1, 3).repeat(bs, 1, 1)

    def forward(self, x, timestep, context, attention_mask=None, guidance=None, ref_latents=None, transformer_options={}, **kwargs):
        return comfy.patcher_extension.WrapperExecutor.new_class_executor(
            self._forward, self,
            comfy.patcher_extension.get_all_wrappers(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, transformer_options),
        ).execute(x, timestep, context, attention_mask, guidance, ref_latents, transformer_options, **kwargs)

    def _forward(self, x, timesteps, context, attention_mask=None, guidance=None, ref_latents=None, transformer_options={}, control=None,
                 **kwargs):
        encoder_hidden_states_mask = attention_mask
        hidden_states, img_ids = self.process_img(x)
        num_embeds = hidden_states.shape[1]
        txt_start = max(x.shape[-1] // self.patch_size // 2, x.shape[-2] // self.patch_size // 2)
        txt_ids = torch.arange(txt_start, txt_start + context.shape[1], device=x.device).reshape(1, -1, 1).repeat(x.shape[0], 1, 3)
        image_rotary_emb = self.pe_embedder(torch.cat((txt_ids, img_ids), dim=1)).squeeze(1).unsqueeze(2).to(x.dtype)
        hidden_states = self.img_in(hidden_states)
        encoder_hidden_states = self.txt_in(self.txt_norm(context))
        temb = self.time_text_embed(timestep_embedding(timesteps, 256).to(x.dtype))
        blocks_replace = transformer_options.get("patches_replace", {}).get("dit", {})
        if NAMES_BLOCKS:
            transformer_options["total_blocks"], transformer_options["block_type"] = len(self.transformer_blocks), "double"
        for i, block in enumerate(self.transformer_blocks):
            if NAMES_BLOCKS:
                transformer_options["block_index"] = i
            if ("double_block", i) in blocks_replace:
                def block_wrap(args, block=block):
                    out = {}
                    out["txt"], out["img"] = block(hidden_states=args["img"], encoder_hidden_states=args["txt"],
                                                   encoder_hidden_states_mask=encoder_hidden_states_mask, temb=args["vec"],
                                                   image_rotary_emb=args["pe"], transformer_options=args["transformer_options"])
                    return out
                out = blocks_replace[("double_block", i)]({"img": hidden_states, "txt": encoder_hidden_states, "vec": temb,
                                                           "pe": image_rotary_emb, "transformer_options": transformer_options},
                                                          {"original_block": block_wrap})
                hidden_states, encoder_hidden_states = out["img"], out["txt"]
            else:
                encoder_hidden_states, hidden_states = block(hidden_states=hidden_states, encoder_hidden_states=encoder_hidden_states,
                                                             encoder_hidden_states_mask=encoder_hidden_states_mask, temb=temb,
                                                             image_rotary_emb=image_rotary_emb, transformer_options=transformer_options)
            if control is not None:
                control_i = control.get("input")
                if i < len(control_i) and control_i[i] is not None:
                    hidden_states[:, :control_i[i].shape[1]] += control_i[i]
        scale, shift = torch.chunk(self.norm_out_linear(nn.functional.silu(temb)), 2, dim=1)
        hidden_states = torch.addcmul(shift[:, None, :], self.norm_out(hidden_states), (1 + scale)[:, None, :])
        hidden_states = self.proj_out(hidden_states)[:, :num_embeds]
        bs, c, h, w = x.shape
        hidden_states = hidden_states.view(bs, h // 2, w // 2, self.out_channels, 2, 2).permute(0, 3, 1, 4, 2, 5)
        return hidden_states.reshape(bs, self.out_channels, h, w)
