# Stand-in for lllyasviel/stable-diffusion-webui-forge backend/sampling/sampling_function.py at
# dfdcbab685e57677014f05a3309b48cc87383167.
#
# Kept faithful: the order of chunks in a batch (uncond before cond, cond_or_uncond [1, 0]), the
# per-chunk copy of model_options["transformer_options"] with cond_or_uncond, sigmas, cond_mark,
# cond_indices and uncond_indices, control objects attached to transformer_options and get_control
# called per UNet call, model_function_wrapper, the cfg1 optimisation, pre-CFG functions in the
# positional Forge form, the single sampler_cfg_function slot, post-CFG functions called in list
# order with the args dict of forge-and-controlnet.md A.4, conditioning modifiers, the
# per-step read of forge_objects.unet, and batches sized by free memory (the concatenable chunks
# halved until model.memory_required fits memory_management.get_free_memory).
# Simplified: areas, masks and timestep ranges of conds are not modelled (full-image conds,
# mult = strength).
import math

import torch

from backend import memory_management
from backend.sampling.condition import Condition, compile_conditions, compile_weighted_conditions


def get_area_and_mult(conds, x_in, timestep_in):
    strength = conds.get("strength", 1.0)
    conditioning = {name: c.process_cond(batch_size=x_in.shape[0], device=x_in.device)
                    for name, c in conds["model_conds"].items()}
    return dict(input_x=x_in, mult=torch.ones_like(x_in) * strength, conditioning=conditioning,
                control=conds.get("control", None))


def can_concat_cond(c1, c2):
    if c1["input_x"].shape != c2["input_x"].shape:
        return False
    if c1["control"] is not c2["control"]:
        return False
    if c1["conditioning"].keys() != c2["conditioning"].keys():
        return False
    return all(c1["conditioning"][k].can_concat(c2["conditioning"][k]) for k in c1["conditioning"])


def cond_cat(c_list):
    return {k: c_list[0][k].concat([c[k] for c in c_list[1:]]) for k in c_list[0]}


def compute_cond_mark(cond_or_uncond, sigmas):
    rows = int(sigmas.shape[0])
    return torch.Tensor([cx for cx in cond_or_uncond for _ in range(rows)]).to(sigmas)


def compute_cond_indices(cond_or_uncond, sigmas):
    rows = int(sigmas.shape[0])
    cond_indices, uncond_indices = [], []
    for i, cx in enumerate(cond_or_uncond):
        (cond_indices if cx == 0 else uncond_indices).extend(range(i * rows, (i + 1) * rows))
    return cond_indices, uncond_indices


