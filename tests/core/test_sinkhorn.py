"""The seven properties of the operator's contract (asag-method.md, section 2)."""
import math
import weakref

import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch.utils._python_dispatch import TorchDispatchMode

from asag import sinkhorn
from asag.bench import measure_memory_cases
from asag.sinkhorn import adversarial_sinkhorn_attention as asa, adversarial_sinkhorn_attention_heads as asa_heads
from tests.core.reference import reference_attention


def rand(*shape, seed=0, scale=1.0, dtype=torch.float32):
    return (torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale).to(dtype)


def plan_of(q, k, **kwargs):
    """The operator's plan P itself: with v = identity, P @ v = P."""
    n_k = k.shape[-2]
    eye = torch.eye(n_k, dtype=q.dtype).expand(*k.shape[:-2], n_k, n_k)
    return asa(q, k, eye, **kwargs).double()


shapes = st.tuples(
    st.integers(1, 3),  # groups (batch x heads)
    st.integers(1, 40),  # n_q
    st.integers(0, 30),  # extra keys (n_k >= n_q, as reference-only makes)
    st.sampled_from([4, 8, 16, 40]),  # d
)


@settings(max_examples=60, deadline=None)
@given(shape=shapes, iterations=st.integers(0, 6), strength=st.floats(-2, 3), seed=st.integers(0, 2**16), amplitude=st.floats(0.1, 3))
def test_rows_sum_to_one_and_match_float64_reference(shape, iterations, strength, seed, amplitude):
    groups, n_q, extra, d = shape
    n_k = n_q + extra
    q, k, v = rand(groups, n_q, d, seed=seed, scale=amplitude), rand(groups, n_k, d, seed=seed + 1, scale=amplitude), rand(groups, n_k, 5, seed=seed + 2)
    plan = plan_of(q, k, iterations=iterations, strength=strength)
    torch.testing.assert_close(plan.sum(-1), torch.ones(groups, n_q, dtype=torch.float64), atol=1e-5, rtol=0)  # property 1
    ref = reference_attention(q, k, v, iterations=iterations, strength=strength)
    out = asa(q, k, v, iterations=iterations, strength=strength)
    assert (out.double() - ref).abs().max() <= 1e-4  # property 5


def test_output_is_not_shrunk_by_the_marginals():
    # The public port's bug: a plan with 1/n marginals used unscaled shrinks the output n-fold.
    q, k = rand(2, 64, 16), rand(2, 64, 16, seed=1)
    v = torch.ones(2, 64, 3)
    torch.testing.assert_close(asa(q, k, v, iterations=5), torch.ones(2, 64, 3), atol=1e-5, rtol=0)


