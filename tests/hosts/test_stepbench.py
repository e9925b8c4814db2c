"""``python -m asag.bench step`` keeps working (its figures go into the README): small UNets, one run."""
import pytest

from asag.stepbench import bench_step
from tests.hosts.a1111_harness import TINY_UNET

CONFIGURATIONS = ["CFG", "ASAG installed, off", "ASAG middle, full extra pass", "ASAG middle, reuse"]


@pytest.mark.parametrize("model", ["sd15", "sdxl"])
def test_step_benchmark_runs_its_configurations(capsys, model):
    context = [768] if model == "sd15" else [2048]
    bench_step("cpu", repeats=1, latent=8, unet_params=dict(TINY_UNET, context_dim=context[0]), model=model,
               layers=("middle",), steps=1)
    lines = capsys.readouterr().out.splitlines()
    rows = lines[-len(CONFIGURATIONS):]
    assert [row[:28].strip() for row in rows] == CONFIGURATIONS
    for row in rows:
        seconds, spread, time_ratio, peak_mib, peak_ratio = map(float, row[28:].split())
        assert seconds > 0 and time_ratio > 0 and peak_ratio > 0


def test_step_benchmark_rows_for_a_two_chunk_negative_prompt(capsys):
    bench_step("cpu", repeats=1, latent=8, unet_params=dict(TINY_UNET, context_dim=768), model="sd15",
               layers=("u6-8",), steps=1, negative_chunks=2)
    names = [line.rsplit(None, 5)[0].strip() for line in capsys.readouterr().out.splitlines()[-7:]]
    assert names[-3:] == ["CFG, 2-chunk negative", "ASAG u6-8, 2-chunk negative, full", "ASAG u6-8, 2-chunk negative, reuse"]


@pytest.mark.parametrize("model, blocks", [("flux", "double 7-9, single 7-9"), ("zimage", "layers 7-9"), ("anima", "blocks 7-9"),
                                          ("qwen", "blocks 7-9")])
def test_transformer_step_benchmark_runs_its_configurations(capsys, model, blocks):
    from asag.ditbench import bench_dit_step
    from tests.hosts.forge_dit_env import ANIMA, FLUX, QWEN, ZIMAGE

    config = {"flux": FLUX, "zimage": ZIMAGE, "anima": ANIMA, "qwen": QWEN}[model]
    bench_dit_step(1, model, latent=16, config=config, blocks=(blocks,), text_tokens=8)
    lines = capsys.readouterr().out.splitlines()
    names = [f"ASAG {blocks}, full extra pass", f"ASAG {blocks}, reuse"]
    assert [line.rsplit(None, 5)[0].strip() for line in lines[-3:]] == ["plain", *names]
    for line in lines[-3:]:
        seconds, spread, time_ratio, peak_mib, peak_ratio = map(float, line.rsplit(None, 5)[1:])
        assert seconds > 0 and time_ratio > 0
