"""ASAG on joint attention: one self-attention over a text-and-image sequence, as the transformer
(DiT) image models compute it (Flux and Chroma over ``cat(txt, img)``, Lumina 2 and Z-Image over
``[caption, image]``, Qwen-Image over ``[txt, img]``).

The paper perturbs the pixel-level query-key similarity. On a joint sequence that reads as: the
image queries' attention over the image keys gets the adversarial Sinkhorn plan, and everything
the model computes between text and image stays as it is. Per image query ``i``, with ``a_i`` the
model's own softmax row over all keys:

    out_i = sum_{j in text} a_ij v_j + (1 - m_i) * (P v_image)_i,   m_i = sum_{j in text} a_ij

where ``P`` is the adversarial plan among the image tokens (``asag.sinkhorn``: rows sum to 1,
columns balanced). So the image row still sums to 1, keeps the share of attention (and the exact
weights) the model gives the text, and only the image share is spread adversarially. Text query
rows are the model's own attention. ``python -m asag.bench joint`` measures this choice against
the whole joint sequence through the plan, and the image block alone with the text share dropped
(README, "Transformer models").

Memory: the image share ``m`` needs the log-sum-exp of the image logits, computed in row tiles of
at most ``budget_bytes`` (as the plan's working set), never as an ``n_img x n_img`` matrix per head.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .sinkhorn import FLOAT32_BYTES, MEMORY_BUDGET_BYTES, adversarial_sinkhorn_attention


def _image_share(q_img: torch.Tensor, k_txt: torch.Tensor, k_img: torch.Tensor, scale: float, budget_bytes: int) -> torch.Tensor:
    """``1 - m``: per image query, the share of the model's softmax mass on the image keys,
    ``(groups, n_img, 1)`` in float32. Row tiles of the image logits, every group at once."""
    groups, n_img, _ = q_img.shape
    rows = max(1, budget_bytes // max(1, 2 * groups * (k_img.shape[1] + k_txt.shape[1]) * FLOAT32_BYTES))
    share = torch.empty((groups, n_img, 1), dtype=torch.float32, device=q_img.device)
    keys_img, keys_txt = k_img.float().transpose(1, 2), k_txt.float().transpose(1, 2)  # once, not per tile
    for start in range(0, n_img, rows):
        tile = q_img[:, start:start + rows].float() * scale
        lse_img = torch.logsumexp(tile @ keys_img, dim=-1, keepdim=True)
        lse_txt = torch.logsumexp(tile @ keys_txt, dim=-1, keepdim=True)
        share[:, start:start + rows] = torch.sigmoid(lse_img - lse_txt)  # e^a / (e^a + e^b)
    return share


def joint_adversarial_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    image: slice,
    *,
    iterations: int,
    strength: float = 1.0,
    scale: float | None = None,
    budget_bytes: int = MEMORY_BUDGET_BYTES,
) -> torch.Tensor:
    """Joint self-attention with the image queries' image share through the adversarial plan.

    ``q``, ``k``, ``v``: ``(..., N, d)``, heads folded into the leading dims, one joint sequence
    (queries and keys the same tokens). ``image``: the slice of the sequence that holds the image
    tokens (``slice(n_txt, None)`` for Flux); every other token is text. Returns ``(..., N, d_v)``
    in ``q``'s dtype."""
    if q.shape[:-1] != k.shape[:-1] or k.shape[:-1] != v.shape[:-1]:
        raise ValueError(f"joint self-attention needs q, k, v over the same tokens, got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    n = q.shape[-2]
    start, stop, step = image.indices(n)
    if step != 1 or stop - start < 1:
        raise ValueError(f"the image tokens must be a non-empty contiguous slice of the {n} tokens, got {image}")
    if scale is None:
        scale = q.shape[-1] ** -0.5
    lead = q.shape[:-2]
    q3, k3, v3 = (t.reshape(-1, n, t.shape[-1]) for t in (q, k, v))
    text = torch.cat([torch.arange(0, start), torch.arange(stop, n)]).to(q.device)
    if not text.numel():  # image tokens only: the plain operator
        out = adversarial_sinkhorn_attention(q3, k3, v3, iterations=iterations, strength=strength, scale=scale,
                                             budget_bytes=budget_bytes)
        return out.reshape(*lead, n, out.shape[-1])
    q_img, k_img, v_img = q3[:, start:stop], k3[:, start:stop], v3[:, start:stop]
    k_txt, v_txt = k3[:, text], v3[:, text]
    out = torch.empty((q3.shape[0], n, v3.shape[-1]), dtype=q.dtype, device=q.device)
    out[:, text] = F.scaled_dot_product_attention(q3[:, text], k3, v3, scale=scale)  # the model's own
    share = _image_share(q_img, k_txt, k_img, scale, budget_bytes)
    on_text = F.scaled_dot_product_attention(q_img, k_txt, v_txt, scale=scale).float()
    plan = adversarial_sinkhorn_attention(q_img, k_img, v_img, iterations=iterations, strength=strength,
                                          scale=scale, budget_bytes=budget_bytes).float()
    out[:, start:stop] = ((1.0 - share) * on_text + share * plan).to(out.dtype)
    return out.reshape(*lead, n, out.shape[-1])
