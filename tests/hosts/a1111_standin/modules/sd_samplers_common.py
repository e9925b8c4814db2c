"""Stands for modules/sd_samplers_common.py of v1.10.1 (the parts the denoiser calls)."""
from modules import shared


class InterruptedException(BaseException):
    pass


def apply_refiner(cfg_denoiser, sigma=None):
    """The refiner switch, by sampling steps: once ``p.refiner_switch_at`` of the steps are done,
    the refiner model replaces ``shared.sd_model`` (the host reloads weights; here the test gives
    the model), the conds are made again for it and the denoiser drops its inner model."""
    p = cfg_denoiser.p
    refiner = getattr(p, "refiner_model", None)
    if refiner is None or shared.sd_model is refiner:
        return False
    completed_ratio = cfg_denoiser.step / cfg_denoiser.total_steps
    if p.refiner_switch_at is not None and completed_ratio < p.refiner_switch_at:
        return False
    p.extra_generation_params["Refiner"] = "refiner"
    p.extra_generation_params["Refiner switch at"] = p.refiner_switch_at
    shared.sd_model = refiner
    cfg_denoiser.update_inner_model()
    return True


def store_latent(decoded):
    pass  # live preview
