"""Tiny random-weight models built from the real ldm code the WebUI pins (stable-diffusion-sdkit).

Configurations mirror the real layouts (SD1: attention at every level, depth 1; SDXL-like:
no attention at the first level, several transformer blocks per block) at toy sizes."""
import torch
from ldm.modules.diffusionmodules.openaimodel import UNetModel

CONTEXT_DIM = 32


def tiny_unet(layout: str = "sd1", seed: int = 0, in_channels: int = 4) -> UNetModel:
    torch.manual_seed(seed)
    common = dict(image_size=16, in_channels=in_channels, out_channels=4, model_channels=32, num_res_blocks=2,
                  num_head_channels=8, use_spatial_transformer=True, context_dim=CONTEXT_DIM, legacy=False)
    if layout == "sd1":  # attention_resolutions [4, 2, 1] with mult [1, 2, 4, 4], cut to three levels
        config = dict(attention_resolutions=[1, 2, 4], channel_mult=[1, 2, 2], transformer_depth=1)
    elif layout == "sdxl":  # like sd_xl_base: no attention at the first level, deeper transformers.
        # For structure (layer naming) only: ldm's SpatialTransformer wants a list of contexts when
        # depth > 1, which sgm's (SDXL's) does not; sgm is not on PyPI.
        config = dict(attention_resolutions=[2, 4], channel_mult=[1, 2, 2], transformer_depth=2, use_linear_in_transformer=True)
    else:
        raise ValueError(layout)
    # ldm's SpatialTransformer indexes context_dim per transformer block: give it one per block.
    common["context_dim"] = [CONTEXT_DIM] * config["transformer_depth"]
    return wake_zero_layers(UNetModel(**common, **config).eval())


def wake_zero_layers(model: torch.nn.Module, std: float = 0.05) -> torch.nn.Module:
    """ldm zero-initialises the last layer of every residual branch (ResBlock out, SpatialTransformer
    proj_out, UNet out): a fresh model's attention would change nothing. Trained weights are not
    zero, so give those layers small random values (seeded by the caller's manual_seed)."""
    with torch.no_grad():
        for parameter in model.parameters():
            if not parameter.any():
                parameter.normal_(0.0, std)
    return model
