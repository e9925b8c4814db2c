# Stand-in for Comfy-Org/ComfyUI comfy/sampler_helpers.py at a125cd84b054a57729b5eecab930ca9408719832.
# Kept faithful: convert_cond (a CONDITIONING list [[tensor, {...}], ...] into cond dicts with
# cross_attn, model_conds and a uuid), prepare_model_patcher's merge of the patcher's wrappers and
# callbacks into the sampling model_options' transformer_options. Simplified: no hooks, no model
# loading (prepare_sampling returns the patcher's model).
import uuid

import comfy.patcher_extension


def convert_cond(cond):
    out = []
    for c in cond:
        temp = c[1].copy()
        model_conds = temp.get("model_conds", {})
        if c[0] is not None:
            temp["cross_attn"] = c[0]
        temp["model_conds"] = model_conds
        temp["uuid"] = uuid.uuid4()
        out.append(temp)
    return out


def prepare_sampling(model, noise_shape, conds, model_options=None):
    return model.model, conds, []


def prepare_model_patcher(model, conds, model_options: dict):
    comfy.patcher_extension.merge_nested_dicts(model_options["transformer_options"].setdefault("wrappers", {}), model.wrappers,
                                               copy_dict1=False)
    comfy.patcher_extension.merge_nested_dicts(model_options["transformer_options"].setdefault("callbacks", {}), model.callbacks,
                                               copy_dict1=False)
