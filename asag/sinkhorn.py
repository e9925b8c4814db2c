"""Adversarial Sinkhorn attention: the perturbed self-attention of ASAG.

The numerical contract is section 2 of ``shared/docs/asag-method.md``. Per (batch x head) row
group, with logits ``L = -strength * scale * q @ k^T``, a few Sinkhorn iterations balance
``exp(L)`` towards a doubly-stochastic plan (rows sum to 1, columns to ``n_q / n_k``) and the
output is ``P @ v``. Ordinary attention is the ``iterations=0, strength=-1`` case.

Two exact forms of the same iteration are used:

* the scaling form: ``K = exp(L - row shift)`` once, then the potentials are vectors updated by
  matrix-vector products, and ``out = diag(f) K diag(c) v`` without ever forming ``P``. One
  ``n_q x n_k`` float32 buffer per chunk of row groups, read once per iteration and once for the
  output; on the CPU it is made and read in row tiles that stay in the cache in between.
* the log form, for row groups whose logits span more than ``SCALING_SPAN_LIMIT`` (where
  ``exp`` of the shifted logits would underflow and the scaling form would lose columns).

Both accumulate in float32 with autocast off, whatever the input dtype.
"""
from __future__ import annotations

import math

import torch

# exp(-SCALING_SPAN_LIMIT) is ~1e-26: far above float32's smallest normal (1e-38) even after
# the column scalings (bounded by n_q / n_k / that value) multiply it back.
SCALING_SPAN_LIMIT = 60.0

# The scaling form makes its kernel with exp2 (about twice as fast as exp on the CPU), from
# logits in base 2: exp(x) = exp2(x * LOG2E).
LOG2E = 1.0 / math.log(2.0)

# Working-set budget for the n_q x n_k float32 kernel of one chunk of row groups.
DEFAULT_CHUNK_BYTES = 256 * 1024 * 1024

# On the CPU, speed comes from the cache: chunks of about the last-level cache's size, made and
# reduced in row tiles that fit the per-core cache. A GPU takes each chunk as one tile.
CPU_CHUNK_BYTES = 16 * 1024 * 1024
CPU_TILE_BYTES = 8 * 1024 * 1024


