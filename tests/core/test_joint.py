"""ASAG on joint text+image attention (asag/joint.py): the invariants of the chosen reading, read off
the attention matrix itself (one-hot values make each output row the row of weights)."""
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from asag.bench import joint_properties, measure_memory_cases
from asag.joint import joint_adversarial_attention
from asag.sinkhorn import adversarial_sinkhorn_attention
from tests.core.reference import reference_attention, reference_plan

HEADS, N_TXT, N_IMG, D = 3, 12, 48, 32
N = N_TXT + N_IMG


def qk(seed=0, amplitude=1.5):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(HEADS, N, D, generator=g) * amplitude for _ in range(2)]


def weights(q, k, image=slice(N_TXT, None), **kwargs):
    one_hot = torch.eye(q.shape[-2]).expand(q.shape[0], -1, -1)
    return joint_adversarial_attention(q, k, one_hot, image, **kwargs)


def model_attention(q, k):
    return torch.softmax(q @ k.transpose(1, 2) * D ** -0.5, dim=-1)


@pytest.mark.parametrize("iterations", [0, 2, 12])
def test_text_rows_are_the_models_and_image_rows_keep_their_text_share(iterations):
    q, k = qk()
    attention, model = weights(q, k, iterations=iterations), model_attention(q, k)
    props = joint_properties(attention, model, N_TXT)
    assert props["text rows changed (max)"] < 1e-5
    assert props["image rows' text share changed (max)"] < 1e-5
    assert props["image rows sum - 1 (max)"] < 1e-5
    # the image queries' weights on each text key are the model's own, not just their sum
    torch.testing.assert_close(attention[:, N_TXT:, :N_TXT], model[:, N_TXT:, :N_TXT], rtol=0, atol=1e-6)
    # and the image share is measurably redistributed
    assert (attention[:, N_TXT:, N_TXT:] - model[:, N_TXT:, N_TXT:]).abs().max() > 1e-2


def test_the_image_share_is_spread_by_the_adversarial_plan():
    """Image block = (the model's image share per row) x (the float64 reference plan among the image tokens)."""
    q, k = qk(1)
    attention, model = weights(q, k, iterations=3), model_attention(q, k)
    share = model[:, N_TXT:, N_TXT:].sum(-1, keepdim=True)
    plan = reference_plan(q[:, N_TXT:], k[:, N_TXT:], iterations=3).float()
    torch.testing.assert_close(attention[:, N_TXT:, N_TXT:], share * plan, rtol=0, atol=1e-5)


def test_image_columns_balance_as_iterations_grow():
    q, k = qk(2, amplitude=1.0)
    errors = [joint_properties(weights(q, k, iterations=t), model_attention(q, k), N_TXT)["image plan column error (max)"]
              for t in (1, 4, 30)]
    assert errors[0] > errors[1] > errors[2] and errors[2] < 1e-3


def test_text_after_the_image_and_image_only_sequences():
    q, k = qk(3)
    # [image, text]: the roles follow the slice, not the position
    order = torch.cat([torch.arange(N_TXT, N), torch.arange(0, N_TXT)])  # [image, text]
    a = weights(q, k, iterations=2)
    b = weights(q[:, order], k[:, order], image=slice(0, N_IMG), iterations=2)
    torch.testing.assert_close(b, a[:, order][:, :, order], rtol=0, atol=1e-6)
    # no text at all: the plain operator (an image-only layer, e.g. Lumina's noise refiner)
    v = torch.randn(HEADS, N, D)
    torch.testing.assert_close(joint_adversarial_attention(q, k, v, slice(0, None), iterations=2),
                               adversarial_sinkhorn_attention(q, k, v, iterations=2))


