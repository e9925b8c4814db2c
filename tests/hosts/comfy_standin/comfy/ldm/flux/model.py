# Stand-in for Comfy-Org/ComfyUI comfy/ldm/flux/model.py at a125cd84b054a57729b5eecab930ca9408719832,
# and, with NAMES_BLOCKS set, as ComfyUI has it since PR #10841 (2025-11-27; v0.9.0, whose copy Forge
# Neo 5692d2d carries): forward_orig then copies transformer_options and names the block under way
# (total_blocks, block_type "double" / "single", block_index; img_slice for the single blocks).
# Kept faithful, because ASAG depends on it: forward (DIFFUSION_MODEL wrappers around _forward);
# _forward (2x2 patches, img_ids rows/cols, zero txt_ids of the context's length); forward_orig:
# img_in / time_in / guidance_in / vector_in / txt_in, the pe of cat(txt_ids, img_ids), the double
# blocks called by keyword with transformer_options, whole-block replacement through
# patches_replace["dit"][("double_block" | "single_block", i)](args, {"original_block": ...}) with
# args img, txt, vec, pe, attn_mask, transformer_options, ControlNet residuals added in place after
# each block (control["input"] to the image tokens, control["output"] after the text), the joint
# sequence cat(txt, img) for the single blocks, the image tokens taken back after them.
# Chroma's skip_mmdit / skip_dit lists are honoured here (comfy/ldm/chroma/model.py runs the same
# loop, skipping those blocks).
# Simplified: no Kontext reference latents, no attention mask from the conds, no post_input patch,
# no fp16 clamps; Flux.2's global modulation and text norm are left out (the same blocks, attention
# and loop otherwise; its text arrives padded to 512 tokens).
from dataclasses import dataclass

import torch
from einops import rearrange, repeat
from torch import nn

import comfy.patcher_extension

from .layers import DoubleStreamBlock, EmbedND, LastLayer, MLPEmbedder, SingleStreamBlock, timestep_embedding

NAMES_BLOCKS = False  # True: as ComfyUI since PR #10841 (see above)


@dataclass
class FluxParams:
    in_channels: int
    out_channels: int
    vec_in_dim: int
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
    guidance_embed: bool


