"""``python -m asag.bench comfy`` keeps working (its figures go into the README): small models, one run."""
import pytest

from asag.comfybench import bench_comfy
from tests.hosts.a1111_harness import TINY_UNET
from tests.hosts.comfy_env import DIT_MODELS


@pytest.mark.parametrize("model, rows", [
    ("sd15", ["CFG", "CFG + PAG", "CFG + ASAG middle, full extra pass", "CFG + ASAG middle, reuse"]),
    ("flux", ["plain", "SkipLayerGuidanceDiT", "ASAG double 7-9, single 7-9, full extra pass", "ASAG double 7-9, single 7-9, reuse"]),
])
def test_the_comfyui_benchmark_runs_its_configurations(capsys, model, rows):
    config = dict(TINY_UNET, context_dim=32) if model == "sd15" else dict(DIT_MODELS["flux"][3], depth=10, depth_single_blocks=10)
    bench_comfy(1, model, latent=8, steps=1, unet_params=config, text_tokens=8)
    lines = capsys.readouterr().out.splitlines()
    assert [line.rsplit(None, 6)[0].strip() for line in lines[-len(rows):]] == rows
    for line in lines[-len(rows):]:
        seconds, spread, baseline_ratio, rival_ratio, peak_mib, peak_ratio = map(float, line.rsplit(None, 6)[1:])
        assert seconds > 0 and baseline_ratio > 0 and rival_ratio > 0
