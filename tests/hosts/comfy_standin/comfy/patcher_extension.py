# Stand-in for Comfy-Org/ComfyUI comfy/patcher_extension.py at a125cd84b054a57729b5eecab930ca9408719832.
# Kept faithful: the wrapper and callback registries as nested dicts {type: {key: [fn, ...]}} kept
# in transformer_options (or in model_options["transformer_options"]), the WrapperExecutor's call
# chain (each wrapper gets the executor, calls it to reach the next, the last calls the original),
# copy_nested_dicts and merge_nested_dicts (dict2's nested dicts copied, lists extended).
# Simplified: PatcherInjection and the callback helpers by key are left out.
from __future__ import annotations

from typing import Callable


class CallbacksMP:
    ON_CLONE = "on_clone"
    ON_PRE_RUN = "on_pre_run"
    ON_PREPARE_STATE = "on_prepare_state"
    ON_CLEANUP = "on_cleanup"

    @classmethod
    def init_callbacks(cls) -> dict:
        return {}


def get_all_callbacks(call_type: str, transformer_options: dict, is_model_options=False):
    if is_model_options:
        transformer_options = transformer_options.get("transformer_options", {})
    c_list = []
    for c in transformer_options.get("callbacks", {}).get(call_type, {}).values():
        c_list.extend(c)
    return c_list


class WrappersMP:
    OUTER_SAMPLE = "outer_sample"
    PREPARE_SAMPLING = "prepare_sampling"
    SAMPLER_SAMPLE = "sampler_sample"
    PREDICT_NOISE = "predict_noise"
    CALC_COND_BATCH = "calc_cond_batch"
    APPLY_MODEL = "apply_model"
    DIFFUSION_MODEL = "diffusion_model"

    @classmethod
    def init_wrappers(cls) -> dict:
        return {}


def add_wrapper_with_key(wrapper_type: str, key: str, wrapper: Callable, transformer_options: dict, is_model_options=False):
    if is_model_options:
        transformer_options = transformer_options.setdefault("transformer_options", {})
    wrappers = transformer_options.setdefault("wrappers", {})
    wrappers.setdefault(wrapper_type, {}).setdefault(key, []).append(wrapper)


def get_all_wrappers(wrapper_type: str, transformer_options: dict, is_model_options=False):
    if is_model_options:
        transformer_options = transformer_options.get("transformer_options", {})
    w_list = []
    for w in transformer_options.get("wrappers", {}).get(wrapper_type, {}).values():
        w_list.extend(w)
    return w_list


class WrapperExecutor:
    """Calls the wrappers around a function, outermost first."""

    def __init__(self, original: Callable, class_obj: object, wrappers: list, idx: int):
        self.original = original
        self.class_obj = class_obj
        self.wrappers = wrappers.copy()
        self.idx = idx
        self.is_last = idx == len(wrappers)

    def __call__(self, *args, **kwargs):
        return self._create_next_executor().execute(*args, **kwargs)

    def execute(self, *args, **kwargs):
        args, kwargs = list(args), dict(kwargs)
        if self.is_last:
            return self.original(*args, **kwargs)
        return self.wrappers[self.idx](self, *args, **kwargs)

    def _create_next_executor(self) -> "WrapperExecutor":
        new_idx = self.idx + 1
        if new_idx > len(self.wrappers):
            raise Exception("Wrapper idx exceeded available wrappers; something went very wrong.")
        if self.class_obj is None:
            return WrapperExecutor.new_executor(self.original, self.wrappers, new_idx)
        return WrapperExecutor.new_class_executor(self.original, self.class_obj, self.wrappers, new_idx)

    @classmethod
    def new_executor(cls, original: Callable, wrappers: list, idx=0):
        return cls(original, class_obj=None, wrappers=wrappers, idx=idx)

    @classmethod
    def new_class_executor(cls, original: Callable, class_obj: object, wrappers: list, idx=0):
        return cls(original, class_obj, wrappers, idx=idx)


def copy_nested_dicts(input_dict: dict):
    new_dict = input_dict.copy()
    for key, value in input_dict.items():
        if isinstance(value, dict):
            new_dict[key] = copy_nested_dicts(value)
        elif isinstance(value, list):
            new_dict[key] = value.copy()
    return new_dict


def merge_nested_dicts(dict1: dict, dict2: dict, copy_dict1=True):
    merged_dict = copy_nested_dicts(dict1) if copy_dict1 else dict1
    for key, value in dict2.items():
        if isinstance(value, dict):
            curr_value = merged_dict.setdefault(key, {})
            merged_dict[key] = merge_nested_dicts(value, curr_value)
        elif isinstance(value, list):
            merged_dict.setdefault(key, []).extend(value)
        else:
            merged_dict[key] = value
    return merged_dict
