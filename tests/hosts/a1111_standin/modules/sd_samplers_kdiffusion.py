"""Stands for modules/sd_samplers_kdiffusion.py (+ the sampling parts of sd_samplers_common.py) of
v1.10.1: real k-diffusion samplers driving ``CFGDenoiserKDiffusion`` around ``CompVisDenoiser``."""
import k_diffusion.external
import k_diffusion.sampling

from modules import sd_samplers_common, shared
from modules.sd_samplers_cfg_denoiser import CFGDenoiser

SAMPLERS = {  # UI name -> (k-diffusion function, second order)
    "Euler": ("sample_euler", False),
    "Euler a": ("sample_euler_ancestral", False),
    "Heun": ("sample_heun", True),
    "DPM++ 2M": ("sample_dpmpp_2m", False),
}


class CFGDenoiserKDiffusion(CFGDenoiser):
    @property
    def inner_model(self):
        if self.model_wrap is None:
            denoiser = k_diffusion.external.CompVisVDenoiser if shared.sd_model.parameterization == "v" else k_diffusion.external.CompVisDenoiser
            self.model_wrap = denoiser(shared.sd_model, quantize=True)
        return self.model_wrap


class KDiffusionSampler:
    def __init__(self, name):
        self.funcname, self.second_order = SAMPLERS[name]
        self.model_wrap_cfg = CFGDenoiserKDiffusion(self)
        self.model_wrap = self.model_wrap_cfg.inner_model
        self.last_latent = None
        self.sampler_extra_args = {}

    def initialize(self, p, steps):
        self.model_wrap_cfg.p = p
        self.model_wrap_cfg.mask = getattr(p, "mask", None)
        self.model_wrap_cfg.nmask = getattr(p, "nmask", None)
        self.model_wrap_cfg.step = 0
        self.model_wrap_cfg.image_cfg_scale = getattr(p, "image_cfg_scale", None)
        self.model_wrap_cfg.steps = steps
        self.model_wrap_cfg.total_steps = steps * 2 - 1 if self.second_order else steps

    def launch_sampling(self, func):
        try:
            return func()
        except sd_samplers_common.InterruptedException:
            return self.last_latent

    def _run(self, p, x, sigmas, conditioning, unconditional_conditioning, image_conditioning):
        self.sampler_extra_args = {"cond": conditioning, "image_cond": image_conditioning, "uncond": unconditional_conditioning,
                                   "cond_scale": p.cfg_scale, "s_min_uncond": getattr(p, "s_min_uncond", 0.0)}
        func = getattr(k_diffusion.sampling, self.funcname)

        def callback(d):
            shared.state.sampling_step = d["i"]

        return self.launch_sampling(lambda: func(self.model_wrap_cfg, x, sigmas, extra_args=self.sampler_extra_args, callback=callback, disable=True))

    def sample(self, p, x, conditioning, unconditional_conditioning, steps=None, image_conditioning=None):
        steps = steps or p.steps
        sigmas = self.model_wrap.get_sigmas(steps)
        self.initialize(p, steps)
        shared.state.sampling_steps = steps
        return self._run(p, x * sigmas[0], sigmas, conditioning, unconditional_conditioning, image_conditioning)

    def sample_img2img(self, p, x, noise, conditioning, unconditional_conditioning, steps=None, image_conditioning=None):
        steps = steps or p.steps
        t_enc = int(min(p.denoising_strength, 0.999) * steps)
        sigmas = self.model_wrap.get_sigmas(steps)[steps - t_enc - 1:]
        self.initialize(p, t_enc + 1)
        self.model_wrap_cfg.init_latent = x
        shared.state.sampling_steps = t_enc + 1
        return self._run(p, x + noise * sigmas[0], sigmas, conditioning, unconditional_conditioning, image_conditioning)
