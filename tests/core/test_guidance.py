"""Guidance arithmetic and the active window / schedule."""
import math

import pytest
import torch

from asag.guidance import apply_guidance, guidance_term, progress_from_sigma, progress_from_steps, rescale_to, scale_at
from asag.params import AsagParams


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_combination_is_cfg_plus_scaled_difference():
    cfg, cond, perturbed = rand(2, 4, 8, 8), rand(2, 4, 8, 8, seed=1), rand(2, 4, 8, 8, seed=2)
    out = apply_guidance(cfg, cond, perturbed, 1.7)
    torch.testing.assert_close(out, cfg + 1.7 * (cond - perturbed))
    torch.testing.assert_close(guidance_term(cond, perturbed, 0.0), torch.zeros_like(cond))
    assert torch.equal(apply_guidance(cfg, cond, perturbed, 0.0), cfg)


def test_rescale_matches_the_reference_std_per_sample():
    guided, reference = rand(3, 4, 8, 8) * 5, rand(3, 4, 8, 8, seed=1)
    full = rescale_to(guided, reference, 1.0)
    torch.testing.assert_close(full.std(dim=(1, 2, 3)), reference.std(dim=(1, 2, 3)))
    assert torch.equal(rescale_to(guided, reference, 0.0), guided)
    half = rescale_to(guided, reference, 0.5)
    torch.testing.assert_close(half, 0.5 * guided + 0.5 * full)


def test_progress_from_steps():
    assert [progress_from_steps(s, 5) for s in range(5)] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert progress_from_steps(0, 1) == 0.0  # one step: no division by zero
    assert progress_from_steps(9, 5) == 1.0


def test_progress_from_sigma_is_log_linear():
    assert progress_from_sigma(14.6, 0.03, 14.6) == 0.0
    assert progress_from_sigma(0.03, 0.03, 14.6) == pytest.approx(1.0)
    assert progress_from_sigma(math.sqrt(0.03 * 14.6), 0.03, 14.6) == pytest.approx(0.5)
    assert progress_from_sigma(100.0, 0.03, 14.6) == 0.0
    with pytest.raises(ValueError):
        progress_from_sigma(1.0, 2.0, 1.0)


def test_window_and_schedules():
    params = AsagParams(enabled=True, scale=2.0, start=0.2, end=0.6)
    assert scale_at(params, 0.1) == 0.0 and scale_at(params, 0.7) == 0.0
    assert scale_at(params, 0.2) == scale_at(params, 0.6) == 2.0
    linear, cosine = params.replace(schedule="linear"), params.replace(schedule="cosine")
    assert scale_at(linear, 0.2) == 2.0 and scale_at(linear, 0.4) == pytest.approx(1.0) and scale_at(linear, 0.6) == pytest.approx(0.0)
    assert scale_at(cosine, 0.4) == pytest.approx(1.0) and scale_at(cosine, 0.3) == pytest.approx(1.0 + math.sqrt(0.5))
    assert scale_at(params.replace(enabled=False), 0.3) == 0.0
    assert scale_at(params.replace(scale=0.0), 0.3) == 0.0
    point = params.replace(start=0.5, end=0.5, schedule="linear")  # a one-point window keeps the full scale
    assert scale_at(point, 0.5) == 2.0
