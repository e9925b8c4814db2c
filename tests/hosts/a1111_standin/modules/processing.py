"""Stands for the parts of modules/processing.py of v1.10.1 that order the script hooks around
sampling: ``process``, then per sampling pass ``process_before_every_sampling`` (hires: after
``before_hr``), then decode and ``postprocess``. As in the host, an exception escaping sampling
skips ``postprocess``; an interrupt ends sampling early and the job finishes normally."""
from dataclasses import dataclass, field

import torch

from modules import sd_samplers_kdiffusion, sd_samplers_timesteps, shared


@dataclass
class Processing:
    cond: object  # MulticondLearnedConditioning
    uncond: list  # per image: list of ScheduledPromptConditioning
    batch_size: int
    steps: int = 4
    cfg_scale: float = 5.0
    sampler_name: str = "Euler"
    seed: int = 0
    width_latent: int = 16
    scripts: object = None
    script_args: tuple = ()
    s_min_uncond: float = 0.0
    image_cfg_scale: float | None = None
    enable_hr: bool = False
    hr_steps: int = 3
    denoising_strength: float = 0.6
    init_latent: torch.Tensor | None = None  # img2img
    mask: torch.Tensor | None = None  # inpainting: 1 = keep the original
    image_conditioning: torch.Tensor | None = None
    extra_generation_params: dict = field(default_factory=dict)
    sampler: object = None
    is_hr_pass: bool = False
    is_api: bool = False
    refiner_model: object = None  # the refiner checkpoint, as loaded (the host loads it by name)
    refiner_switch_at: float | None = None

    def get_conds(self):
        return self.cond, self.uncond

    @property
    def nmask(self):
        return None if self.mask is None else 1 - self.mask

    def make_sampler(self):
        if self.sampler_name == "DDIM":
            return sd_samplers_timesteps.CompVisSampler()
        return sd_samplers_kdiffusion.KDiffusionSampler(self.sampler_name)

    def image_cond(self, x):
        if self.image_conditioning is not None:
            return self.image_conditioning
        return x.new_zeros(x.shape[0], 5, 1, 1)  # txt2img_image_conditioning's dummy for plain models

    def sample(self):
        generator = torch.Generator().manual_seed(self.seed)
        shape = (self.batch_size, 4, self.width_latent, self.width_latent)
        noise = torch.randn(shape, generator=generator)
        torch.manual_seed(self.seed)  # ancestral samplers draw from the global generator
        self.sampler = self.make_sampler()
        if self.init_latent is None:
            self.scripts.process_before_every_sampling(self, x=noise, noise=noise, c=self.cond, uc=self.uncond)
            samples = self.sampler.sample(self, noise, self.cond, self.uncond, image_conditioning=self.image_cond(noise))
        else:
            self.scripts.process_before_every_sampling(self, x=self.init_latent, noise=noise, c=self.cond, uc=self.uncond)
            samples = self.sampler.sample_img2img(self, self.init_latent, noise, self.cond, self.uncond, image_conditioning=self.image_cond(noise))
        if self.enable_hr:
            samples = self.sample_hr_pass(samples, generator)
        return samples

    def sample_hr_pass(self, samples, generator):
        self.is_hr_pass = True
        self.sampler = self.make_sampler()
        samples = torch.nn.functional.interpolate(samples, scale_factor=2, mode="nearest")
        noise = torch.randn(samples.shape, generator=generator)
        self.scripts.before_hr(self)
        self.scripts.process_before_every_sampling(self, x=samples, noise=noise, c=self.cond, uc=self.uncond)
        samples = self.sampler.sample_img2img(self, samples, noise, self.cond, self.uncond, steps=self.hr_steps, image_conditioning=self.image_cond(samples))
        self.is_hr_pass = False
        return samples


@dataclass
class Processed:
    images: list  # uint8 arrays, as saved
    latents: torch.Tensor
    infotext: dict


def process_images(p: Processing) -> Processed:
    shared.state.interrupted = False
    p.scripts.process(p)
    with torch.no_grad():
        samples = p.sample()
        if p.mask is not None:  # the final blend in process_images_inner
            samples = samples * p.nmask + p.init_latent * p.mask
        decoded = shared.sd_model.decode_first_stage(samples)
    images = [((img.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy() for img in decoded]
    p.sampler = None
    processed = Processed(images, samples, dict(p.extra_generation_params))
    p.scripts.postprocess(p, processed)
    processed.infotext = dict(p.extra_generation_params)
    return processed
