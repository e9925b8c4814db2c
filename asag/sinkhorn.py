"""Adversarial Sinkhorn attention: the perturbed self-attention of ASAG.

The numerical contract is section 2 of ``shared/docs/asag-method.md``. Per (batch x head) row
group, with logits ``L = -strength * scale * q @ k^T``, a few Sinkhorn iterations balance
``exp(L)`` towards a doubly-stochastic plan (rows sum to 1, columns to ``n_q / n_k``) and the
output is ``P @ v``. Ordinary attention is the ``iterations=0, strength=-1`` case.

Two exact forms of the same iteration are used, both in row tiles of the ``n_q x n_k`` plan:

* the scaling form: ``K = exp(L - row shift)``, then the potentials are vectors updated by
  matrix-vector products, and ``out = diag(f) K diag(c) v`` without ever forming ``P``. Each
  pass over the rows reads every kernel tile once for both of its products.
* the log form, for row groups whose logits span more than ``SCALING_SPAN_LIMIT`` (where
  ``exp`` of the shifted logits would underflow and the scaling form would lose columns): row
  potentials per tile, column potentials as a running log-sum-exp over the tiles.

Memory: what one call allocates besides its output stays within ``budget_bytes``
(``MEMORY_BUDGET_BYTES`` by default): the chunk of row groups and the tile rows are sized with
every per-group temporary counted (``layout_for``), not the kernel alone. Where one chunk of row
groups' kernel fits, it is kept and every later pass reads it ("kept"); where even one head's
``n_q x n_k`` slice does not fit (high resolutions), nothing of that size is kept: each pass
remakes the kernel tile by tile ("streaming"), trading a matrix product per pass for memory.

Both accumulate in float32 with autocast off, whatever the input dtype. The host is synchronised
once per chunk to choose the row shift (and once more where the logits' span must be checked),
never per tile.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .memory import MEMORY_BUDGET_MIB

# exp(-SCALING_SPAN_LIMIT) is ~1e-26: far above float32's smallest normal (1e-38) even after
# the column scalings (bounded by n_q / n_k / that value) multiply it back.
SCALING_SPAN_LIMIT = 60.0

# The scaling form makes its kernel with exp2 (about twice as fast as exp on the CPU), from
# logits in base 2: exp(x) = exp2(x * LOG2E).
LOG2E = 1.0 / math.log(2.0)

# The budget (asag/memory.py); users with a small GPU lower it in Settings > ASAG, and the adapters
# pass it as ``budget_bytes``.
MEMORY_BUDGET_BYTES = MEMORY_BUDGET_MIB * 2**20

# Speed on the CPU comes from the cache: chunks of about the last-level cache's size, made and
# reduced in row tiles that fit the per-core cache. A GPU takes each chunk as one tile.
CPU_CHUNK_BYTES = 16 * 1024 * 1024
CPU_TILE_BYTES = 8 * 1024 * 1024
# Streaming: a tile holds this many rows of each group it covers, so that its products stay
# matrix products.
STREAM_TILE_ROWS = 64
# The log form holds a tile of logits and one scratch tile of the same size.
LOG_FORM_TILES = 2
FLOAT32_BYTES = 4


@dataclass(frozen=True)
class Layout:
    """How one call is cut: ``chunk`` row groups at a time, ``tile_rows`` query rows per tile of
    the scaling form (all tiles of a chunk kept when ``keep``, else remade in every pass), and
    the size of the one float32 buffer every chunk reuses."""

    chunk: int
    tile_rows: int
    keep: bool
    buffer_elements: int

    def log_tile_rows(self, n_k: int) -> int:
        """Rows per tile of the log form, whose tiles are carved from the same buffer."""
        return max(1, self.buffer_elements // (LOG_FORM_TILES * self.chunk * n_k))


def padded_width(d_v: int) -> int:
    """The weighted values' width: ``[c * v, c]`` zero-padded to a multiple of 8."""
    return (d_v + 8) // 8 * 8


def group_vector_bytes(n_q: int, n_k: int, d: int, d_v: int, itemsize: int) -> int:
    """What one row group holds besides its kernel while its chunk runs: the projections cast to
    float32 (inputs of another dtype), the scaled queries and shifted keys, the potentials and
    norms, the weighted values, the float32 output and its cast back to the input dtype."""
    cast = 0 if itemsize == FLOAT32_BYTES else n_q * d + n_k * (d + d_v)
    working = (n_q + n_k) * (d + 1) + n_k * padded_width(d_v) + 4 * n_k + 2 * n_q + n_q * d_v
    return FLOAT32_BYTES * (cast + working) + (0 if itemsize == FLOAT32_BYTES else n_q * d_v * itemsize)


