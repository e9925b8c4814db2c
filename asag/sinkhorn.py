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
The queries are read and the output written tile by tile, in the caller's dtype and layout
(``out`` may be a slice of a larger output); a group holds only its keys in float32 and the
weighted values, which at high resolution are made block by block too. So the budget holds down
to one head's keys in float32 (``n_k * (d + 1) * 4`` bytes: 8 MiB for Flux at 2048x2048).

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
# Where the weighted values of a whole group do not fit beside the rest (streaming at high
# resolution), the last pass makes them block by block, a block taking this part of the budget.
VALUE_BLOCK_SHARE = 8
# The log form holds a tile of logits and one scratch tile of the same size.
LOG_FORM_TILES = 2
FLOAT32_BYTES = 4


@dataclass(frozen=True)
class Layout:
    """How one call is cut: ``chunk`` row groups at a time, ``tile_rows`` query rows per tile of
    the scaling form (all tiles of a chunk kept when ``keep``, else remade in every pass), the size
    of the one float32 buffer every chunk reuses, and ``value_block`` keys per block of the
    weighted values in the last product (all of them where they are made once per chunk)."""

    chunk: int
    tile_rows: int
    keep: bool
    buffer_elements: int
    value_block: int

    def log_tile_rows(self, n_k: int) -> int:
        """Rows per tile of the log form, whose tiles are carved from the same buffer."""
        return max(1, min(self.tile_rows, self.buffer_elements // (LOG_FORM_TILES * self.chunk * n_k)))


def padded_width(d_v: int) -> int:
    """The weighted values' width: ``[c * v, c]`` zero-padded to a multiple of 8."""
    return (d_v + 8) // 8 * 8


def group_vector_bytes(n_q: int, n_k: int, d: int, d_v: int, value_block: int) -> int:
    """What one row group holds besides its kernel while its chunk runs: its keys in float32 with a
    column of ones, the weighted values (``value_block`` keys' worth of them), and the potentials,
    norms and bounds. Nothing of the queries' or the output's size: those are read and written
    tile by tile."""
    return FLOAT32_BYTES * (n_k * (d + 1) + value_block * padded_width(d_v) + 6 * n_k + 3 * n_q)


def tile_row_bytes(n_k: int, d: int, d_v: int, itemsize: int) -> int:
    """What one query row of a tile holds: its kernel row, its scaled query, its product with the
    weighted values and its result (and its query cast to float32, inputs of another dtype)."""
    cast = 0 if itemsize == FLOAT32_BYTES else d
    return FLOAT32_BYTES * (n_k + (d + 1) + padded_width(d_v) + d_v + cast)


def layout_for(groups: int, n_q: int, n_k: int, on_cpu: bool, budget_bytes: int, *,
               d: int = 0, d_v: int = 0, itemsize: int = FLOAT32_BYTES) -> Layout:
    """The chunk and tile sizes that keep one call's extra memory within ``budget_bytes``: per row
    group its kernel (kept whole, or ``tile_rows`` rows of it at a time), ``tile_row_bytes`` per row
    of a tile and ``group_vector_bytes``. Below one group's vectors with one row, the budget is
    met as closely as a single row allows."""
    kernel_row = n_k * FLOAT32_BYTES
    row_bytes = tile_row_bytes(n_k, d, d_v, itemsize)
    vectors = group_vector_bytes(n_q, n_k, d, d_v, n_k)
    keep = n_q * row_bytes + vectors <= budget_bytes
    value_block = n_k
    if keep:
        chunk_bytes = min(budget_bytes, CPU_CHUNK_BYTES) if on_cpu else budget_bytes
        chunk = min(groups, max(1, chunk_bytes // (n_q * row_bytes + vectors)))
        tile_rows = min(n_q, max(1, CPU_TILE_BYTES // (chunk * kernel_row))) if on_cpu else n_q
        kernel = chunk * n_q * n_k
    else:
        if vectors + STREAM_TILE_ROWS * row_bytes > budget_bytes:  # the values block by block
            value_block = min(n_k, max(1, budget_bytes // VALUE_BLOCK_SHARE // (FLOAT32_BYTES * padded_width(d_v))))
            vectors = group_vector_bytes(n_q, n_k, d, d_v, value_block)
        cache = CPU_TILE_BYTES if on_cpu else budget_bytes  # the kernel tile of a chunk, for the cache
        chunk = min(groups, max(1, budget_bytes // (vectors + STREAM_TILE_ROWS * row_bytes)),
                    max(1, cache // (STREAM_TILE_ROWS * kernel_row)))
        tile_rows = min(n_q, max(1, (budget_bytes // chunk - vectors) // row_bytes), max(1, cache // (chunk * kernel_row)))
        kernel = chunk * tile_rows * n_k
    # At least one row per log-form tile: below that the budget is met only up to O(n_k).
    return Layout(chunk, tile_rows, keep, max(kernel, LOG_FORM_TILES * chunk * n_k), value_block)


@torch.no_grad()  # inference only: its in-place tiles would fail on inputs that require grad
def adversarial_sinkhorn_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    iterations: int,
    strength: float = 1.0,
    scale: float | None = None,
    budget_bytes: int = MEMORY_BUDGET_BYTES,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Attention through the adversarial Sinkhorn plan.

    ``q``: ``(..., n_q, d)``; ``k``: ``(..., n_k, d)``; ``v``: ``(..., n_k, d_v)``, with the same
    leading dims, e.g. ``(batch, heads, tokens, dim)``; any strides (views of a model's own layout
    are read in place, never copied whole). ``n_k`` may exceed ``n_q`` (reference-only appends keys).
    ``scale`` defaults to ``d ** -0.5``. ``budget_bytes`` bounds the plan's working set (see the
    module docstring). Returns ``(..., n_q, d_v)`` in ``q``'s dtype: ``out`` when given (any
    strides, e.g. a slice of a larger output), else a new tensor. No gradient flows through it,
    also where a sampler runs with autograd on (ComfyUI's UniPC outside ComfyUI's executor).
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
    if out is None:
        out = torch.empty((*lead, n_q, d_v), dtype=q.dtype, device=q.device)
    elif out.shape != (*lead, n_q, d_v) or out.dtype != q.dtype or out.device != q.device:
        raise ValueError(f"out must be {(*lead, n_q, d_v)} in {q.dtype} on {q.device}, "
                         f"got {tuple(out.shape)} in {out.dtype} on {out.device}")
    if math.prod(lead) == 0 or n_q == 0:
        return out
    if n_k == 0:
        raise ValueError("k and v must have at least one token")
    parts = group_views(q, k, v, out)
    layout = layout_for(parts[0][0].shape[0], n_q, n_k, q.device.type == "cpu", budget_bytes, d=d, d_v=d_v,
                        itemsize=q.element_size())
    # One buffer for every chunk's kernel: fresh memory is paid for (page faults) once per call.
    buffer = torch.empty(layout.buffer_elements, dtype=torch.float32, device=q.device)
    logit_factor = -float(strength) * float(scale)
    with torch.autocast(q.device.type, enabled=False):
        for q3, k3, v3, out3 in parts:
            for start in range(0, q3.shape[0], layout.chunk):
                sl = slice(start, start + layout.chunk)
                chunk = _Chunk(q3[sl], k3[sl], v3[sl], out3[sl], layout)
                if not _scaling_form(chunk, logit_factor, int(iterations), buffer, layout):
                    _log_form(chunk, logit_factor, int(iterations), buffer, layout.log_tile_rows(n_k))
                del chunk  # its keys, before the next chunk makes its own
    return out


def group_views(*tensors: torch.Tensor) -> list[tuple[torch.Tensor, ...]]:
    """The row groups of tensors with the same leading dims as ``(groups, tokens, width)`` views,
    never copies: one view of each where their strides allow folding the leading dims (a
    contiguous ``(batch, heads, tokens, dim)``), else one per index of the first leading dim (the
    heads of ``(batch, tokens, heads, dim)`` memory, as Qwen-Image's attention holds them)."""
    try:
        return [tuple(t.view(-1, *t.shape[-2:]) for t in tensors)]
    except RuntimeError:  # the strides do not allow it
        return [views for parts in zip(*tensors) for views in group_views(*parts)]


class _Chunk:
    """One chunk of row groups: ``q``, ``v`` and ``out`` are views in the caller's dtype and
    layout, read and written tile by tile; the keys are held in float32 with a column of ones
    (``[k, 1]``, which lets one product subtract a per-row shift)."""

    def __init__(self, q, k, v, out, layout: Layout):
        self.q, self.v, self.out, self.layout = q, v, out, layout
        self.groups, self.n_q, self.d = q.shape
        self.n_k, self.d_v = v.shape[1], v.shape[2]
        self.keys = self.new(self.groups, self.n_k, self.d + 1)
        self.keys[..., :-1] = k  # cast on the way, no copy of its own
        self.keys[..., -1].fill_(1.0)
        self.starts = range(0, self.n_q, layout.tile_rows)
        self.scaled = self.new(self.groups, min(layout.tile_rows, self.n_q), self.d + 1)  # every tile's queries

    def new(self, *shape, fill=None):
        t = torch.empty(shape, dtype=torch.float32, device=self.q.device)
        return t if fill is None else t.fill_(fill)

    def query_norms(self) -> torch.Tensor:
        """``|q_i|`` in float32, ``(groups, n_q, 1)``, cast tile by tile."""
        norms = self.new(self.groups, self.n_q, 1)
        for start in self.starts:
            rows = slice(start, start + self.layout.tile_rows)
            torch.linalg.vector_norm(self.q[:, rows].float(), dim=2, keepdim=True, out=norms[:, rows])
        return norms

    def scaled_queries(self, start: int, rows: int, factor: float, shift: torch.Tensor | None) -> torch.Tensor:
        """``[factor * q, shift]`` of rows ``start:start + rows`` (without the shift column when
        ``shift`` is None), in a buffer reused by every tile."""
        scaled = self.scaled[:, :rows]
        scaled[..., :-1].copy_(self.q[:, start:start + rows]).mul_(factor)  # cast, then scaled in float32
        if shift is None:
            return scaled[..., :-1]
        scaled[..., -1:].copy_(shift[:, start:start + rows])
        return scaled

    def key_matrix(self, with_ones: bool) -> torch.Tensor:
        return (self.keys if with_ones else self.keys[..., :-1]).transpose(1, 2)

    def write_output(self, tiles, col: torch.Tensor) -> None:
        """The last pass: rows of ``out = diag(1 / K c) K diag(c) v`` from the kernel ``tiles``
        (``(start, tile)`` in row order), as ``K @ [c * v, c]`` in one product, written into the
        output in its dtype. The weighted values are made once, or block by block per tile
        (``layout.value_block``); their columns are zero-padded to a multiple of 8 (BLAS runs an
        odd width markedly slower)."""
        block, d_v = self.layout.value_block, self.d_v
        weighted = self.new(self.groups, block, padded_width(d_v), fill=0.0)

        def weigh(first: int) -> torch.Tensor:
            keys = slice(first, first + block)
            w = weighted[:, :min(block, self.n_k - first)]
            w[..., :d_v].copy_(self.v[:, keys]).mul_(col[:, keys])
            w[..., d_v:d_v + 1] = col[:, keys]
            return w

        if block == self.n_k:
            weigh(0)
        for start, tile in tiles:
            if block == self.n_k:
                num = torch.bmm(tile, weighted)
            else:
                num = self.new(self.groups, tile.shape[1], weighted.shape[2], fill=0.0)
                for first in range(0, self.n_k, block):
                    num.baddbmm_(tile[..., first:first + block], weigh(first))
            self.out[:, start:start + tile.shape[1]] = num[..., :d_v] / num[..., d_v:d_v + 1]


def _scaling_form(chunk: _Chunk, logit_factor: float, iterations: int, buffer: torch.Tensor, layout: Layout) -> bool:
    """The scaling form over row tiles carved from ``buffer``, written into ``chunk.out``; False
    (and nothing written) where a row's logits span more than the form allows (the caller then
    uses the log form)."""
    groups, n_q, n_k = chunk.groups, chunk.n_q, chunk.n_k
    col_target = n_q / n_k
    make_tile = _kernel_tiles(chunk, logit_factor, buffer, layout)
    kept = []

    def tiles():
        """Each tile of the kernel in row order: the kept ones, or remade."""
        return iter(kept) if kept else ((start, make_tile(start)[0]) for start in chunk.starts)

    # Potentials in the scaling domain: column scalings c (g x n_k x 1) and the column mass that
    # the row-normalised kernel gives them (g x 1 x n_k); both products keep the tile row-major on
    # the side BLAS prefers.
    col = chunk.new(groups, n_k, 1, fill=1.0)
    col_mass = chunk.new(groups, 1, n_k, fill=0.0)
    if iterations:
        # The first half-iteration (c = 1) while each tile is made, checking the logits' span.
        spans_ok = None
        for start in chunk.starts:
            tile, ok = make_tile(start)
            if ok is not None:
                spans_ok = ok if spans_ok is None else spans_ok & ok
            col_mass.baddbmm_(tile.sum(dim=2, keepdim=True).reciprocal_().transpose(1, 2), tile)
            if layout.keep:
                kept.append((start, tile))
        # not ok: also NaN, which the log form propagates as ordinary attention would, so the
        # host's own NaN check reports it. With no iterations the form is an exact softmax.
        if spans_ok is not None and not bool(spans_ok):
            return False
        for done in range(1, iterations + 1):
            col = (col_target / col_mass).transpose(1, 2)
            if done == iterations:
                break
            col_mass.zero_()
            for _, tile in tiles():
                col_mass.baddbmm_(torch.bmm(tile, col).reciprocal_().transpose(1, 2), tile)
    # Final row normalisation fused with the output product.
    chunk.write_output(tiles(), col)
    return True


def _kernel_tiles(chunk: _Chunk, logit_factor: float, buffer: torch.Tensor, layout: Layout):
    """``make_tile(start)``: the kernel's tile of rows ``start:start + tile_rows``, ``exp2`` of the
    base-2 logits with each row shifted by a constant (which the row scaling absorbs) so that
    nothing overflows, and a device bool telling whether those rows' logits span little enough
    for the scaling form (None when that is known already). A kept tile has its own place in
    ``buffer``; a streamed one reuses the start of it."""
    groups, n_q, n_k = chunk.groups, chunk.n_q, chunk.n_k
    factor2 = logit_factor * LOG2E  # base-2 logits
    limit = SCALING_SPAN_LIMIT * LOG2E
    # Cauchy-Schwarz: |L_ij| <= |factor| * |q_i| * max_j |k_j|. When twice that fits, subtracting
    # the bound (instead of the row maximum) shifts every row safely and saves two passes, and
    # [factor2 * q, -bound] @ [k, 1]^T is the shifted logits in one product. One sync per chunk.
    key_norm = chunk.keys[..., :-1].norm(dim=2).amax(dim=1).view(groups, 1, 1)
    neg_bound = chunk.query_norms().mul_(-abs(factor2) * key_norm)
    bounded = bool(-2.0 * neg_bound.amin() <= limit)  # False for NaN too
    keys = chunk.key_matrix(with_ones=bounded)

    def make_tile(start: int):
        rows = min(layout.tile_rows, n_q - start)
        offset = groups * start * n_k if layout.keep else 0
        tile = buffer[offset:offset + groups * rows * n_k].view(groups, rows, n_k)
        torch.bmm(chunk.scaled_queries(start, rows, factor2, neg_bound if bounded else None), keys, out=tile)
        if bounded:
            return tile.exp2_(), None
        row_max = tile.amax(dim=2, keepdim=True)
        spans_ok = ((row_max - tile.amin(dim=2, keepdim=True)) <= limit).all()
        return tile.sub_(row_max).exp2_(), spans_ok

    return make_tile


def _log_form(chunk: _Chunk, logit_factor: float, iterations: int, buffer: torch.Tensor, tile_rows: int) -> None:
    """The formulas of asag-method.md section 2 in the log domain, over row tiles of logits remade
    in every pass: each tile holds whole rows, so the row potentials f are exact per tile, and the
    column potentials g come from a running log-sum-exp over the tiles."""
    groups, n_q, n_k = chunk.groups, chunk.n_q, chunk.n_k
    log_target = math.log(n_q / n_k)
    keys = chunk.key_matrix(with_ones=False)
    size = groups * tile_rows * n_k
    starts = range(0, n_q, tile_rows)

    def logits(start: int):
        """The logits of rows ``start:start + tile_rows``, and a scratch tile of the same shape."""
        rows = min(tile_rows, n_q - start)
        tile = buffer[:groups * rows * n_k].view(groups, rows, n_k)
        scratch = buffer[size:size + groups * rows * n_k].view(groups, rows, n_k)
        return torch.bmm(chunk.scaled_queries(start, rows, logit_factor, None), keys, out=tile), scratch

    g = chunk.new(groups, 1, n_k, fill=0.0)
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

    def plan_rows():
        """Each tile of exp(L + g), shifted by its row maximum (the row normalisation absorbs it)."""
        for start in starts:
            tile, _ = logits(start)
            tile.add_(g)
            yield start, tile.sub_(tile.amax(dim=2, keepdim=True)).exp_()

    chunk.write_output(plan_rows(), chunk.new(groups, n_k, 1, fill=1.0))


def adversarial_sinkhorn_attention_heads(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, **kwargs
) -> torch.Tensor:
    """The same operator for the ``(B, N, heads * dim_head)`` layout that attention modules use.

    Keys and values may carry more tokens than queries. Returns ``(B, N, heads * dim_head_v)``.
    The heads are views of the projections, and the output is written in that layout: nothing is
    copied on the way in or out.
    """
    b, n_q, inner = q.shape
    if inner % heads or k.shape[-1] % heads or v.shape[-1] % heads:
        raise ValueError(f"channel counts {inner}, {k.shape[-1]}, {v.shape[-1]} are not divisible by heads={heads}")

    def split(t: torch.Tensor) -> torch.Tensor:
        return t.unflatten(2, (heads, t.shape[2] // heads)).transpose(1, 2)

    out = torch.empty((b, n_q, v.shape[-1]), dtype=q.dtype, device=q.device)
    adversarial_sinkhorn_attention(split(q), split(k), split(v), out=split(out), **kwargs)
    return out
