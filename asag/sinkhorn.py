"""Adversarial Sinkhorn attention: the perturbed self-attention of ASAG.

The numerical contract is section 2 of ``shared/docs/asag-method.md``. Per (batch x head) row
group, with logits ``L = -strength * scale * q @ k^T``, a few Sinkhorn iterations balance
``exp(L)`` towards a doubly-stochastic plan (rows sum to 1, columns to ``n_q / n_k``) and the
output is ``P @ v``. Ordinary attention is the ``iterations=0, strength=-1`` case.

Two exact forms of the same iteration are used:

* the scaling form: ``K = exp(L - rowmax)`` once, then the potentials are vectors updated by
  matrix-vector products, and ``out = diag(f) K diag(c) v`` without ever forming ``P``. One
  ``n_q x n_k`` float32 buffer per chunk, one pass over it per half-iteration.
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

# Working-set budget for the n_q x n_k float32 logits of one chunk of row groups.
DEFAULT_CHUNK_BYTES = 256 * 1024 * 1024


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
    chunk = max(1, max_chunk_bytes // (n_q * n_k * 4))
    logit_factor = -float(strength) * float(scale)
    with torch.autocast(q.device.type, enabled=False):
        for start in range(0, groups, chunk):
            sl = slice(start, start + chunk)
            out[sl] = _sinkhorn_chunk(q3[sl].float(), k3[sl].float(), v3[sl].float(), logit_factor, int(iterations)).to(q.dtype)
    return out.reshape(*lead, n_q, d_v)


def _sinkhorn_chunk(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, logit_factor: float, iterations: int) -> torch.Tensor:
    groups, n_q, n_k = q.shape[0], q.shape[1], k.shape[1]
    col_target = n_q / n_k
    # Cauchy-Schwarz bound on each row's logits: |L_ij| <= |factor| * |q_i| * max_j |k_j|.
    # When the whole span fits the scaling form, subtracting the bound (instead of the row
    # maximum) shifts every row safely and saves two passes over the n_q x n_k buffer.
    row_bound = abs(logit_factor) * q.norm(dim=2, keepdim=True) * k.norm(dim=2).amax(dim=1).view(groups, 1, 1)
    if 2.0 * row_bound.amax().item() <= SCALING_SPAN_LIMIT:
        kernel = torch.baddbmm(row_bound.neg(), q, k.transpose(1, 2), alpha=logit_factor).exp_()
    else:
        logits = torch.bmm(q, k.transpose(1, 2)).mul_(logit_factor)
        row_max = logits.amax(dim=2, keepdim=True)
        span = (row_max - logits.amin(dim=2, keepdim=True)).amax().item()
        # not (span <= limit): also NaN, which the log form propagates as ordinary attention
        # would, so the host's own NaN check reports it.
        if not span <= SCALING_SPAN_LIMIT:
            return _log_domain(logits, v, iterations, col_target)
        kernel = logits.sub_(row_max).exp_()  # in place: still the only n_q x n_k buffer
    # Potentials in the scaling domain: row scalings f (g, 1, n_q), column scalings c (g, n_k, 1).
    # Both products keep the kernel row-major on the left or right as BLAS prefers.
    col = torch.ones((groups, n_k, 1), dtype=q.dtype, device=q.device)
    for _ in range(iterations):
        row_inv = torch.bmm(kernel, col).reciprocal_().transpose(1, 2)  # f as a row vector
        col = (col_target / torch.bmm(row_inv, kernel)).transpose(1, 2)
    # Final row normalisation fused with the output product: K @ [c * v, c] in one pass.
    num = torch.bmm(kernel, torch.cat((v * col, col), dim=2))
    return num[..., :-1] / num[..., -1:]


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
