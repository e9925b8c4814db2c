"""Stands for modules/sd_samplers_timesteps.py and sd_samplers_timesteps_impl.py (DDIM, eta 0) of
v1.10.1: the timestep samplers also go through CFGDenoiser.forward, with the integer timestep as
``sigma``, eps as the model output and the inpaint blend applied before denoising."""
import torch

from modules import shared
from modules.sd_samplers_cfg_denoiser import CFGDenoiser
from modules.sd_samplers_kdiffusion import KDiffusionSampler


class CompVisTimestepsDenoiser(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.inner_model = model

    def forward(self, input, timesteps, **kwargs):
        return self.inner_model.apply_model(input, timesteps, **kwargs)


class CFGDenoiserTimesteps(CFGDenoiser):
    def __init__(self, sampler):
        super().__init__(sampler)
        self.alphas = shared.sd_model.alphas_cumprod
        self.mask_before_denoising = True

    def get_pred_x0(self, x_in, x_out, sigma):
        ts = sigma.to(dtype=int)
        a_t = self.alphas[ts][:, None, None, None]
        return (x_in - (1 - a_t).sqrt() * x_out) / a_t.sqrt()

    @property
    def inner_model(self):
        if self.model_wrap is None:
            self.model_wrap = CompVisTimestepsDenoiser(shared.sd_model)
        return self.model_wrap


def ddim(model, x, timesteps, extra_args, callback):
    alphas_cumprod = model.inner_model.inner_model.alphas_cumprod
    alphas = alphas_cumprod[timesteps]
    alphas_prev = alphas_cumprod[torch.nn.functional.pad(timesteps[:-1], pad=(1, 0))].to(torch.float32)
    s_in = x.new_ones((x.shape[0],))
    for i in range(len(timesteps) - 1, -1, -1):
        index = len(timesteps) - 1 - i
        e_t = model(x, timesteps[i].item() * s_in, **extra_args)
        a_t, a_prev = alphas[i].item(), alphas_prev[i].item()
        pred_x0 = (x - (1 - a_t) ** 0.5 * e_t) / a_t ** 0.5
        x = a_prev ** 0.5 * pred_x0 + (1 - a_prev) ** 0.5 * e_t
        callback({"i": index})
    return x


class CompVisSampler(KDiffusionSampler):
    def __init__(self, name="DDIM"):
        self.second_order = False
        self.model_wrap_cfg = CFGDenoiserTimesteps(self)
        self.model_wrap = self.model_wrap_cfg.inner_model
        self.last_latent = None
        self.sampler_extra_args = {}

    def sample(self, p, x, conditioning, unconditional_conditioning, steps=None, image_conditioning=None):
        steps = steps or p.steps
        timesteps = torch.arange(1, 1000, 1000 // steps)  # "uniform" DDIM discretisation, +1 as the host
        self.initialize(p, steps)
        shared.state.sampling_steps = steps
        self.sampler_extra_args = {"cond": conditioning, "image_cond": image_conditioning, "uncond": unconditional_conditioning,
                                   "cond_scale": p.cfg_scale, "s_min_uncond": getattr(p, "s_min_uncond", 0.0)}

        def callback(d):
            shared.state.sampling_step = d["i"]

        return self.launch_sampling(lambda: ddim(self.model_wrap_cfg, x, timesteps, self.sampler_extra_args, callback))