def adversarial_sinkhorn_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    iterations: int,
    strength: float = 1.0,
    scale: float | None = None,
    max_chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> torch.Tensor:
    """Attention through the adversarial Sinkhorn plan.

    ``q``: ``(..., n_q, d)``; ``k``: ``(..., n_k, d)``; ``v``: ``(..., n_k, d_v)``, heads folded into
    the leading dims (which must match). ``n_k`` may exceed ``n_q`` (reference-only appends keys).
    ``scale`` defaults to ``d ** -0.5``. Returns ``(..., n_q, d_v)`` in ``q``'s dtype.
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
    on_cpu = q.device.type == "cpu"
    slice_bytes = n_q * n_k * 4
    chunk = min(groups, max(1, (min(max_chunk_bytes, CPU_CHUNK_BYTES) if on_cpu else max_chunk_bytes) // slice_bytes))
    tile_rows = max(1, CPU_TILE_BYTES // (chunk * n_k * 4)) if on_cpu else n_q
    # One buffer for every chunk's kernel: fresh memory is paid for (page faults) once per call.
    kernel = torch.empty(chunk * slice_bytes // 4, dtype=torch.float32, device=q.device)
    logit_factor = -float(strength) * float(scale)
    with torch.autocast(q.device.type, enabled=False):
        for start in range(0, groups, chunk):
            sl = slice(start, start + chunk)
            out[sl] = _sinkhorn_chunk(q3[sl].float(), k3[sl].float(), v3[sl].float(), logit_factor, int(iterations),
                                      kernel, tile_rows).to(q.dtype)
    return out.reshape(*lead, n_q, d_v)


def _sinkhorn_chunk(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, logit_factor: float, iterations: int,
                    kernel: torch.Tensor, tile_rows: int) -> torch.Tensor:
    """The scaling form, in row tiles of the kernel (carved from the flat ``kernel`` buffer): each
    tile is made, exponentiated and reduced while it is in cache, and every later pass reads each
    tile once for both of its products."""
    groups, n_q, n_k = q.shape[0], q.shape[1], k.shape[1]
    col_target = n_q / n_k
    # k with a column of ones: a row shift then rides in the logits' matrix product (see below).
    k_shift_t = torch.cat((k, torch.ones_like(k[..., :1])), dim=2).transpose(1, 2)
    factor2 = logit_factor * LOG2E  # base-2 logits
    key_bound = abs(factor2) * k.norm(dim=2).amax(dim=1).view(groups, 1, 1)
    # Potentials in the scaling domain: row scalings f (as rows, g x 1 x rows), column scalings c
    # (g x n_k x 1); both products keep the tile row-major on the side BLAS prefers.
    col = torch.ones((groups, n_k, 1), dtype=q.dtype, device=q.device)
    col_mass = torch.zeros((groups, 1, n_k), dtype=q.dtype, device=q.device)
    tiles = []
    for start in range(0, n_q, tile_rows):
        rows = min(tile_rows, n_q - start)
        offset = groups * start * n_k
        tile = kernel[offset:offset + groups * rows * n_k].view(groups, rows, n_k)
        if not _shifted_kernel(tile, q[:, start:start + rows], k_shift_t, key_bound, factor2):
            logits = torch.bmm(q * logit_factor, k_shift_t[:, :-1], out=kernel[:groups * n_q * n_k].view(groups, n_q, n_k))
            return _log_domain(logits, v, iterations, col_target)
        if iterations:  # the first half-iteration (c = 1) while the tile is hot
            col_mass.baddbmm_(tile.sum(dim=2, keepdim=True).reciprocal_().transpose(1, 2), tile)
        tiles.append(tile)
    for done in range(1, iterations + 1):
        col = (col_target / col_mass).transpose(1, 2)
        if done == iterations:
            break
        col_mass.zero_()
        for tile in tiles:
            col_mass.baddbmm_(torch.bmm(tile, col).reciprocal_().transpose(1, 2), tile)
    # Final row normalisation fused with the output product: K @ [c * v, c] in one pass, the
    # columns zero-padded to a multiple of 8 (BLAS runs an odd width markedly slower).
    d_v = v.shape[2]
    weighted = torch.zeros((groups, n_k, (d_v + 8) // 8 * 8), dtype=q.dtype, device=q.device)
    torch.mul(v, col, out=weighted[..., :d_v])
    weighted[..., d_v:d_v + 1] = col
    out = torch.empty((groups, n_q, d_v), dtype=q.dtype, device=q.device)
    for start, tile in zip(range(0, n_q, tile_rows), tiles):
        num = torch.bmm(tile, weighted)
        out[:, start:start + tile.shape[1]] = num[..., :d_v] / num[..., d_v:d_v + 1]
    return out


def _shifted_kernel(tile: torch.Tensor, q: torch.Tensor, k_shift_t: torch.Tensor, key_bound: torch.Tensor,
                    factor2: float) -> bool:
    """Fill ``tile`` with ``exp`` of the logits of these query rows (``exp2`` of the base-2 logits,
    ``factor2 * q @ k^T``), each row shifted by a constant (which the row scaling absorbs) so that
    nothing overflows. False, leaving ``tile`` undefined, if a row's logits span more than the
    scaling form allows. ``k_shift_t`` is ``[k, 1]`` transposed: ``[factor2 * q, -shift] @ k_shift_t``
    is the shifted logits in one product."""
    limit = SCALING_SPAN_LIMIT * LOG2E
    # Cauchy-Schwarz: |L_ij| <= |factor| * |q_i| * max_j |k_j|. When twice that fits, subtracting
    # the bound (instead of the row maximum) shifts every row safely and saves two passes.
    row_bound = q.norm(dim=2, keepdim=True) * key_bound
    if 2.0 * row_bound.amax().item() <= limit:
        torch.bmm(torch.cat((q * factor2, row_bound.neg()), dim=2), k_shift_t, out=tile).exp2_()
        return True
    logits = torch.bmm(q * factor2, k_shift_t[:, :-1], out=tile)
    row_max = logits.amax(dim=2, keepdim=True)
    # not (span <= limit): also NaN, which the log form propagates as ordinary attention would,
    # so the host's own NaN check reports it.
    if not (row_max - logits.amin(dim=2, keepdim=True)).amax().item() <= limit:
        return False
    logits.sub_(row_max).exp2_()
    return True


def _log_domain(logits: torch.Tensor, v: torch.Tensor, iterations: int, col_target: float) -> torch.Tensor:
    log_target = math.log(col_target)
    g = torch.zeros_like(logits[:, :1, :])
    for _ in range(iterations):
        f = -torch.logsumexp(logits + g, dim=2, keepdim=True)
        g = log_target - torch.logsumexp(logits + f, dim=1, keepdim=True)
    logits.add_(g)
    logits.sub_(logits.logsumexp(dim=2, keepdim=True)).exp_()
    return torch.bmm(logits, v)


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
