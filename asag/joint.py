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

Layout: ``q``, ``k``, ``v`` are ``(batch, heads, tokens, dim)`` with any strides (views of the
model's own layout are read in place), and the text is one contiguous run before or after the
image, as every family places it: the text and the image are slices of the sequence, never
gathered. The output is stored token-major, as the model's own attention leaves it, so that
``out.transpose(1, 2).reshape(batch, tokens, heads * dim)`` is a view.

Memory: what one call allocates besides its output stays within about ``budget_bytes``. The plan
among the image tokens is computed within the budget (``asag.sinkhorn``) and written straight into
the output's image rows; then, per chunk of heads and tile of query rows sized to the budget, each
image row is blended with its text share in place, and the text rows are computed by PyTorch's
``scaled_dot_product_attention`` on 4-D tiles, sized as if it formed its matrix (its math path
does). Nothing of the output's size is allocated besides the output.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .sinkhorn import CPU_CHUNK_BYTES, FLOAT32_BYTES, MEMORY_BUDGET_BYTES, adversarial_sinkhorn_attention


def tiles_for(heads: int, rows: int, row_bytes: int, head_bytes: int, budget_bytes: int) -> tuple[int, int]:
    """``(heads per chunk, query rows per tile)`` for a chunk that holds ``head_bytes`` per head and
    ``row_bytes`` per row of each head's tile within ``budget_bytes``: all of a head's rows at once
    where they fit, else one head in row tiles. Below one head with one row, one row."""
    whole_head = head_bytes + rows * row_bytes
    if whole_head <= budget_bytes:
        return min(heads, budget_bytes // whole_head), rows
    return 1, max(1, min(rows, (budget_bytes - head_bytes) // row_bytes))


@torch.no_grad()  # inference only, as asag.sinkhorn
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

    ``q``, ``k``, ``v``: ``(batch, heads, N, d)`` (or ``(groups, N, d)``), one joint sequence
    (queries and keys the same tokens). ``image``: the slice of the sequence that holds the image
    tokens, at its start or its end (``slice(n_txt, None)``: the text first, as Flux;
    ``slice(0, n_img)``: the text after); the rest is text. Returns ``(batch, heads, N, d_v)`` (or
    ``(groups, N, d_v)``) in ``q``'s dtype, stored token-major."""
    if q.ndim not in (3, 4) or k.shape != q.shape or v.shape[:-1] != q.shape[:-1]:
        raise ValueError(f"joint self-attention needs q, k of (batch, heads, tokens, dim) or (groups, tokens, dim) and v "
                         f"over the same tokens, got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    n = q.shape[-2]
    start, stop, step = image.indices(n)
    if step != 1 or stop <= start or (start > 0 and stop < n):
        raise ValueError(f"the image tokens must be a non-empty contiguous slice at the start or the end of the {n} tokens "
                         f"(the text one run before or after them), got {image}")
    if scale is None:
        scale = q.shape[-1] ** -0.5
    q4, k4, v4 = (t if t.ndim == 4 else t.unsqueeze(0) for t in (q, k, v))
    batch, heads, _, _ = q4.shape
    out = torch.empty((batch, n, heads, v.shape[-1]), dtype=q.dtype, device=q.device).transpose(1, 2)
    image, text = slice(start, stop), slice(0, start) if start else slice(stop, n)
    adversarial_sinkhorn_attention(q4[:, :, image], k4[:, :, image], v4[:, :, image], iterations=iterations,
                                   strength=strength, scale=scale, budget_bytes=budget_bytes, out=out[:, :, image])
    if text.stop > text.start:
        with torch.autocast(q.device.type, enabled=False):
            _blend_in_text_share(q4, k4, v4, out, image, text, scale, budget_bytes)
        _text_rows(q4, k4, v4, out, text, scale, budget_bytes)
    return out if q.ndim == 4 else out[0]


def _blend_in_text_share(q, k, v, out, image: slice, text: slice, scale: float, budget_bytes: int) -> None:
    """The image rows, whose image share ``out`` holds (the plan's output): per image query ``i``,
    with ``e_ij = exp(l_ij - max_j l_ij)`` its exponentiated logits over all keys,

        out_i = (sum_{j in text} e_ij v_j + E_img,i * plan_i) / (E_txt,i + E_img,i)

    where ``E`` sums ``e_i`` over the text and the image keys: the model's own softmax weights on
    the text keys, and the rest of the row through the plan. In float32, in place."""
    batch, heads, n, d = q.shape
    n_txt, d_v = text.stop - text.start, v.shape[-1]
    # per head: its keys and text values cast to float32 (inputs of another dtype); per row of a
    # tile: its query, its logits, their text part (should the product copy it), and three rows of
    # the output's width
    head_bytes = 0 if q.dtype == torch.float32 else FLOAT32_BYTES * (n * d + n_txt * d_v)
    row_bytes = FLOAT32_BYTES * (d + n + n_txt + 3 * d_v + 4)
    if q.device.type == "cpu":  # tiles about the last-level cache's size run fastest there
        budget_bytes = min(budget_bytes, CPU_CHUNK_BYTES)
    chunk, rows = tiles_for(heads, image.stop - image.start, row_bytes, head_bytes, budget_bytes)
    for b in range(batch):
        for h in range(0, heads, chunk):
            hs = slice(h, h + chunk)
            keys, values = k[b, hs].float().transpose(1, 2), v[b, hs, text].float()
            for r in range(image.start, image.stop, rows):
                tile = slice(r, min(r + rows, image.stop))
                queries = q[b, hs, tile].float()
                e = torch.empty((queries.shape[0], queries.shape[1], n), dtype=torch.float32, device=q.device)
                e.baddbmm_(queries, keys, beta=0, alpha=scale)  # the logits, scaled in the product
                e.sub_(e.amax(dim=2, keepdim=True)).exp_()
                mass_txt, mass_img = e[..., text].sum(dim=2, keepdim=True), e[..., image].sum(dim=2, keepdim=True)
                blended = torch.baddbmm(out[b, hs, tile].float() * mass_img, e[..., text], values)
                del e
                out[b, hs, tile] = blended.div_(mass_txt.add_(mass_img))


def _text_rows(q, k, v, out, text: slice, scale: float, budget_bytes: int) -> None:
    """The text rows: the model's own attention, by ``scaled_dot_product_attention`` on 4-D tiles
    (its fused kernels take 4-D input), each sized as if it formed its logits and weights in
    float32."""
    batch, heads, n, _ = q.shape
    row_bytes = FLOAT32_BYTES * (2 * n + 2 * v.shape[-1])
    chunk, rows = tiles_for(heads, text.stop - text.start, row_bytes, 0, budget_bytes)
    for b in range(batch):
        for h in range(0, heads, chunk):
            at = (slice(b, b + 1), slice(h, h + chunk))
            for r in range(text.start, text.stop, rows):
                tile = slice(r, min(r + rows, text.stop))
                out[(*at, tile)] = F.scaled_dot_product_attention(q[(*at, tile)], k[at], v[at], scale=scale)