def layout_for(groups: int, n_q: int, n_k: int, on_cpu: bool, budget_bytes: int, *,
               d: int = 0, d_v: int = 0, itemsize: int = FLOAT32_BYTES) -> Layout:
    """The chunk and tile sizes that keep one call's extra memory within ``budget_bytes``: per row
    group its kernel (kept whole, or ``tile_rows`` rows of it at a time), the product of a tile with
    the weighted values, and ``group_vector_bytes``. Below one group with one row, the budget is
    met as closely as a single row allows."""
    kernel_row = n_k * FLOAT32_BYTES
    row_bytes = kernel_row + FLOAT32_BYTES * (padded_width(d_v) + d_v)  # a kernel row and its output product
    vectors = group_vector_bytes(n_q, n_k, d, d_v, itemsize)
    keep = n_q * row_bytes + vectors <= budget_bytes
    if keep:
        chunk_bytes = min(budget_bytes, CPU_CHUNK_BYTES) if on_cpu else budget_bytes
        chunk = min(groups, max(1, chunk_bytes // (n_q * row_bytes + vectors)))
        tile_rows = min(n_q, max(1, CPU_TILE_BYTES // (chunk * kernel_row))) if on_cpu else n_q
        kernel = chunk * n_q * n_k
    else:
        cache = CPU_TILE_BYTES if on_cpu else budget_bytes  # the kernel tile of a chunk, for the cache
        chunk = min(groups, max(1, budget_bytes // (vectors + STREAM_TILE_ROWS * row_bytes)),
                    max(1, cache // (STREAM_TILE_ROWS * kernel_row)))
        tile_rows = min(n_q, max(1, (budget_bytes // chunk - vectors) // row_bytes), max(1, cache // (chunk * kernel_row)))
        kernel = chunk * tile_rows * n_k
    # At least one row per log-form tile: below that the budget is met only up to O(n_k).
    return Layout(chunk, tile_rows, keep, max(kernel, LOG_FORM_TILES * chunk * n_k))


def adversarial_sinkhorn_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    iterations: int,
    strength: float = 1.0,
    scale: float | None = None,
    budget_bytes: int = MEMORY_BUDGET_BYTES,
) -> torch.Tensor:
    """Attention through the adversarial Sinkhorn plan.

    ``q``: ``(..., n_q, d)``; ``k``: ``(..., n_k, d)``; ``v``: ``(..., n_k, d_v)``, heads folded into
    the leading dims (which must match). ``n_k`` may exceed ``n_q`` (reference-only appends keys).
    ``scale`` defaults to ``d ** -0.5``. ``budget_bytes`` bounds the plan's working set (see the
    module docstring). Returns ``(..., n_q, d_v)`` in ``q``'s dtype.
    """
    if iterations < 0 or int(iterations) != iterations:
        raise ValueError(f"iterations must be a whole number >= 0, got {iterations!r}")
    if q.ndim < 2 or k.ndim != q.ndim or v.ndim != q.ndim:
        raise ValueError(f"q, k, v must have the same rank >= 2, got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    lead = q.shape[:-2]
    if k.shape[:-2] != lead or v.shape[:-2] != lead or k.shape[-1] != q.shape[-1] or v.shape[-2] != k.shape[-2]:
        raise ValueError(
            f"shape mismatch: q {tuple(q.shape)} needs k (..., n_k, {q.shape[-1]}) and v (..., n_k, d_v) "
            f"with the same leading dims, got k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    n_q, d = q.shape[-2:]
    n_k, d_v = v.shape[-2:]
    if scale is None:
        scale = d ** -0.5
    groups = math.prod(lead)
    out = torch.empty((groups, n_q, d_v), dtype=q.dtype, device=q.device)
    if groups == 0 or n_q == 0:
        return out.reshape(*lead, n_q, d_v)
    if n_k == 0:
        raise ValueError("k and v must have at least one token")
    q3, k3, v3 = (t.reshape(groups, *t.shape[-2:]) for t in (q, k, v))
    layout = layout_for(groups, n_q, n_k, q.device.type == "cpu", budget_bytes, d=d, d_v=d_v, itemsize=q.element_size())
    # One buffer for every chunk's kernel: fresh memory is paid for (page faults) once per call.
    buffer = torch.empty(layout.buffer_elements, dtype=torch.float32, device=q.device)
    logit_factor = -float(strength) * float(scale)
    with torch.autocast(q.device.type, enabled=False):
        for start in range(0, groups, layout.chunk):
            sl = slice(start, start + layout.chunk)
            chunk_q, chunk_k, chunk_v = q3[sl].float(), k3[sl].float(), v3[sl].float()
            result = _scaling_form(chunk_q, chunk_k, chunk_v, logit_factor, int(iterations), buffer, layout)
            if result is None:
                result = _log_form(chunk_q, chunk_k, chunk_v, logit_factor, int(iterations), buffer, layout.log_tile_rows(n_k))
            out[sl] = result.to(q.dtype)
            del chunk_q, chunk_k, chunk_v, result  # before the next chunk makes its own
    return out.reshape(*lead, n_q, d_v)


def _scaling_form(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, logit_factor: float, iterations: int,
                  buffer: torch.Tensor, layout: Layout) -> torch.Tensor | None:
    """The scaling form over row tiles carved from ``buffer``; None where a row's logits span more
    than the form allows (the caller then uses the log form)."""
    groups, n_q, n_k = q.shape[0], q.shape[1], k.shape[1]
    col_target = n_q / n_k
    make_tile = _kernel_tiles(q, k, logit_factor, buffer, layout)
    starts = range(0, n_q, layout.tile_rows)
    kept = []

    def tiles():
        """Each tile of the kernel in row order: the kept ones, or remade."""
        return iter(kept) if kept else (make_tile(start)[0] for start in starts)

    # Potentials in the scaling domain: column scalings c (g x n_k x 1) and the column mass that
    # the row-normalised kernel gives them (g x 1 x n_k); both products keep the tile row-major on
    # the side BLAS prefers.
    col = torch.ones((groups, n_k, 1), dtype=q.dtype, device=q.device)
    col_mass = torch.zeros((groups, 1, n_k), dtype=q.dtype, device=q.device)
    if iterations:
        # The first half-iteration (c = 1) while each tile is made, checking the logits' span.
        spans_ok = None
        for start in starts:
            tile, ok = make_tile(start)
            if ok is not None:
                spans_ok = ok if spans_ok is None else spans_ok & ok
            col_mass.baddbmm_(tile.sum(dim=2, keepdim=True).reciprocal_().transpose(1, 2), tile)
            if layout.keep:
                kept.append(tile)
        # not ok: also NaN, which the log form propagates as ordinary attention would, so the
        # host's own NaN check reports it. With no iterations the form is an exact softmax.
        if spans_ok is not None and not bool(spans_ok):
            return None
        for done in range(1, iterations + 1):
            col = (col_target / col_mass).transpose(1, 2)
            if done == iterations:
                break
            col_mass.zero_()
            for tile in tiles():
                col_mass.baddbmm_(torch.bmm(tile, col).reciprocal_().transpose(1, 2), tile)
    # Final row normalisation fused with the output product: K @ [c * v, c] in one pass, the
    # columns zero-padded to a multiple of 8 (BLAS runs an odd width markedly slower).
    d_v = v.shape[2]
    weighted = torch.zeros((groups, n_k, (d_v + 8) // 8 * 8), dtype=q.dtype, device=q.device)
    torch.mul(v, col, out=weighted[..., :d_v])
    weighted[..., d_v:d_v + 1] = col
    out = torch.empty((groups, n_q, d_v), dtype=q.dtype, device=q.device)
    for start, tile in zip(starts, tiles()):
        num = torch.bmm(tile, weighted)
        out[:, start:start + tile.shape[1]] = num[..., :d_v] / num[..., d_v:d_v + 1]
    return out


def _kernel_tiles(q: torch.Tensor, k: torch.Tensor, logit_factor: float, buffer: torch.Tensor, layout: Layout):
    """``make_tile(start)``: the kernel's tile of rows ``start:start + tile_rows``, ``exp2`` of the
    base-2 logits with each row shifted by a constant (which the row scaling absorbs) so that
    nothing overflows, and a device bool telling whether those rows' logits span little enough
    for the scaling form (None when that is known already). A kept tile has its own place in
    ``buffer``; a streamed one reuses the start of it."""
    groups, n_q, n_k = q.shape[0], q.shape[1], k.shape[1]
    factor2 = logit_factor * LOG2E  # base-2 logits
    limit = SCALING_SPAN_LIMIT * LOG2E
    k_shift_t = torch.cat((k, torch.ones_like(k[..., :1])), dim=2).transpose(1, 2)
    # Cauchy-Schwarz: |L_ij| <= |factor| * |q_i| * max_j |k_j|. When twice that fits, subtracting
    # the bound (instead of the row maximum) shifts every row safely and saves two passes, and
    # [factor2 * q, -bound] @ [k, 1]^T is the shifted logits in one product. One sync per chunk.
    row_bound = q.norm(dim=2, keepdim=True) * (abs(factor2) * k.norm(dim=2).amax(dim=1).view(groups, 1, 1))
    bounded = bool(2.0 * row_bound.amax() <= limit)  # False for NaN too
    scaled_q = torch.cat((q * factor2, row_bound.neg()), dim=2) if bounded else q * factor2
    keys = k_shift_t if bounded else k_shift_t[:, :-1]

    def make_tile(start: int):
        rows = min(layout.tile_rows, n_q - start)
        offset = groups * start * n_k if layout.keep else 0
        tile = buffer[offset:offset + groups * rows * n_k].view(groups, rows, n_k)
        torch.bmm(scaled_q[:, start:start + rows], keys, out=tile)
        if bounded:
            return tile.exp2_(), None
        row_max = tile.amax(dim=2, keepdim=True)
        spans_ok = ((row_max - tile.amin(dim=2, keepdim=True)) <= limit).all()
        return tile.sub_(row_max).exp2_(), spans_ok

    return make_tile


def _log_form(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, logit_factor: float, iterations: int,
              buffer: torch.Tensor, tile_rows: int) -> torch.Tensor:
    """The formulas of asag-method.md section 2 in the log domain, over row tiles of logits remade
    in every pass: each tile holds whole rows, so the row potentials f are exact per tile, and the
    column potentials g come from a running log-sum-exp over the tiles."""
    groups, n_q, n_k = q.shape[0], q.shape[1], k.shape[1]
    log_target = math.log(n_q / n_k)
    scaled_q, keys = q * logit_factor, k.transpose(1, 2)
    size = groups * tile_rows * n_k
    starts = range(0, n_q, tile_rows)

    def logits(start: int):
        """The logits of rows ``start:start + tile_rows``, and a scratch tile of the same shape."""
        rows = min(tile_rows, n_q - start)
        tile = buffer[:groups * rows * n_k].view(groups, rows, n_k)
        scratch = buffer[size:size + groups * rows * n_k].view(groups, rows, n_k)
        return torch.bmm(scaled_q[:, start:start + rows], keys, out=tile), scratch

    g = torch.zeros((groups, 1, n_k), dtype=q.dtype, device=q.device)
    for _ in range(iterations):
        col_max = torch.full_like(g, -math.inf)
        col_sum = torch.zeros_like(g)
        for start in starts:
            tile, scratch = logits(start)
            tile.add_(g)
            row_max = tile.amax(dim=2, keepdim=True)
            f = -(row_max + torch.sub(tile, row_max, out=scratch).exp_().sum(dim=2, keepdim=True).log_())
            tile.sub_(g).add_(f)  # L + f, whose column log-sum-exp gives g
            new_max = torch.maximum(col_max, tile.amax(dim=1, keepdim=True))
            col_sum.mul_((col_max - new_max).exp_()).add_(tile.sub_(new_max).exp_().sum(dim=1, keepdim=True))
            col_max = new_max
        g = log_target - (col_max + col_sum.log())
    out = torch.empty((groups, n_q, v.shape[2]), dtype=q.dtype, device=q.device)
    for start in starts:
        tile, _ = logits(start)
        tile.add_(g)
        tile.sub_(tile.amax(dim=2, keepdim=True)).exp_()
        out[:, start:start + tile.shape[1]] = torch.bmm(tile, v) / tile.sum(dim=2, keepdim=True)
    return out


def adversarial_sinkhorn_attention_heads(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, **kwargs
) -> torch.Tensor:
    """The same operator for the ``(B, N, heads * dim_head)`` layout that attention modules use.

    Keys and values may carry more tokens than queries. Returns ``(B, N, heads * dim_head_v)``.
    """
    b, n_q, inner = q.shape
    if inner % heads or k.shape[-1] % heads or v.shape[-1] % heads:
        raise ValueError(f"channel counts {inner}, {k.shape[-1]}, {v.shape[-1]} are not divisible by heads={heads}")

    def split(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(t.shape[0], t.shape[1], heads, t.shape[2] // heads).transpose(1, 2)

    out = adversarial_sinkhorn_attention(split(q), split(k), split(v), **kwargs)
    return out.transpose(1, 2).reshape(b, n_q, -1)
