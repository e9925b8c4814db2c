# Stand-in for ldm_patched/ldm/modules/diffusionmodules/openaimodel.py of old Forge
# (lllyasviel/stable-diffusion-webui-forge af0b04cc, :39 and :831-915), reForge and Forge Classic
# (Haoming02/sd-webui-forge-classic 5136ce20, :94 and :1069/:1100/:1135).
# Kept faithful: the UNet calls every block through the module-level forward_timestep_embed(ts, x,
# emb, context, transformer_options[, output_shape], ...), looked up at call time, never through
# the block's own forward; that function runs the block's layers with block_inner_modifiers around
# each and counts transformer_index per SpatialTransformer (the same body as Forge's block class,
# shared from the Forge stand-in); TimestepEmbedSequential.forward calls it too. Around the blocks
# the UNet does what Forge's does (apply_control, block modifiers and patches).
from ldm.modules.attention import SpatialTransformer  # noqa: F401  (the class the function counts)

from backend.nn import unet as forge_unet


def forward_timestep_embed(ts, x, emb, context=None, transformer_options={}, output_shape=None, time_context=None,
                           num_video_frames=None, image_only_indicator=None):
    return forge_unet.run_block_layers(ts, x, emb, context, transformer_options, output_shape)


class TimestepEmbedSequential(forge_unet.TimestepEmbedSequential):
    def forward(self, *args, **kwargs):
        return forward_timestep_embed(self, *args, **kwargs)


class UNetModel(forge_unet.IntegratedUNet2DConditionModel):
    def forward(self, x, timesteps=None, context=None, y=None, control=None, transformer_options={}, **kwargs):
        return forge_unet.unet_forward(self, x, timesteps, context, y, control, transformer_options,
                                       call_block=lambda block, *args: forward_timestep_embed(block, *args), **kwargs)


def legacy_unet(unet):
    """A Forge stand-in UNet given the ldm_patched classes."""
    unet.__class__ = UNetModel
    for block in [*unet.input_blocks, unet.middle_block, *unet.output_blocks]:
        block.__class__ = TimestepEmbedSequential
    return unet