class Flux(nn.Module):
    def __init__(self, image_model=None, final_layer=True, dtype=None, device=None, operations=None, **kwargs):
        super().__init__()
        params = self.params = FluxParams(**kwargs)
        self.patch_size = params.patch_size
        self.in_channels = params.in_channels * params.patch_size ** 2
        self.out_channels = params.out_channels * params.patch_size ** 2
        self.hidden_size, self.num_heads = params.hidden_size, params.num_heads
        self.pe_embedder = EmbedND(dim=params.hidden_size // params.num_heads, theta=params.theta, axes_dim=params.axes_dim)
        self.img_in = nn.Linear(self.in_channels, self.hidden_size, bias=True)
        self.time_in = MLPEmbedder(256, self.hidden_size)
        self.vector_in = MLPEmbedder(params.vec_in_dim, self.hidden_size)
        self.guidance_in = MLPEmbedder(256, self.hidden_size) if params.guidance_embed else nn.Identity()
        self.txt_in = nn.Linear(params.context_in_dim, self.hidden_size)
        self.double_blocks = nn.ModuleList([DoubleStreamBlock(self.hidden_size, self.num_heads, params.mlp_ratio, params.qkv_bias)
                                            for _ in range(params.depth)])
        self.single_blocks = nn.ModuleList([SingleStreamBlock(self.hidden_size, self.num_heads, params.mlp_ratio)
                                            for _ in range(params.depth_single_blocks)])
        self.final_layer = LastLayer(self.hidden_size, 1, self.out_channels)

    def embed_vector(self, timesteps, y, guidance, img):
        vec = self.time_in(timestep_embedding(timesteps, 256).to(img.dtype))
        if self.params.guidance_embed and guidance is not None:
            vec = vec + self.guidance_in(timestep_embedding(guidance, 256).to(img.dtype))
        if y is None:
            y = torch.zeros((img.shape[0], self.params.vec_in_dim), device=img.device, dtype=img.dtype)
        return vec + self.vector_in(y[:, :self.params.vec_in_dim])

    def double_vec(self, vec, i):  # Chroma: the block's own modulations
        return vec

    def single_vec(self, vec, i):
        return vec

    def forward_orig(self, img, img_ids, txt, txt_ids, timesteps, y, guidance=None, control=None, transformer_options={}, attn_mask=None):
        if NAMES_BLOCKS:
            transformer_options = transformer_options.copy()
        patches_replace = transformer_options.get("patches_replace", {})
        img = self.img_in(img)
        vec = self.embed_vector(timesteps, y, guidance, img)
        txt = self.txt_in(txt)
        pe = self.pe_embedder(torch.cat((txt_ids, img_ids), dim=1))

        blocks_replace = patches_replace.get("dit", {})
        if NAMES_BLOCKS:
            transformer_options["total_blocks"], transformer_options["block_type"] = len(self.double_blocks), "double"
        for i, block in enumerate(self.double_blocks):
            if i in getattr(self, "skip_mmdit", ()):
                continue
            if NAMES_BLOCKS:
                transformer_options["block_index"] = i
            block_vec = self.double_vec(vec, i)
            if ("double_block", i) in blocks_replace:
                def block_wrap(args, block=block):
                    out = {}
                    out["img"], out["txt"] = block(img=args["img"], txt=args["txt"], vec=args["vec"], pe=args["pe"],
                                                   attn_mask=args.get("attn_mask"), transformer_options=args.get("transformer_options"))
                    return out
                out = blocks_replace[("double_block", i)]({"img": img, "txt": txt, "vec": block_vec, "pe": pe, "attn_mask": attn_mask,
                                                           "transformer_options": transformer_options}, {"original_block": block_wrap})
                txt, img = out["txt"], out["img"]
            else:
                img, txt = block(img=img, txt=txt, vec=block_vec, pe=pe, attn_mask=attn_mask, transformer_options=transformer_options)
            if control is not None:
                control_i = control.get("input")
                if i < len(control_i) and control_i[i] is not None:
                    img[:, :control_i[i].shape[1]] += control_i[i]

        img = torch.cat((txt, img), 1)
        if NAMES_BLOCKS:
            transformer_options["total_blocks"], transformer_options["block_type"] = len(self.single_blocks), "single"
            transformer_options["img_slice"] = [txt.shape[1], img.shape[1]]
        for i, block in enumerate(self.single_blocks):
            if i in getattr(self, "skip_dit", ()):
                continue
            if NAMES_BLOCKS:
                transformer_options["block_index"] = i
            block_vec = self.single_vec(vec, i)
            if ("single_block", i) in blocks_replace:
                def block_wrap(args, block=block):
                    return {"img": block(args["img"], vec=args["vec"], pe=args["pe"], attn_mask=args.get("attn_mask"),
                                         transformer_options=args.get("transformer_options"))}
                img = blocks_replace[("single_block", i)]({"img": img, "vec": block_vec, "pe": pe, "attn_mask": attn_mask,
                                                           "transformer_options": transformer_options}, {"original_block": block_wrap})["img"]
            else:
                img = block(img, vec=block_vec, pe=pe, attn_mask=attn_mask, transformer_options=transformer_options)
            if control is not None:
                control_o = control.get("output")
                if i < len(control_o) and control_o[i] is not None:
                    img[:, txt.shape[1]: txt.shape[1] + control_o[i].shape[1], ...] += control_o[i]
        img = img[:, txt.shape[1]:, ...]
        return self.final_layer(img, self.final_vec(vec))

    def final_vec(self, vec):
        return vec

    def process_img(self, x):
        bs, c, h, w = x.shape
        ps = self.patch_size
        img = rearrange(x, "b c (h ph) (w pw) -> b (h w) (c ph pw)", ph=ps, pw=ps)
        h_len, w_len = (h + ps // 2) // ps, (w + ps // 2) // ps
        img_ids = torch.zeros((h_len, w_len, 3), device=x.device, dtype=x.dtype)
        img_ids[:, :, 1] = img_ids[:, :, 1] + torch.linspace(0, h_len - 1, steps=h_len, device=x.device, dtype=x.dtype).unsqueeze(1)
        img_ids[:, :, 2] = img_ids[:, :, 2] + torch.linspace(0, w_len - 1, steps=w_len, device=x.device, dtype=x.dtype).unsqueeze(0)
        return img, repeat(img_ids, "h w c -> b (h w) c", b=bs)

    def forward(self, x, timestep, context, y=None, guidance=None, ref_latents=None, control=None, transformer_options={}, **kwargs):
        return comfy.patcher_extension.WrapperExecutor.new_class_executor(
            self._forward, self,
            comfy.patcher_extension.get_all_wrappers(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, transformer_options),
        ).execute(x, timestep, context, y, guidance, ref_latents, control, transformer_options, **kwargs)

    def _forward(self, x, timestep, context, y=None, guidance=None, ref_latents=None, control=None, transformer_options={}, **kwargs):
        bs, c, h_orig, w_orig = x.shape
        ps = self.patch_size
        h_len, w_len = (h_orig + ps // 2) // ps, (w_orig + ps // 2) // ps
        img, img_ids = self.process_img(x)
        img_tokens = img.shape[1]
        txt_ids = torch.zeros((bs, context.shape[1], 3), device=x.device, dtype=x.dtype)
        out = self.forward_orig(img, img_ids, context, txt_ids, timestep, y, guidance, control, transformer_options,
                                attn_mask=kwargs.get("attention_mask", None))
        out = out[:, :img_tokens]
        return rearrange(out, "b (h w) (c ph pw) -> b c (h ph) (w pw)", h=h_len, w=w_len, ph=ps, pw=ps)[:, :, :h_orig, :w_orig]
