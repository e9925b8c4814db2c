# Stand-in for Forge Neo backend/modules/k_prediction.py (exo101/sd-webui-forge-neo-v3 5692d2d,
# webui/backend/modules/k_prediction.py:28-36, :58-100, :151-217): PredictionFlux, the rectified
# flow ("const") predictor of Flux and Chroma, and PredictionDiscreteFlow. Kept faithful: the input is the latent itself, the
# timestep is sigma, denoised = x - output * sigma, and the sigmas (whose ends are sigma_min and
# sigma_max) are flux_time_shift(shift, 1, t) at t = 1/10000 ... 1. The sigma range and the
# denoised formula are the eps predictor's (the stand-in's Prediction), shared as in Neo,
# where both derive from AbstractPrediction.
import math

import torch

from backend.modules.k_model import Prediction


def flux_time_shift(mu, sigma, t):
    return math.exp(mu) / (math.exp(mu) + (1 / t - 1) ** sigma)


class PredictionFlux(Prediction):
    def __init__(self, shift=1.15, timesteps=10000):
        torch.nn.Module.__init__(self)
        self.shift = shift
        self.register_buffer("sigmas", self.sigma(torch.arange(1, timesteps + 1, 1) / timesteps))

    def timestep(self, sigma):
        return sigma

    def sigma(self, timestep):
        return flux_time_shift(self.shift, 1.0, timestep)

    def calculate_input(self, sigma, noise):
        return noise


def time_snr_shift(alpha, t):
    if alpha == 1.0:
        return t
    return alpha * t / (1 + (alpha - 1) * t)


class PredictionDiscreteFlow(PredictionFlux):
    """The flow predictor of Lumina 2 (shift 6) and Z-Image (shift 3), both with multiplier 1
    (k_prediction.py:185-217): the timestep is sigma * multiplier, the sigmas time_snr_shift(shift, t)."""

    def __init__(self, shift=6.0, multiplier=1.0, timesteps=1000):
        torch.nn.Module.__init__(self)
        self.shift, self.multiplier = shift, multiplier
        self.register_buffer("sigmas", self.sigma(torch.arange(1, timesteps + 1, 1) / timesteps * multiplier))

    def timestep(self, sigma):
        return sigma * self.multiplier

    def sigma(self, timestep):
        return time_snr_shift(self.shift, timestep / self.multiplier)
