# Stand-in for Forge Neo backend/utils.py (exo101/sd-webui-forge-neo-v3 5692d2d, webui/backend/utils.py:332-366):
# the helpers the sampling, patcher and model stand-ins use, with Neo's behaviour (fp16_fix and
# pad_to_patch_size: utils.py:207-213, :300-310).
# join_dicts: a copy of the base, joined with the update: dicts joined key by key, lists
# concatenated (base first), anything else replaced. deepcopy_: dicts and lists copied, every other
# object (functions, tuples, patch objects) shared.

import torch


def fp16_fix(x):
    """Half-precision activations clamped to the finite range, NaN to 0 (others unchanged)."""
    if x.dtype == torch.float16:
        return torch.nan_to_num(x, nan=0.0, posinf=65504, neginf=-65504)
    return x


def pad_to_patch_size(img, patch_size=(2, 2), padding_mode="circular"):
    """Pads the spatial dims at their end to multiples of ``patch_size``."""
    pad = ()
    for i in range(img.ndim - 2):
        pad = (0, (patch_size[i] - img.shape[i + 2] % patch_size[i]) % patch_size[i]) + pad
    return torch.nn.functional.pad(img, pad, mode=padding_mode)


def join_dicts(base_dict, update_dict):
    result = dict(base_dict or {})
    for key, value in (update_dict or {}).items():
        if isinstance(result.get(key), dict) and isinstance(value, dict):
            result[key] = join_dicts(result[key], value)
        elif isinstance(result.get(key), list) and isinstance(value, list):
            result[key] = result[key] + value
        else:
            result[key] = value
    return result


def deepcopy_(obj, memo=None):
    memo = {} if memo is None else memo
    if id(obj) in memo:
        return memo[id(obj)]
    if isinstance(obj, dict):
        copied = {deepcopy_(k, memo): deepcopy_(v, memo) for k, v in obj.items()}
    elif isinstance(obj, list):
        copied = [deepcopy_(item, memo) for item in obj]
    else:
        copied = obj
    memo[id(obj)] = copied
    return copied