def test_zero_iterations_is_softmax_of_negated_logits():
    q, k = rand(3, 20, 8), rand(3, 25, 8, seed=1)
    expected = torch.softmax(-1.0 * 8 ** -0.5 * q @ k.transpose(-1, -2), dim=-1).double()
    torch.testing.assert_close(plan_of(q, k, iterations=0), expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("iterations", [0, 1, 7])
def test_zero_strength_is_the_mean_of_v(iterations):
    q, k, v = rand(2, 10, 8), rand(2, 12, 8, seed=1), rand(2, 12, 4, seed=2)
    out = asa(q, k, v, iterations=iterations, strength=0.0)
    torch.testing.assert_close(out, v.mean(dim=1, keepdim=True).expand(2, 10, 4), atol=1e-6, rtol=0)


def test_negative_strength_without_iterations_is_ordinary_attention():
    q, k, v = rand(2, 4, 30, 16), rand(2, 4, 30, 16, seed=1), rand(2, 4, 30, 16, seed=2)
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(asa(q, k, v, iterations=0, strength=-1.0), expected, atol=1e-5, rtol=1e-5)


def test_adversarial_plan_prefers_dissimilar_keys():
    # Each query's heaviest key under ASAG is its least similar one at T = 0.
    q, k = rand(1, 16, 8, scale=2), rand(1, 16, 8, seed=1, scale=2)
    plan = plan_of(q, k, iterations=0)
    assert torch.equal(plan.argmax(-1), (q @ k.transpose(-1, -2)).argmin(-1).view(1, 16))


@pytest.mark.parametrize("n_q,n_k", [(32, 32), (24, 40)])
def test_columns_converge_to_target(n_q, n_k):
    q, k = rand(2, n_q, 16), rand(2, n_k, 16, seed=1)
    target = n_q / n_k
    errors = [(plan_of(q, k, iterations=t).sum(-2) - target).abs().max().item() for t in (0, 2, 10, 30)]
    assert errors[2] <= 1e-3, errors  # property 3
    assert errors[0] > errors[1] > errors[2] and errors[3] <= 1e-5, errors


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("amplitude", [1.0, 12.0, 40.0])
def test_finite_for_huge_logits_in_every_dtype(dtype, amplitude):
    # amplitude 40, d 64: logits reach ~1e3 and rows span far more than 100 (exp overflows float32 past 88).
    q, k, v = rand(2, 3, 50, 64, scale=amplitude, dtype=dtype), rand(2, 3, 60, 64, seed=1, scale=amplitude, dtype=dtype), rand(2, 3, 60, 64, seed=2, dtype=dtype)
    logits = 64 ** -0.5 * q.double() @ k.double().transpose(-1, -2)
    if amplitude == 40.0:
        assert logits.abs().max() > 1e3 and (logits.amax(-1) - logits.amin(-1)).min() > 100
    for iterations in (0, 2, 10):
        out = asa(q, k, v, iterations=iterations)
        assert out.dtype == dtype
        assert torch.isfinite(out).all(), (dtype, amplitude, iterations)
        ref = reference_attention(q, k, v, iterations=iterations)
        tolerance = {torch.float32: 2e-3, torch.float16: 2e-2, torch.bfloat16: 1e-1}[dtype]
        assert (out.double() - ref).abs().max() <= tolerance


def test_scaling_and_log_forms_agree(monkeypatch):
    q, k, v = rand(4, 40, 16, scale=2), rand(4, 50, 16, seed=1, scale=2), rand(4, 50, 8, seed=2)
    fast = asa(q, k, v, iterations=4)
    monkeypatch.setattr(sinkhorn, "SCALING_SPAN_LIMIT", 0.0)  # forces the log form
    slow = asa(q, k, v, iterations=4)
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=0)


@pytest.mark.parametrize("tile_bytes", [1, 3 * 7 * 50 * 4])  # one row per tile; 7 rows, the last tile ragged
def test_row_tiles_give_the_untiled_result(monkeypatch, tile_bytes):
    q, k, v = rand(3, 40, 16, scale=2), rand(3, 50, 16, seed=1, scale=2), rand(3, 50, 8, seed=2)
    untiled = asa(q, k, v, iterations=3)
    monkeypatch.setattr(sinkhorn, "CPU_TILE_BYTES", tile_bytes)
    torch.testing.assert_close(asa(q, k, v, iterations=3), untiled, atol=1e-5, rtol=0)  # summation order differs
    assert (untiled.double() - reference_attention(q, k, v, iterations=3)).abs().max() <= 1e-5


def test_a_wide_row_in_a_late_tile_switches_the_chunk_to_the_log_form(monkeypatch):
    q, k, v = rand(2, 30, 8), rand(2, 30, 8, seed=1), rand(2, 30, 4, seed=2)
    q[:, -1] *= 200  # the last row spans far more than the scaling form allows
    monkeypatch.setattr(sinkhorn, "CPU_TILE_BYTES", 2 * 4 * 30 * 4)  # 4 rows per tile
    out = asa(q, k, v, iterations=2)
    assert torch.isfinite(out).all()
    assert (out.double() - reference_attention(q, k, v, iterations=2)).abs().max() <= 1e-4


