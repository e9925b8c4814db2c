# Stand-in for Comfy-Org/ComfyUI comfy/model_sampling.py at a125cd84b054a57729b5eecab930ca9408719832.
# Kept faithful: EPS (input scaled by 1/sqrt(sigma^2 + 1), denoised = x - eps * sigma, the noise
# scaling of the first step), and ModelSamplingDiscrete: SD's linear beta schedule (0.00085 to
# 0.012, 1000 steps) as sigmas, timestep() (the nearest of the 1000 in log sigma), sigma() (log
# interpolation) and percent_to_sigma (0 -> 999999999.9, 1 -> 0, else sigma at (1 - p) * 999).
# CONST (flow matching: the input unscaled, denoised = x - v * sigma, noise_scaling sigma * noise +
# (1 - sigma) * latent) and ModelSamplingDiscreteFlow (time_snr_shift of t, percent_to_sigma 0 -> 1,
# 1 -> 0, else the shifted 1 - p), the transformer models' sampling.
# Simplified: the schedule comes from ldm's make_beta_schedule, which is the same formula; no zsnr;
# Flux's ModelSamplingFlux (an exponential shift) is given ModelSamplingDiscreteFlow's.
import torch
from ldm.modules.diffusionmodules.util import make_beta_schedule


def reshape_sigma(sigma, noise_dim):
    if sigma.nelement() == 1:
        return sigma.view(())
    return sigma.view(sigma.shape[:1] + (1,) * (noise_dim - 1))


class EPS:
    def calculate_input(self, sigma, noise):
        sigma = reshape_sigma(sigma, noise.ndim)
        return noise / (sigma ** 2 + self.sigma_data ** 2) ** 0.5

    def calculate_denoised(self, sigma, model_output, model_input):
        sigma = reshape_sigma(sigma, model_output.ndim)
        return model_input - model_output * sigma

    def noise_scaling(self, sigma, noise, latent_image, max_denoise=False):
        sigma = reshape_sigma(sigma, noise.ndim)
        noise = noise * torch.sqrt(1.0 + sigma ** 2.0) if max_denoise else noise * sigma
        return noise + latent_image

    def inverse_noise_scaling(self, sigma, latent):
        return latent


class ModelSamplingDiscrete(torch.nn.Module):
    def __init__(self, model_config=None):
        super().__init__()
        betas = torch.as_tensor(make_beta_schedule("linear", 1000, linear_start=0.00085, linear_end=0.012))
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        self.num_timesteps = 1000
        self.set_sigmas(((1 - alphas_cumprod) / alphas_cumprod) ** 0.5)
        self.sigma_data = 1.0

    def set_sigmas(self, sigmas):
        self.register_buffer("sigmas", sigmas.float())
        self.register_buffer("log_sigmas", sigmas.log().float())

    @property
    def sigma_min(self):
        return self.sigmas[0]

    @property
    def sigma_max(self):
        return self.sigmas[-1]

    def timestep(self, sigma):
        log_sigma = sigma.log()
        dists = log_sigma.to(self.log_sigmas.device) - self.log_sigmas[:, None]
        return dists.abs().argmin(dim=0).view(sigma.shape).to(sigma.device)

    def sigma(self, timestep):
        t = torch.clamp(timestep.float().to(self.log_sigmas.device), min=0, max=(len(self.sigmas) - 1))
        low_idx, high_idx, w = t.floor().long(), t.ceil().long(), t.frac()
        log_sigma = (1 - w) * self.log_sigmas[low_idx] + w * self.log_sigmas[high_idx]
        return log_sigma.exp().to(timestep.device)

    def percent_to_sigma(self, percent):
        if percent <= 0.0:
            return 999999999.9
        if percent >= 1.0:
            return 0.0
        percent = 1.0 - percent
        return self.sigma(torch.tensor(percent * 999.0)).item()


class ModelSamplingDiscreteEPS(ModelSamplingDiscrete, EPS):
    """What comfy/model_base.py model_sampling() builds for an eps-prediction SD model."""


class CONST:
    def calculate_input(self, sigma, noise):
        return noise

    def calculate_denoised(self, sigma, model_output, model_input):
        sigma = reshape_sigma(sigma, model_output.ndim)
        return model_input - model_output * sigma

    def noise_scaling(self, sigma, noise, latent_image, max_denoise=False):
        sigma = reshape_sigma(sigma, noise.ndim)
        return sigma * noise + (1.0 - sigma) * latent_image

    def inverse_noise_scaling(self, sigma, latent):
        sigma = reshape_sigma(sigma, latent.ndim)
        return latent / (1.0 - sigma)


def time_snr_shift(alpha, t):
    if alpha == 1.0:
        return t
    return alpha * t / (1 + (alpha - 1) * t)


class ModelSamplingDiscreteFlow(torch.nn.Module):
    def __init__(self, shift=1.0, multiplier=1000):
        super().__init__()
        self.shift, self.multiplier = shift, multiplier
        self.register_buffer("sigmas", self.sigma((torch.arange(1, 1001, 1) / 1000) * multiplier))

    @property
    def sigma_min(self):
        return self.sigmas[0]

    @property
    def sigma_max(self):
        return self.sigmas[-1]

    def timestep(self, sigma):
        return sigma * self.multiplier

    def sigma(self, timestep):
        return time_snr_shift(self.shift, timestep / self.multiplier)

    def percent_to_sigma(self, percent):
        if percent <= 0.0:
            return 1.0
        if percent >= 1.0:
            return 0.0
        return time_snr_shift(self.shift, 1.0 - percent)


class ModelSamplingFlowCONST(ModelSamplingDiscreteFlow, CONST):
    """What comfy/model_base.py model_sampling() builds for a flow model (ModelType.FLOW / FLUX)."""
