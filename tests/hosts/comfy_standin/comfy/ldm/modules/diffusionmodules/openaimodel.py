# Stand-in for Comfy-Org/ComfyUI comfy/ldm/modules/diffusionmodules/openaimodel.py at
# a125cd84b054a57729b5eecab930ca9408719832: ComfyUI's UNet forward over the modules of a real ldm
# UNetModel (stable-diffusion-sdkit); ``from_ldm`` gives a loaded ldm UNet ComfyUI's classes.
#
# Kept faithful: UNetModel.forward (DIFFUSION_MODEL wrappers around _forward) and _forward:
# transformer_options["original_shape"], "transformer_index" = 0 and counted per
# SpatialTransformer inside forward_timestep_embed, "block" = ("input", id) / ("middle", 0) /
# ("output", id) with id the index in input_blocks / output_blocks (which makes the attn1 keys
# (block, id, block_index)); emb_patch, input_block_patch, input_block_patch_after_skip,
# output_block_patch and forward_timestep_embed_patch; apply_control (pops the last entry of
# control["input" | "middle" | "output"] and adds it in place).
# Simplified: no video layers (VideoResBlock, SpatialVideoTransformer), ldm's Upsample takes no
# output_shape (sizes here are powers of two), no class-label input (SDXL's y: the tests' models
# have none), no codebook head.
import logging

import torch
from ldm.modules import attention as ldm_attention
from ldm.modules.diffusionmodules import openaimodel as ldm_openaimodel
from ldm.modules.diffusionmodules.openaimodel import TimestepBlock, Upsample
from ldm.modules.diffusionmodules.util import timestep_embedding

import comfy.patcher_extension
from comfy.ldm.modules import attention
from comfy.ldm.modules.attention import SpatialTransformer


def forward_timestep_embed(ts, x, emb, context=None, transformer_options={}, output_shape=None, time_context=None,
                           num_video_frames=None, image_only_indicator=None):
    for layer in ts:
        if isinstance(layer, TimestepBlock):
            x = layer(x, emb)
        elif isinstance(layer, SpatialTransformer):
            x = layer(x, context, transformer_options)
            if "transformer_index" in transformer_options:
                transformer_options["transformer_index"] += 1
        elif isinstance(layer, Upsample):
            x = layer(x)
        else:
            if "patches" in transformer_options and "forward_timestep_embed_patch" in transformer_options["patches"]:
                found_patched = False
                for class_type, handler in transformer_options["patches"]["forward_timestep_embed_patch"]:
                    if isinstance(layer, class_type):
                        x = handler(layer, x, emb, context, transformer_options, output_shape, time_context, num_video_frames,
                                    image_only_indicator)
                        found_patched = True
                        break
                if found_patched:
                    continue
            x = layer(x)
    return x


class TimestepEmbedSequential(ldm_openaimodel.TimestepEmbedSequential):
    def forward(self, *args, **kwargs):
        return forward_timestep_embed(self, *args, **kwargs)


def apply_control(h, control, name):
    if control is not None and name in control and len(control[name]) > 0:
        ctrl = control[name].pop()
        if ctrl is not None:
            try:
                h += ctrl
            except Exception:
                logging.warning("warning control could not be applied {} {}".format(h.shape, ctrl.shape))
    return h


class UNetModel(ldm_openaimodel.UNetModel):
    def forward(self, x, timesteps=None, context=None, y=None, control=None, transformer_options={}, **kwargs):
        return comfy.patcher_extension.WrapperExecutor.new_class_executor(
            self._forward, self,
            comfy.patcher_extension.get_all_wrappers(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, transformer_options),
        ).execute(x, timesteps, context, y, control, transformer_options, **kwargs)

    def _forward(self, x, timesteps=None, context=None, y=None, control=None, transformer_options={}, **kwargs):
        transformer_options["original_shape"] = list(x.shape)
        transformer_options["transformer_index"] = 0
        transformer_patches = transformer_options.get("patches", {})
        hs = []
        emb = self.time_embed(timestep_embedding(timesteps, self.model_channels, repeat_only=False).to(x.dtype))
        for p in transformer_patches.get("emb_patch", []):
            emb = p(emb, self.model_channels, transformer_options)
        h = x
        for id, module in enumerate(self.input_blocks):
            transformer_options["block"] = ("input", id)
            h = forward_timestep_embed(module, h, emb, context, transformer_options)
            h = apply_control(h, control, "input")
            for p in transformer_patches.get("input_block_patch", []):
                h = p(h, transformer_options)
            hs.append(h)
            for p in transformer_patches.get("input_block_patch_after_skip", []):
                h = p(h, transformer_options)
        transformer_options["block"] = ("middle", 0)
        if self.middle_block is not None:
            h = forward_timestep_embed(self.middle_block, h, emb, context, transformer_options)
        h = apply_control(h, control, "middle")
        for id, module in enumerate(self.output_blocks):
            transformer_options["block"] = ("output", id)
            hsp = hs.pop()
            hsp = apply_control(hsp, control, "output")
            for p in transformer_patches.get("output_block_patch", []):
                h, hsp = p(h, hsp, transformer_options)
            h = torch.cat([h, hsp], dim=1)
            del hsp
            output_shape = hs[-1].shape if len(hs) > 0 else None
            h = forward_timestep_embed(module, h, emb, context, transformer_options, output_shape)
        h = h.type(x.dtype)
        return self.out(h)


# ldm's class -> ComfyUI's (the stand-ins in comfy/ldm/modules/attention.py and here)
_COMFY_CLASS = {
    ldm_openaimodel.UNetModel: UNetModel,
    ldm_openaimodel.TimestepEmbedSequential: TimestepEmbedSequential,
    ldm_attention.SpatialTransformer: attention.SpatialTransformer,
    ldm_attention.BasicTransformerBlock: attention.BasicTransformerBlock,
    ldm_attention.CrossAttention: attention.CrossAttention,
}


def from_ldm(unet: ldm_openaimodel.UNetModel) -> UNetModel:
    """A real ldm UNetModel with ComfyUI's classes (not ComfyUI code: how the stand-in is built)."""
    for module in unet.modules():
        if type(module) in _COMFY_CLASS:
            module.__class__ = _COMFY_CLASS[type(module)]
        assert type(module) is not ldm_attention.MemoryEfficientCrossAttention, "xformers' attention has no ComfyUI stand-in"
    return unet
