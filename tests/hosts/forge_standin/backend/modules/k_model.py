# Stand-in for lllyasviel/stable-diffusion-webui-forge backend/modules/k_model.py (KModel) and the
# eps Prediction of backend/modules/k_prediction.py, at dfdcbab685e57677014f05a3309b48cc87383167.
# Kept faithful: apply_model(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)
# scales the input by the predictor, concatenates c_concat, runs the UNet with the
# transformer_options it was given and returns the denoised x0 = x - eps * sigma; the predictor
# exposes sigma_min and sigma_max. Simplified: the sigma -> timestep map is continuous in
# log-sigma rather than the nearest of the 1000 discrete sigmas; no dtype casts; the memory a
# batch needs is MEMORY_PER_ELEMENT bytes per element of its input, a stand-in for Forge's estimate.
import math

import torch

from backend.nn.unet import forge_unet

MEMORY_PER_ELEMENT = 1024


class Prediction(torch.nn.Module):
    def __init__(self, sigma_min=0.0292, sigma_max=14.6146, timesteps=1000):
        super().__init__()
        self.register_buffer("sigmas", torch.tensor([sigma_min, sigma_max]))
        self.timesteps = timesteps

    @property
    def sigma_min(self):
        return self.sigmas[0]

    @property
    def sigma_max(self):
        return self.sigmas[-1]

    def timestep(self, sigma):
        lo, hi = math.log(self.sigma_min), math.log(self.sigma_max)
        return (sigma.log() - lo) / (hi - lo) * (self.timesteps - 1)

    def calculate_input(self, sigma, noise):
        return noise / (sigma.view(sigma.shape[:1] + (1,) * (noise.ndim - 1)) ** 2 + 1.0) ** 0.5

    def calculate_denoised(self, sigma, model_output, model_input):
        return model_input - model_output * sigma.view(sigma.shape[:1] + (1,) * (model_output.ndim - 1))


class KModel(torch.nn.Module):
    def __init__(self, model, k_predictor=None):
        super().__init__()
        self.diffusion_model = forge_unet(model)
        self.predictor = k_predictor if k_predictor is not None else Prediction()

    def apply_model(self, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options={}, **kwargs):
        sigma = t
        xc = self.predictor.calculate_input(sigma, x)
        if c_concat is not None:
            xc = torch.cat([xc, c_concat], dim=1)
        timesteps = self.predictor.timestep(t).float()
        model_output = self.diffusion_model(xc, timesteps, context=c_crossattn, control=control,
                                            transformer_options=transformer_options, **kwargs).float()
        return self.predictor.calculate_denoised(sigma, model_output, x)

    def memory_required(self, input_shape):
        return math.prod(input_shape) * MEMORY_PER_ELEMENT
