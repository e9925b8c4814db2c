"""``python -m asag.bench step`` keeps working (its figures go into the README): a small UNet, one run."""
from asag.stepbench import bench_step
from tests.hosts.a1111_harness import TINY_UNET


def test_step_benchmark_runs_its_three_configurations(capsys):
    bench_step("cpu", repeats=1, latent=8, unet_params=dict(TINY_UNET, context_dim=768))
    lines = capsys.readouterr().out.splitlines()
    assert [line[:19].strip() for line in lines[-3:]] == ["CFG", "ASAG installed, off", "CFG + ASAG"]
    for line in lines[-3:]:
        seconds, spread, time_ratio, peak_mib, peak_ratio = map(float, line[19:].split())
        assert seconds > 0 and time_ratio > 0 and peak_ratio > 0