def test_a_small_budget_gives_the_same_result_in_tiles():
    q, k = qk(4)
    v = torch.randn(HEADS, N, 8)
    whole = joint_adversarial_attention(q, k, v, slice(N_TXT, None), iterations=2)
    tiled = joint_adversarial_attention(q, k, v, slice(N_TXT, None), iterations=2, budget_bytes=4096)
    torch.testing.assert_close(tiled, whole, rtol=0, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_keeps_dtype_and_stays_finite(dtype):
    q, k = qk(5, amplitude=30.0)  # logits far beyond exp's float32 range
    v = torch.randn(HEADS, N, D)
    out = joint_adversarial_attention(q.to(dtype), k.to(dtype), v.to(dtype), slice(N_TXT, None), iterations=2)
    assert out.dtype == dtype and torch.isfinite(out).all()


def test_bad_input_names_what_is_wrong():
    q, k = qk()
    with pytest.raises(ValueError, match="same tokens"):
        joint_adversarial_attention(q, k[:, :10], k[:, :10], slice(N_TXT, None), iterations=1)
    with pytest.raises(ValueError, match="contiguous slice"):
        joint_adversarial_attention(q, k, k, slice(N, None), iterations=1)


def reference_joint(q, k, v, image, *, iterations):
    """Float64, from the formulas in asag/joint.py's docstring: the model's own softmax rows for the
    text queries; for an image query its model weights on the text keys, plus the image share
    ``1 - m`` times the float64 reference plan among the image tokens."""
    q, k, v = (t.double() for t in (q, k, v))
    model = torch.softmax(q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5, dim=-1)
    text = torch.ones(q.shape[-2], dtype=torch.bool)
    text[image] = False
    out = model @ v
    image_rows = model[..., image, :]
    m = image_rows[..., text].sum(-1, keepdim=True)
    plan = reference_attention(q[..., image, :], k[..., image, :], v[..., image, :], iterations=iterations)
    out[..., image, :] = image_rows[..., text] @ v[..., text, :] + (1 - m) * plan
    return out


def projections(batch, heads, n, d, *, seed=0, amplitude=1.5, token_major=False, dtype=torch.float32):
    """q, k, v as (batch, heads, n, d); ``token_major``: views of (batch, n, heads, d) memory, as
    Qwen-Image's attention holds them."""
    g = torch.Generator().manual_seed(seed)
    shape = (batch, n, heads, d) if token_major else (batch, heads, n, d)
    q, k, v = ((torch.randn(shape, generator=g) * (amplitude if i < 2 else 1.0)).to(dtype) for i in range(3))
    return tuple(t.transpose(1, 2) for t in (q, k, v)) if token_major else (q, k, v)


LAYOUTS = {  # batch, heads, text tokens, image tokens, d; where the image is; the projections' memory
    "text first": (2, 3, 12, 48, 32, "end", False),
    "text after the image": (1, 4, 9, 40, 16, "start", False),
    "token-major projections": (2, 3, 12, 48, 32, "end", True),
    "one head, long text": (1, 1, 50, 30, 8, "end", False),
}


@pytest.mark.parametrize("budget", [None, 4096])  # the default; a few rows per tile
@pytest.mark.parametrize("layout", LAYOUTS)
def test_matches_the_float64_reference_in_every_layout(layout, budget):
    batch, heads, n_txt, n_img, d, where, token_major = LAYOUTS[layout]
    q, k, v = projections(batch, heads, n_txt + n_img, d, token_major=token_major)
    image = slice(n_txt, None) if where == "end" else slice(0, n_img)
    kwargs = {} if budget is None else {"budget_bytes": budget}
    out = joint_adversarial_attention(q, k, v, image, iterations=3, **kwargs)
    assert out.shape == (batch, heads, n_txt + n_img, d) and out.dtype == q.dtype
    assert (out.double() - reference_joint(q, k, v, image, iterations=3)).abs().max() <= 2e-5


@pytest.mark.parametrize("dtype,tolerance", [(torch.bfloat16, 3e-2), (torch.float16, 4e-3)])
def test_half_precision_matches_the_float64_reference(dtype, tolerance):
    q, k, v = projections(2, 3, 60, 32, dtype=dtype)
    out = joint_adversarial_attention(q, k, v, slice(12, None), iterations=2, budget_bytes=4096)
    assert out.dtype == dtype
    # the reference from the same (rounded) inputs: what is left is the output's rounding
    assert (out.double() - reference_joint(q, k, v, slice(12, None), iterations=2)).abs().max() <= tolerance


def test_the_output_is_token_major_as_the_models_own_attention_leaves_it():
    """So that the host's ``out.transpose(1, 2).reshape(batch, tokens, heads * dim)`` is a view,
    not a copy of the output."""
    q, k, v = projections(2, 3, 60, 32)
    out = joint_adversarial_attention(q, k, v, slice(12, None), iterations=2)
    merged = out.transpose(1, 2).reshape(2, 60, 3 * 32)
    assert merged.data_ptr() == out.data_ptr() and merged._base is not None


class OpRecorder(TorchDispatchMode):
    """The names of every aten op a call runs, and the devices its tensors come from."""

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.ops.aten._to_copy.default and "device" in kwargs and kwargs["device"] != args[0].device:
            self.ops.append("_to_copy to another device")
        self.ops.append(func.overloadpacket.__name__)
        return func(*args, **kwargs)


# a gather of positions (an index tensor made on the host, copied to the device, then read through)
GATHERS = {"arange", "index", "index_select", "gather", "take", "nonzero", "masked_select", "lift_fresh", "_to_copy to another device"}


@pytest.mark.parametrize("image", [slice(12, None), slice(0, 48)])
def test_the_text_and_the_image_are_slices_never_gathered(image):
    """Every perturbed block of every step runs this: no index tensor, no host-to-device copy, no
    gather, whether the text comes before or after the image."""
    q, k, v = projections(2, 3, 60, 32)
    with OpRecorder() as recorder:
        joint_adversarial_attention(q, k, v, image, iterations=2)
    assert recorder.ops and not GATHERS & set(recorder.ops), sorted(GATHERS & set(recorder.ops))


def test_flux_shapes_stay_within_the_budget():
    """The resident peak of one call less its output, measured in a fresh process (what the
    allocator hands out, temporaries inside PyTorch's kernels included:
    asag.bench.measure_memory_case), within 1.25 times a 16 MiB budget, at Flux's shapes: heads of
    128 over 512 text tokens and 4096 image tokens (1024x1024; 6 of its 24 heads: more heads are
    more chunks of the same size, ``python -m asag.bench memory`` runs all 24) in float32 and
    bfloat16, and 16,384 image tokens (2048x2048, one head) in bfloat16. One head's plan alone is
    64 MiB at 1024x1024 and 1 GiB at 2048x2048."""
    cases = [dict(op="joint", heads=6, n_txt=512, n_img=4096, d=128, dtype=dtype, budget_mib=16) for dtype in ("float32", "bfloat16")]
    cases.append(dict(op="joint", heads=1, n_txt=512, n_img=16384, d=128, dtype="bfloat16", budget_mib=16))
    ratios = {(r["n_img"], r["dtype"]): round(r["peak"] / (r["budget_mib"] * 2**20), 2) for r in measure_memory_cases(cases, "cpu")}
    assert all(ratio <= 1.25 for ratio in ratios.values()), ratios


def test_inputs_that_require_grad_give_the_same_result():
    """As test_sinkhorn's: a sampler running with autograd on hands over projections that require grad."""
    q, k, v = projections(1, 2, 60, 32)
    weights = torch.nn.Parameter(torch.eye(32))
    out = joint_adversarial_attention(q @ weights, k @ weights, v @ weights, slice(12, None), iterations=2, budget_bytes=4096)
    torch.testing.assert_close(out, joint_adversarial_attention(q, k, v, slice(12, None), iterations=2, budget_bytes=4096),
                               atol=1e-6, rtol=0)
