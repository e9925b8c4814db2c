# Stand-in for Forge Neo backend/sampling/sampling_function.py (exo101/sd-webui-forge-neo-v3
# 5692d2d, webui/backend/sampling/sampling_function.py:326-362).
# What Neo changed in the file of lllyasviel's Forge, kept faithful: sampling_function takes the
# sampler's `extra_model_options` (CFGDenoiser.forward passes kwargs["model_options"]: the CFG++
# samplers put their post-CFG function there) and joins them to the UNet's with utils.join_dicts,
# so the sampler's post-CFG functions run after the UNet patcher's; the image condition is
# attached to inpainting models only (`is_inpaint`). Everything else is ../forge_standin's file
# (calc_cond_uncond_batch and sampling_function_inner keep their shapes in Neo).
# Simplified: the video context-window handler that may wrap calc_cond_uncond_batch (never used
# for an image model) and the `cond_scale` entry Neo adds to the post-CFG args (ASAG reads none).
from tests.hosts.forge_standin_file import load_forge_file

from backend import utils
from backend.sampling.condition import Condition, compile_conditions, compile_weighted_conditions  # noqa: F401  (as Neo imports them)

_forge = load_forge_file("backend/sampling/sampling_function.py", "backend.sampling._forge_sampling_function")

calc_cond_uncond_batch = _forge.calc_cond_uncond_batch
sampling_function_inner = _forge.sampling_function_inner


def sampling_function(self, denoiser_params, cond_scale, cond_composition, extra_model_options=None):
    unet_patcher = self.inner_model.inner_model.forge_objects.unet
    model_options = utils.join_dicts(unet_patcher.model_options, extra_model_options)
    return _forge.sampling_function_with_options(self, denoiser_params, cond_scale, cond_composition, model_options,
                                                 image_cond=self.inner_model.inner_model.is_inpaint)
