# Stand-in for Forge Classic modules_forge/forge_sampler.py (Haoming02/sd-webui-forge-classic 5136ce20,
# forge_sample at :51-84), as modules/sd_samplers_cfg_denoiser.py:150-167 calls it.
# Kept faithful: the sampler's model options (kwargs["model_options"] of CFGDenoiser.forward: the
# CFG++ samplers of modules/sd_samplers_cfgpp.py put their post-CFG function there) are merged into
# a copy of the UNet patcher's by dict.update, so a list the sampler sends replaces the patcher's
# list of the same name; the uncond rows are skipped at CFG 1 unless the options disable that.
# The rest of the body is old Forge's (../forge_standin, `sampling_function_with_options`), and
# returns (denoised, cond_pred, uncond_pred) as that stand-in does (Classic returns denoised only).
import copy
import math

from ldm_patched.modules import samplers


def forge_sample(self, denoiser_params, cond_scale, cond_composition, skip_uncond=False, options=None):
    model_options = self.inner_model.inner_model.forge_objects.unet.model_options
    if options is not None:
        model_options = model_options.copy()
        model_options.update(options)
    if skip_uncond:  # Classic passes uncond None to sampling_function
        denoiser_params = copy.copy(denoiser_params)
        denoiser_params.text_uncond = None
    return samplers.sampling_function_with_options(self, denoiser_params, cond_scale, cond_composition, model_options)


def cfg_denoiser_sample(self, denoiser_params, cond_scale, cond_composition, model_options=None):
    """What Classic's CFGDenoiser.forward does around forge_sample (:155-167)."""
    skip_uncond = math.isclose(cond_scale, 1.0) and not (model_options or {}).get("disable_cfg1_optimization", False)
    return forge_sample(self, denoiser_params, cond_scale, cond_composition, skip_uncond=skip_uncond, options=model_options)