class LiveMemory(TorchDispatchMode):
    """Measures what a call allocates: every tensor storage an operation creates counts from its
    creation until it is freed (a finalizer on the storage), and ``peak`` is the most alive at
    once. Storages that existed before (the inputs) are not counted."""

    def __init__(self, *existing):
        super().__init__()
        self.known = {id(t.untyped_storage()) for t in existing}
        self.live = self.peak = self.largest = 0
        self.sizes = []  # of every storage created, in order
        self.syncs = 0  # device-to-host reads (.item(), bool() of a tensor)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self.syncs += 1
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and id(t.untyped_storage()) not in self.known:
                self._track(t.untyped_storage())
        return out

    def _track(self, storage):
        size = storage.nbytes()
        self.known.add(id(storage))
        self.live += size
        self.peak, self.largest = max(self.peak, self.live), max(self.largest, size)
        self.sizes.append(size)
        weakref.finalize(storage, self._free, id(storage), size)

    def _free(self, key, size):
        self.known.discard(key)
        self.live -= size


@pytest.mark.parametrize("amplitude", [1.0, 40.0])  # the scaling form and the log form
def test_memory_stays_within_one_chunk(amplitude):
    groups, n = 16, 256
    one_slice = n * n * 4
    # d small enough that q, k, v and the output are smaller than one n x n slice
    q, k, v = rand(groups, n, 8, scale=amplitude * 2), rand(groups, n, 8, seed=1, scale=amplitude * 2), rand(groups, n, 8, seed=2)
    budget = 2 * one_slice
    with LiveMemory(q, k, v) as tracker:
        out = asa(q, k, v, iterations=2, budget_bytes=budget)
    assert tracker.largest <= budget, (tracker.largest, groups * one_slice)  # never the full groups x n x n
    torch.testing.assert_close(out, asa(q, k, v, iterations=2), atol=1e-6, rtol=0)
    with LiveMemory(q, k, v) as tracker:  # smaller than one slice: streamed row by row (4 groups: 1024 tiles a pass)
        asa(q[:4], k[:4], v[:4], iterations=2, budget_bytes=1)
    assert tracker.largest < one_slice


# ---- streaming: one head's slice larger than the budget ------------------------------------------
def streamed(monkeypatch, gpu_layout=False):
    """Make every call stream its kernel: a budget of one group's vectors and a few rows, so that
    the weighted values go block by block too (and, with ``gpu_layout``, the layout a CUDA device
    gets, so that the GPU code path runs here on the CPU)."""
    real = sinkhorn.layout_for

    def layout(groups, n_q, n_k, on_cpu, budget_bytes, *, d=0, d_v=0, itemsize=4):
        rows = sinkhorn.tile_row_bytes(n_k, d, d_v, itemsize)
        budget = min(budget_bytes, sinkhorn.group_vector_bytes(n_q, n_k, d, d_v, 1) + 6 * rows)
        chosen = real(groups, n_q, n_k, on_cpu and not gpu_layout, budget, d=d, d_v=d_v, itemsize=itemsize)
        # a few rows per tile, never a multiple of n_q here; values in blocks, the last one short
        assert not chosen.keep and 1 < chosen.tile_rows < n_q and n_k % chosen.value_block, chosen
        return chosen
    monkeypatch.setattr(sinkhorn, "layout_for", layout)


STREAM_SHAPES = [(2, 23, 23, 16), (3, 17, 41, 8), (1, 40, 45, 40)]  # groups, n_q, n_k, d


@pytest.mark.parametrize("gpu_layout", [False, True])
@pytest.mark.parametrize("groups,n_q,n_k,d", STREAM_SHAPES)
@pytest.mark.parametrize("iterations", [0, 1, 3])
def test_streaming_matches_the_float64_reference(monkeypatch, gpu_layout, groups, n_q, n_k, d, iterations):
    q, k, v = rand(groups, n_q, d, scale=1.5), rand(groups, n_k, d, seed=1, scale=1.5), rand(groups, n_k, 6, seed=2)
    kept = asa(q, k, v, iterations=iterations)
    streamed(monkeypatch, gpu_layout)
    out = asa(q, k, v, iterations=iterations)
    assert (out.double() - reference_attention(q, k, v, iterations=iterations)).abs().max() <= 1e-5  # property 5
    torch.testing.assert_close(out, kept, atol=1e-5, rtol=0)
    assert (plan_of(q, k, iterations=iterations).sum(-1) - 1).abs().max() <= 1e-5  # property 1


