"""Float64 log-domain reference of asag-method.md section 2, written straight from the formulas."""
import math

import torch


def reference_plan(q, k, *, iterations, strength=1.0, scale=None):
    q, k = q.double(), k.double()
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    logits = -strength * scale * (q @ k.transpose(-1, -2))
    n_q, n_k = logits.shape[-2:]
    f = torch.zeros(*logits.shape[:-1], 1, dtype=torch.float64)
    g = torch.zeros(*logits.shape[:-2], 1, n_k, dtype=torch.float64)
    for _ in range(iterations):
        f = -torch.logsumexp(logits + g, dim=-1, keepdim=True)
        g = -torch.logsumexp(logits + f, dim=-2, keepdim=True) + math.log(n_q / n_k)
    f = -torch.logsumexp(logits + g, dim=-1, keepdim=True)
    return torch.exp(logits + f + g)


def reference_attention(q, k, v, **kwargs):
    return reference_plan(q, k, **kwargs) @ v.double()