def calc_cond_uncond_batch(model, cond, uncond, x_in, timestep, model_options):
    COND, UNCOND = 0, 1
    out = {COND: torch.zeros_like(x_in), UNCOND: torch.zeros_like(x_in)}
    count = {COND: torch.ones_like(x_in) * 1e-37, UNCOND: torch.ones_like(x_in) * 1e-37}

    to_run = [(get_area_and_mult(x, x_in, timestep), COND) for x in cond]
    if uncond is not None:
        to_run += [(get_area_and_mult(x, x_in, timestep), UNCOND) for x in uncond]

    while to_run:
        first = to_run[0]
        first_shape = first[0]["input_x"].shape
        # Forge collects the indices that concatenate with the first, reversed, and pops them in
        # that order: the last chunk (uncond) comes first in the batch.
        to_batch_temp = [i for i in range(len(to_run)) if can_concat_cond(to_run[i][0], first[0])]
        to_batch_temp.reverse()
        to_batch = to_batch_temp[:1]
        free_memory = memory_management.get_free_memory(x_in.device)
        for i in range(1, len(to_batch_temp) + 1):
            batch_amount = to_batch_temp[:len(to_batch_temp) // i]
            input_shape = [len(batch_amount) * first_shape[0]] + list(first_shape)[1:]
            if model.memory_required(input_shape) < free_memory:
                to_batch = batch_amount
                break

        input_x, mult, c, cond_or_uncond, control = [], [], [], [], None
        for i in to_batch:
            chunk, kind = to_run.pop(i)
            input_x.append(chunk["input_x"])
            mult.append(chunk["mult"])
            c.append(chunk["conditioning"])
            cond_or_uncond.append(kind)
            control = chunk["control"]

        batch_chunks = len(cond_or_uncond)
        input_x = torch.cat(input_x)
        c = cond_cat(c)
        timestep_ = torch.cat([timestep] * batch_chunks)

        transformer_options = {}
        if "transformer_options" in model_options:
            transformer_options = model_options["transformer_options"].copy()
        transformer_options["cond_or_uncond"] = cond_or_uncond[:]
        transformer_options["sigmas"] = timestep
        transformer_options["cond_mark"] = compute_cond_mark(cond_or_uncond, timestep)
        transformer_options["cond_indices"], transformer_options["uncond_indices"] = compute_cond_indices(cond_or_uncond, timestep)
        c["transformer_options"] = transformer_options

        if control is not None:
            p = control
            while p is not None:
                p.transformer_options = transformer_options
                p = p.previous_controlnet
            c["control"] = control.get_control(input_x, timestep_, c.copy(), len(cond_or_uncond))
            c["control_model"] = control

        if "model_function_wrapper" in model_options:
            output = model_options["model_function_wrapper"](
                model.apply_model, {"input": input_x, "timestep": timestep_, "c": c, "cond_or_uncond": cond_or_uncond}
            ).chunk(batch_chunks)
        else:
            output = model.apply_model(input_x, timestep_, **c).chunk(batch_chunks)

        for o in range(batch_chunks):
            out[cond_or_uncond[o]] += output[o] * mult[o]
            count[cond_or_uncond[o]] += mult[o]

    return out[COND] / count[COND], out[UNCOND] / count[UNCOND]


def sampling_function_inner(model, x, timestep, uncond, cond, cond_scale, model_options={}, seed=None, return_full=False):
    edit_strength = sum(item.get("strength", 1) for item in cond)

    if math.isclose(cond_scale, 1.0) and not model_options.get("disable_cfg1_optimization", False):
        uncond_ = None
    else:
        uncond_ = uncond

    for fn in model_options.get("sampler_pre_cfg_function", []):
        model, cond, uncond_, x, timestep, model_options = fn(model, cond, uncond_, x, timestep, model_options)

    cond_pred, uncond_pred = calc_cond_uncond_batch(model, cond, uncond_, x, timestep, model_options)

    if "sampler_cfg_function" in model_options:
        args = {"cond": x - cond_pred, "uncond": x - uncond_pred, "cond_scale": cond_scale, "timestep": timestep, "input": x,
                "sigma": timestep, "cond_denoised": cond_pred, "uncond_denoised": uncond_pred, "model": model,
                "model_options": model_options}
        cfg_result = x - model_options["sampler_cfg_function"](args)
    elif not math.isclose(edit_strength, 1.0):
        cfg_result = uncond_pred + (cond_pred - uncond_pred) * cond_scale * edit_strength
    else:
        cfg_result = uncond_pred + (cond_pred - uncond_pred) * cond_scale

    for fn in model_options.get("sampler_post_cfg_function", []):
        args = {"denoised": cfg_result, "cond": cond, "uncond": uncond, "model": model, "uncond_denoised": uncond_pred,
                "cond_denoised": cond_pred, "sigma": timestep, "model_options": model_options, "input": x}
        cfg_result = fn(args)

    if return_full:
        return cfg_result, cond_pred, uncond_pred
    return cfg_result


def sampling_function(self, denoiser_params, cond_scale, cond_composition):
    unet_patcher = self.inner_model.inner_model.forge_objects.unet  # read at every step
    return sampling_function_with_options(self, denoiser_params, cond_scale, cond_composition, unet_patcher.model_options)


def sampling_function_with_options(self, denoiser_params, cond_scale, cond_composition, model_options, image_cond=True):
    """The body of ``sampling_function`` from the line that has ``model_options``: the Forge lines
    differ in where those come from (Forge Neo: joined with the sampler's; Forge Classic: updated
    by them) and, Neo, in attaching the image condition to inpainting models only (``image_cond``);
    their stand-ins call this with theirs."""
    unet_patcher = self.inner_model.inner_model.forge_objects.unet
    model = unet_patcher.model
    control = unet_patcher.controlnet_linked_list
    x = denoiser_params.x
    timestep = denoiser_params.sigma
    uncond = compile_conditions(denoiser_params.text_uncond)
    cond = compile_weighted_conditions(denoiser_params.text_cond, cond_composition)
    seed = self.p.seeds[0]

    image_cond_in = unet_patcher.extra_concat_condition
    if image_cond_in is None:
        image_cond_in = denoiser_params.image_cond
    if image_cond and isinstance(image_cond_in, torch.Tensor) and image_cond_in.shape[0] == x.shape[0] and image_cond_in.shape[2:] == x.shape[2:]:
        for h in cond + (uncond or []):
            h["model_conds"]["c_concat"] = Condition(image_cond_in)

    if control is not None:
        for h in cond + (uncond or []):
            h["control"] = control

    for modifier in model_options.get("conditioning_modifiers", []):
        model, x, timestep, uncond, cond, cond_scale, model_options, seed = modifier(model, x, timestep, uncond, cond, cond_scale, model_options, seed)

    return sampling_function_inner(model, x, timestep, uncond, cond, cond_scale, model_options, seed, return_full=True)