@pytest.mark.parametrize("gpu_layout", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_streaming_log_form_for_wide_rows_in_every_dtype(monkeypatch, gpu_layout, dtype):
    # amplitude 40, d 64: logits reach ~1e3 and rows span far more than 100: the log form, streamed.
    q, k, v = rand(2, 37, 64, scale=40, dtype=dtype), rand(2, 53, 64, seed=1, scale=40, dtype=dtype), rand(2, 53, 16, seed=2, dtype=dtype)
    streamed(monkeypatch, gpu_layout)
    for iterations in (1, 2, 10):
        out = asa(q, k, v, iterations=iterations)
        assert out.dtype == dtype and torch.isfinite(out).all()
        tolerance = {torch.float32: 2e-3, torch.float16: 2e-2, torch.bfloat16: 1e-1}[dtype]
        assert (out.double() - reference_attention(q, k, v, iterations=iterations)).abs().max() <= tolerance


def test_streaming_switches_to_the_log_form_for_one_wide_row_in_a_late_tile(monkeypatch):
    q, k, v = rand(2, 30, 8), rand(2, 33, 8, seed=1), rand(2, 33, 4, seed=2)
    q[:, -1] *= 200
    streamed(monkeypatch)
    out = asa(q, k, v, iterations=2)
    assert (out.double() - reference_attention(q, k, v, iterations=2)).abs().max() <= 1e-4


@pytest.mark.parametrize("amplitude,tolerance", [(1.0, 1e-4), (40.0, 2e-3)])  # the scaling form; the log form
def test_a_few_mib_budget_streams_one_head_to_the_reference(amplitude, tolerance):
    # One head of 2048 tokens: a 16 MiB slice, streamed within a 2 MiB budget (its memory:
    # test_the_budget_bounds_the_resident_peak).
    n, d = 2048, 16
    q, k, v = rand(1, n, d, scale=amplitude), rand(1, n, d, seed=1, scale=amplitude), rand(1, n, d, seed=2)
    with LiveMemory(q, k, v) as tracker:
        out = asa(q, k, v, iterations=2, budget_bytes=2 * 2**20)
    assert tracker.largest < n * n * 4 / 8
    # logits of ~1e3 (amplitude 40) leave float32 about 1e-3 (test_finite_for_huge_logits_in_every_dtype)
    assert (out.double() - reference_attention(q, k, v, iterations=2)).abs().max() <= tolerance


@pytest.mark.parametrize("amplitude,syncs", [(1.0, 1), (40.0, 2)])  # bound holds; span checked once
def test_host_syncs_per_chunk_do_not_grow_with_the_tiles(monkeypatch, amplitude, syncs):
    q, k, v = rand(1, 64, 16, scale=amplitude), rand(1, 64, 16, seed=1, scale=amplitude), rand(1, 64, 16, seed=2)
    streamed(monkeypatch, gpu_layout=True)  # 22 tiles
    with LiveMemory(q, k, v) as tracker:
        asa(q, k, v, iterations=3)
    assert tracker.syncs == syncs


def test_heads_layout_matches_per_head_computation():
    b, n_q, n_k, heads, d = 2, 12, 20, 4, 8
    q, k, v = rand(b, n_q, heads * d), rand(b, n_k, heads * d, seed=1), rand(b, n_k, heads * d, seed=2)
    out = asa_heads(q, k, v, heads, iterations=3)
    assert out.shape == (b, n_q, heads * d)
    for h in range(heads):
        cols = slice(h * d, (h + 1) * d)
        expected = reference_attention(q[..., cols], k[..., cols], v[..., cols], iterations=3)
        assert (out[..., cols].double() - expected).abs().max() <= 1e-5
    # Not the public port's single head of width heads * d:
    assert (out.double() - reference_attention(q, k, v, iterations=3, scale=d ** -0.5)).abs().max() > 1e-3


def test_leading_dims_and_dtype_are_kept():
    q, k, v = rand(2, 3, 7, 8, dtype=torch.float16), rand(2, 3, 9, 8, seed=1, dtype=torch.float16), rand(2, 3, 9, 5, seed=2, dtype=torch.float16)
    out = asa(q, k, v, iterations=2)
    assert out.shape == (2, 3, 7, 5) and out.dtype == torch.float16


def test_runs_in_float32_under_autocast():
    q, k, v = rand(2, 30, 16, scale=6), rand(2, 30, 16, seed=1, scale=6), rand(2, 30, 16, seed=2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = asa(q, k, v, iterations=2)
    assert out.dtype == torch.float32
    assert (out.double() - reference_attention(q, k, v, iterations=2)).abs().max() <= 1e-4


@pytest.mark.parametrize("bad", [
    dict(iterations=-1), dict(iterations=1.5),
])
def test_rejects_bad_iterations(bad):
    q = rand(1, 4, 8)
    with pytest.raises(ValueError, match="iterations"):
        asa(q, q, q, **bad)


def test_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="shape mismatch"):
        asa(rand(2, 4, 8), rand(2, 5, 6), rand(2, 5, 3), iterations=1)
    with pytest.raises(ValueError, match="divisible"):
        asa_heads(rand(1, 4, 10), rand(1, 4, 10), rand(1, 4, 10), 3, iterations=1)


def test_nan_input_propagates_instead_of_raising():
    # Not an exception inside the UNet: the host's own NaN check then reports it with its advice
    # (fp16 overflow, --no-half). Sinkhorn couples rows, so one NaN query spoils the whole plan.
    q = rand(1, 4, 8)
    q[0, 0, 0] = math.nan
    assert asa(q, rand(1, 4, 8), rand(1, 4, 8), iterations=0)[0, 0].isnan().all()
    assert asa(q, rand(1, 4, 8), rand(1, 4, 8), iterations=1).isnan().all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("budget_mib", [4, 16])
def test_a_streamed_call_of_several_groups_matches_the_reference(dtype, budget_mib):
    # Several groups (the chunk holds more than one), streamed (its memory:
    # test_the_budget_bounds_the_resident_peak).
    groups, n, d = 8, 2048, 64  # a 16 MiB slice per group
    q, k, v = (rand(groups, n, d, seed=seed, dtype=dtype) for seed in range(3))
    budget = budget_mib * 2**20
    layout = sinkhorn.layout_for(groups, n, n, True, budget, d=d, d_v=d, itemsize=q.element_size())
    assert not layout.keep and (budget_mib == 4 or layout.chunk > 1)
    out = asa(q, k, v, iterations=2, budget_bytes=budget)
    tolerance = 1e-4 if dtype == torch.float32 else 2e-2
    assert (out.double() - reference_attention(q, k, v, iterations=2)).abs().max() <= tolerance


# (heads, tokens, d, dtype, budget MiB, amplitude): one head streamed within 2 MiB (the scaling
# form; the log form); 8 groups, streamed several at a time; a UNet's first level at 1024x1024
# (16 heads of 64 over 4096 tokens) in float32 and bfloat16. (Flux's image at 2048x2048, 16,384
# tokens of 128: test_joint.test_flux_shapes_stay_within_the_budget.)
BUDGET_CASES = [
    *((1, 2048, 16, "float32", 2, amplitude) for amplitude in (1.0, 40.0)),
    *((8, 2048, 64, dtype, budget, 1.0) for dtype in ("float32", "float16") for budget in (4, 16)),
    *((16, 4096, 64, dtype, 16, 1.0) for dtype in ("float32", "bfloat16")),
]


def test_the_budget_bounds_the_resident_peak():
    """What one call holds at once besides its output (the allocator's peak: every tensor and the
    temporaries inside PyTorch's kernels, measured in a fresh process by asag.bench) stays within
    1.25 times the budget: the kernel tiles and every per-group temporary are counted."""
    cases = [dict(op="unet", heads=heads, n_txt=0, n_img=n, d=d, dtype=dtype, budget_mib=budget, amplitude=amplitude)
             for heads, n, d, dtype, budget, amplitude in BUDGET_CASES]
    results = measure_memory_cases(cases, "cpu")
    ratios = {tuple(case[1:]): round(r["peak"] / (r["budget_mib"] * 2**20), 2) for case, r in zip(BUDGET_CASES, results)}
    assert all(ratio <= 1.25 for ratio in ratios.values()), ratios


def test_strided_projections_are_read_in_place_and_the_output_written_in_place():
    """(batch, heads, tokens, dim) views of (batch, tokens, heads, dim) memory, as Qwen-Image's
    attention holds them: the same result as from contiguous copies, with nothing of an input's
    size allocated (a budget of one group at a time), and written into a slice of a larger
    output when given one."""
    b, heads, n, d = 2, 3, 40, 16
    q, k, v = (rand(b, n, heads, d, seed=seed).transpose(1, 2) for seed in range(3))
    expected = asa(q.contiguous(), k.contiguous(), v.contiguous(), iterations=3)
    with LiveMemory(q, k, v) as tracker:
        out = asa(q, k, v, iterations=3, budget_bytes=16 * 1024)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)
    input_sized = [size for size in tracker.sizes if size >= q.numel() * q.element_size()]
    assert input_sized == [out.numel() * out.element_size()], input_sized  # the output alone
    larger = torch.zeros(b, n + 5, heads, d)
    into = larger[:, 5:].transpose(1, 2)
    assert asa(q, k, v, iterations=3, out=into) is into and larger[:, :5].abs().max() == 0
    torch.testing.assert_close(into, expected, atol=1e-6, rtol=0)


