"""Stands for modules/sd_samplers_common.py of v1.10.1 (the parts the denoiser calls)."""


class InterruptedException(BaseException):
    pass


def apply_refiner(cfg_denoiser, sigma=None):
    return False  # no refiner in these tests


def store_latent(decoded):
    pass  # live preview
