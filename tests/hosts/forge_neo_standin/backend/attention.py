# Stand-in for Forge Neo backend/attention.py (exo101/sd-webui-forge-neo-v3 5692d2d,
# webui/backend/attention.py:203-235, :334-363): `attention_function` is chosen once at import,
# here the PyTorch one (`attention_pytorch`): q, k, v as (batch, tokens, heads * dim), or already
# (batch, heads, tokens, dim) with skip_reshape; the output (batch, tokens, heads * dim) unless
# skip_output_reshape. Kept faithful: the mask's broadcasting, the call signature (the blocks pass
# transformer_options, which it ignores). Simplified: no batch limit for SDPA, no other backends.
import torch.nn.functional as F


def attention_pytorch(q, k, v, heads, mask=None, attn_precision=None, skip_reshape=False, skip_output_reshape=False, **kwargs):
    if skip_reshape:
        batch, _, _, dim_head = q.shape
    else:
        batch, _, inner = q.shape
        dim_head = inner // heads
        q, k, v = (t.view(batch, -1, heads, dim_head).transpose(1, 2) for t in (q, k, v))
    if mask is not None:
        if mask.ndim == 2:
            mask = mask.unsqueeze(0)
        if mask.ndim == 3:
            mask = mask.unsqueeze(1)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=0.0, is_causal=False)
    if not skip_output_reshape:
        out = out.transpose(1, 2).reshape(batch, -1, heads * dim_head)
    return out


attention_function = attention_pytorch
