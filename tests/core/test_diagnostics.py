import math

import torch

from asag.diagnostics import Diagnostics, plan_statistics


def test_plan_statistics_measure_balance_and_spread():
    gen = torch.Generator().manual_seed(0)
    q, k = torch.randn(32, 16, generator=gen), torch.randn(48, 16, generator=gen)
    entropy0, error0 = plan_statistics(q, k, iterations=0, strength=1.0, scale=0.25)
    entropy20, error20 = plan_statistics(q, k, iterations=20, strength=1.0, scale=0.25)
    assert error20 < 1e-3 < error0  # Sinkhorn balances the columns
    assert 0 < entropy0 <= 1 and 0 < entropy20 <= 1
    uniform, _ = plan_statistics(q, k, iterations=3, strength=0.0, scale=0.25)
    assert math.isclose(uniform, 1.0, rel_tol=1e-5)


def test_summary_counts_nans_and_overhead():
    diagnostics = Diagnostics()
    assert "no extra pass" in diagnostics.summary()
    perturbed = torch.zeros(2, 4)
    perturbed[0, 0] = float("nan")
    diagnostics.main_seconds = 2.0
    diagnostics.record_pass(torch.full((2, 4), 0.5), perturbed, torch.ones(2, 4), seconds=1.0)
    summary = diagnostics.summary()
    assert "1 extra passes" in summary and "NaN values 1" in summary and "50% of the main passes" in summary
    assert "guidance RMS 0.5" in summary