def test_the_heads_layout_copies_nothing_in_or_out():
    """(B, N, heads * dim) projections, as attention modules hand them over: the heads are read as
    views and the output written in that layout, so that the only allocation of an input's size
    is the output itself."""
    b, n, heads, d = 2, 40, 3, 16
    q, k, v = (rand(b, n, heads * d, seed=seed) for seed in range(3))
    with LiveMemory(q, k, v) as tracker:
        out = asa_heads(q, k, v, heads, iterations=2, budget_bytes=16 * 1024)  # one group at a time
    assert [size for size in tracker.sizes if size >= q.numel() * 4] == [out.numel() * 4]
    torch.testing.assert_close(out, asa_heads(q, k, v, heads, iterations=2), atol=1e-6, rtol=0)


def test_rejects_an_output_of_the_wrong_shape_or_dtype():
    q = rand(2, 4, 8)
    with pytest.raises(ValueError, match=r"out must be \(2, 4, 8\) in torch.float32"):
        asa(q, q, q, iterations=1, out=torch.empty(2, 4, 7))
    with pytest.raises(ValueError, match="out must be"):
        asa(q, q, q, iterations=1, out=torch.empty(2, 4, 8, dtype=torch.float16))


def test_inputs_that_require_grad_give_the_same_result():
    """A sampler may run the model with autograd on (ComfyUI's UniPC, called outside ComfyUI's
    executor, which otherwise wraps every node in inference mode): the projections then require
    grad, and the operator must still compute, streamed and kept alike."""
    q, k, v = (rand(2, 64, 16, seed=seed) for seed in range(3))
    for budget in (sinkhorn.MEMORY_BUDGET_BYTES, 16 * 1024):
        expected = asa(q, k, v, iterations=2, budget_bytes=budget)
        weights = torch.nn.Parameter(torch.eye(16))
        out = asa(q @ weights, k @ weights, v @ weights, iterations=2, budget_bytes=budget)
        torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)
