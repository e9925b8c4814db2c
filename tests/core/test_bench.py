"""The benchmark commands keep working (their figures go into the README): run at small sizes."""
from asag import bench


def table_rows(text):
    """The rows under the table's dashed line, split into cells."""
    lines = text.strip().splitlines()
    dashes = next(i for i, line in enumerate(lines) if set(line.replace(" ", "")) == {"-"})
    return [line.split() for line in lines[dashes + 1:]]


def test_attention_benchmark_prints_ratios_of_one_run(monkeypatch, capsys):
    monkeypatch.setattr(bench, "ATTENTION_SHAPES", ((4, 256, 16),))
    bench.main(["attention", "--device", "cpu", "--repeats", "1"])
    rows = table_rows(capsys.readouterr().out)
    (row,) = rows
    asag_ms, textbook_ms, sdpa_ms, asag_mib, textbook_mib, sdpa_mib, vs_textbook, vs_sdpa, peak_ratio = map(float, row[1:])
    assert row[0] == "4x256x16"
    assert min(asag_ms, textbook_ms, sdpa_ms, vs_textbook, vs_sdpa) > 0
    assert textbook_mib >= 3  # three 4 x 256 x 256 float32 buffers: the peak is measured, not zero


def test_large_attention_benchmark_compares_with_sdpa_only(monkeypatch, capsys):
    monkeypatch.setattr(bench, "LARGE_ATTENTION_SHAPES", ((2, 512, 8),))
    bench.main(["attention", "--device", "cpu", "--repeats", "1", "--large"])
    out = capsys.readouterr().out
    assert "textbook" not in out
    (row,) = table_rows(out)
    asag_ms, sdpa_ms, asag_mib, sdpa_mib, vs_sdpa = map(float, row[1:])
    assert row[0] == "2x512x8" and min(asag_ms, sdpa_ms, vs_sdpa) > 0


def test_memory_benchmark_prints_the_peak_against_the_budget(monkeypatch, capsys):
    """Each case in a fresh process: the peak less the output, its ratio to the budget, the largest
    allocation and the time against SDPA on the same q, k, v."""
    monkeypatch.setattr(bench, "MEMORY_CASES", (
        dict(op="joint", heads=2, n_txt=64, n_img=1024, d=32, dtype="float32", budget_mib=1),
        dict(op="unet", heads=2, n_txt=0, n_img=1024, d=32, dtype="bfloat16", budget_mib=1),
    ))
    bench.main(["memory", "--device", "cpu"])
    rows = table_rows(capsys.readouterr().out)
    assert [row[:4] for row in rows] == [["joint", "2x64+1024x32", "float32", "1"], ["unet", "2x1024x32", "bfloat16", "1"]]
    for row in rows:
        output_mib, peak_mib, ratio, largest_mib, ms, sdpa_ms, vs_sdpa = map(float, row[4:])
        assert peak_mib > 0 and abs(ratio - peak_mib) < 0.06  # a 1 MiB budget: the ratio is the peak in MiB
        # the joint output is 2 x 1088 x 32 floats (0.27 MiB): one 1088 x 1088 matrix of a head would be 4.5 MiB
        assert 0 < largest_mib < 4 and min(ms, sdpa_ms, vs_sdpa) > 0
