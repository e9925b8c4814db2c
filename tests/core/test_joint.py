"""ASAG on joint text+image attention (asag/joint.py): the invariants of the chosen reading, read off
the attention matrix itself (one-hot values make each output row the row of weights)."""
import pytest
import torch

from asag.bench import joint_properties
from asag.joint import joint_adversarial_attention
from asag.sinkhorn import adversarial_sinkhorn_attention
from tests.core.reference import reference_plan

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


def test_flux_at_1024_stays_within_the_budget_and_never_holds_an_image_by_image_slice():
    """Flux's joint sequence at 1024x1024 (512 text + 4096 image tokens, head size 128), two heads:
    one head's image-by-image plan is 64 MiB; within a 16 MiB budget the call allocates the budget
    plus a few vectors of its output's size (the text share, the image share, the plan's output)."""
    from tests.core.test_sinkhorn import LiveMemory

    g = torch.Generator().manual_seed(0)
    groups, n_txt, n_img, d = 2, 512, 4096, 128
    q, k, v = (torch.randn(groups, n_txt + n_img, d, generator=g) for _ in range(3))
    budget = 16 * 2**20
    with LiveMemory(q, k, v) as tracker:
        out = joint_adversarial_attention(q, k, v, slice(n_txt, None), iterations=2, budget_bytes=budget)
    output = out.numel() * out.element_size()
    assert tracker.largest < n_img * n_img * 4 / 4
    assert tracker.peak <= budget + 4 * output, (tracker.peak / 2**20, output / 2**20)
    assert torch.isfinite(out).all()
