# Stand-in for Forge Neo backend/utils.py (exo101/sd-webui-forge-neo-v3 5692d2d, webui/backend/utils.py:332-366):
# the two helpers the sampling and patcher stand-ins use, with Neo's behaviour.
# join_dicts: a copy of the base, joined with the update: dicts joined key by key, lists
# concatenated (base first), anything else replaced. deepcopy_: dicts and lists copied, every other
# object (functions, tuples, patch objects) shared.


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
