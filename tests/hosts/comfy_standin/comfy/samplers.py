# Stand-in for Comfy-Org/ComfyUI comfy/samplers.py at a125cd84b054a57729b5eecab930ca9408719832.
# Kept faithful:
# - calc_cond_batch(model, conds, x_in, timestep, model_options) -> one prediction per entry of
#   conds (None for a skipped one: zeros), through CALC_COND_BATCH wrappers: each cond dict
#   becomes a chunk (get_area_and_mult), chunks that can be concatenated (same shape, the same
#   control object, contexts concatenable) are batched, with transformer_options made fresh per
#   batch from model_options["transformer_options"] (merge_nested_dicts: nested dicts copied) plus
#   "cond_or_uncond" (the index in conds of each chunk, in batch order), "uuids" and "sigmas";
#   the control's get_control(input_x, timestep_, c, len(cond_or_uncond), transformer_options)
#   per batch; model_function_wrapper if set, else model.apply_model; each chunk's output added
#   to its entry times its mult, divided by the counts.
# - sampling_function: uncond skipped (None) when cond_scale is 1 and disable_cfg1_optimization
#   is not set; sampler_calc_cond_batch_function; pre-CFG functions; cfg_function: CFG (or
#   sampler_cfg_function), then every post-CFG function in list order with the real argument dict
#   (denoised, cond, uncond, cond_scale, model, uncond_denoised, cond_denoised, sigma,
#   model_options, input).
# - CFGGuider.sample -> outer_sample (OUTER_SAMPLE wrappers; pre_run / cleanup of the patcher) ->
#   inner_sample (conds processed, model_options cloned with "sample_sigmas") -> KSAMPLER.sample
#   -> the k-diffusion sampler over KSamplerX0Inpaint -> CFGGuider.predict_noise -> sampling_function.
# Simplified: no areas, masks, hooks, default conds, gligen, context windows or inpainting masks;
# the sampler is k-diffusion's own (ComfyUI vendors the same functions in comfy/k_diffusion).
from __future__ import annotations

import collections
import math

import torch

import comfy.model_management
import comfy.model_patcher
import comfy.patcher_extension
import comfy.sampler_helpers


def get_area_and_mult(conds, x_in, timestep_in):
    if "timestep_start" in conds and timestep_in[0] > conds["timestep_start"]:
        return None
    if "timestep_end" in conds and timestep_in[0] < conds["timestep_end"]:
        return None
    strength = conds.get("strength", 1.0)
    input_x = x_in
    mult = torch.ones_like(input_x) * strength
    conditioning = {c: model_cond.process_cond(batch_size=x_in.shape[0], area=None) for c, model_cond in conds["model_conds"].items()}
    cond_obj = collections.namedtuple("cond_obj", ["input_x", "mult", "conditioning", "area", "control", "patches", "uuid", "hooks"])
    return cond_obj(input_x, mult, conditioning, None, conds.get("control", None), None, conds["uuid"], None)


def cond_equal_size(c1, c2):
    if c1 is c2:
        return True
    if c1.keys() != c2.keys():
        return False
    return all(c1[k].can_concat(c2[k]) for k in c1)


def can_concat_cond(c1, c2):
    if c1.input_x.shape != c2.input_x.shape:
        return False

    def objects_concatable(obj1, obj2):
        if (obj1 is None) != (obj2 is None):
            return False
        return obj1 is None or obj1 is obj2

    if not objects_concatable(c1.control, c2.control) or not objects_concatable(c1.patches, c2.patches):
        return False
    return cond_equal_size(c1.conditioning, c2.conditioning)


def cond_cat(c_list):
    temp = {}
    for x in c_list:
        for k in x:
            temp.setdefault(k, []).append(x[k])
    return {k: conds[0].concat(conds[1:]) for k, conds in temp.items()}


def calc_cond_batch(model, conds, x_in, timestep, model_options):
    return _calc_cond_batch_outer(model, conds, x_in, timestep, model_options)


def _calc_cond_batch_outer(model, conds, x_in, timestep, model_options):
    executor = comfy.patcher_extension.WrapperExecutor.new_executor(
        _calc_cond_batch,
        comfy.patcher_extension.get_all_wrappers(comfy.patcher_extension.WrappersMP.CALC_COND_BATCH, model_options, is_model_options=True),
    )
    return executor.execute(model, conds, x_in, timestep, model_options)


def _calc_cond_batch(model, conds, x_in, timestep, model_options):
    out_conds, out_counts = [], []
    hooked_to_run = {}
    for i in range(len(conds)):
        out_conds.append(torch.zeros_like(x_in))
        out_counts.append(torch.ones_like(x_in) * 1e-37)
        cond = conds[i]
        if cond is not None:
            for x in cond:
                p = get_area_and_mult(x, x_in, timestep)
                if p is None:
                    continue
                hooked_to_run.setdefault(p.hooks, list())
                hooked_to_run[p.hooks] += [(p, i)]

    model.current_patcher.prepare_state(timestep)

    for hooks, to_run in hooked_to_run.items():
        while len(to_run) > 0:
            first = to_run[0]
            first_shape = first[0][0].shape
            to_batch_temp = [x for x in range(len(to_run)) if can_concat_cond(to_run[x][0], first[0])]
            to_batch_temp.reverse()
            to_batch = to_batch_temp[:1]
            free_memory = comfy.model_management.get_free_memory(x_in.device)
            for i in range(1, len(to_batch_temp) + 1):
                batch_amount = to_batch_temp[:len(to_batch_temp) // i]
                input_shape = [len(batch_amount) * first_shape[0]] + list(first_shape)[1:]
                cond_shapes = collections.defaultdict(list)
                for tt in batch_amount:
                    for k, v in to_run[tt][0].conditioning.items():
                        cond_shapes[k].append(v.size())
                if model.memory_required(input_shape, cond_shapes=cond_shapes) * 1.5 < free_memory:
                    to_batch = batch_amount
                    break

            input_x, mult, c, cond_or_uncond, uuids, area = [], [], [], [], [], []
            control = None
            for x in to_batch:
                o = to_run.pop(x)
                p = o[0]
                input_x.append(p.input_x)
                mult.append(p.mult)
                c.append(p.conditioning)
                area.append(p.area)
                cond_or_uncond.append(o[1])
                uuids.append(p.uuid)
                control = p.control

            batch_chunks = len(cond_or_uncond)
            input_x = torch.cat(input_x)
            c = cond_cat(c)
            timestep_ = torch.cat([timestep] * batch_chunks)

            transformer_options = model.current_patcher.apply_hooks(hooks=hooks)
            if "transformer_options" in model_options:
                transformer_options = comfy.patcher_extension.merge_nested_dicts(transformer_options, model_options["transformer_options"],
                                                                                 copy_dict1=False)
            transformer_options["cond_or_uncond"] = cond_or_uncond[:]
            transformer_options["uuids"] = uuids[:]
            transformer_options["sigmas"] = timestep
            c["transformer_options"] = transformer_options

            if control is not None:
                c["control"] = control.get_control(input_x, timestep_, c, len(cond_or_uncond), transformer_options)

            if "model_function_wrapper" in model_options:
                output = model_options["model_function_wrapper"](model.apply_model, {"input": input_x, "timestep": timestep_, "c": c,
                                                                                      "cond_or_uncond": cond_or_uncond}).chunk(batch_chunks)
            else:
                output = model.apply_model(input_x, timestep_, **c).chunk(batch_chunks)

            for o in range(batch_chunks):
                cond_index = cond_or_uncond[o]
                out_conds[cond_index] += output[o] * mult[o]
                out_counts[cond_index] += mult[o]

    for i in range(len(out_conds)):
        out_conds[i] /= out_counts[i]
    return out_conds


def cfg_function(model, cond_pred, uncond_pred, cond_scale, x, timestep, model_options={}, cond=None, uncond=None):
    if "sampler_cfg_function" in model_options:
        args = {"cond": x - cond_pred, "uncond": x - uncond_pred, "cond_scale": cond_scale, "timestep": timestep, "input": x, "sigma": timestep,
                "cond_denoised": cond_pred, "uncond_denoised": uncond_pred, "model": model, "model_options": model_options,
                "input_cond": cond, "input_uncond": uncond}
        cfg_result = x - model_options["sampler_cfg_function"](args)
    else:
        cfg_result = uncond_pred + (cond_pred - uncond_pred) * cond_scale

    for fn in model_options.get("sampler_post_cfg_function", []):
        args = {"denoised": cfg_result, "cond": cond, "uncond": uncond, "cond_scale": cond_scale, "model": model, "uncond_denoised": uncond_pred,
                "cond_denoised": cond_pred, "sigma": timestep, "model_options": model_options, "input": x}
        cfg_result = fn(args)
    return cfg_result


def sampling_function(model, x, timestep, uncond, cond, cond_scale, model_options={}, seed=None):
    if math.isclose(cond_scale, 1.0) and not model_options.get("disable_cfg1_optimization", False):
        uncond_ = None
    else:
        uncond_ = uncond

    conds = [cond, uncond_]
    if "sampler_calc_cond_batch_function" in model_options:
        args = {"conds": conds, "input": x, "sigma": timestep, "model": model, "model_options": model_options}
        out = model_options["sampler_calc_cond_batch_function"](args)
    else:
        out = calc_cond_batch(model, conds, x, timestep, model_options)

    for fn in model_options.get("sampler_pre_cfg_function", []):
        args = {"conds": conds, "conds_out": out, "cond_scale": cond_scale, "timestep": timestep,
                "input": x, "sigma": timestep, "model": model, "model_options": model_options}
        out = fn(args)

    return cfg_function(model, out[0], out[1], cond_scale, x, timestep, model_options=model_options, cond=cond, uncond=uncond_)


class KSamplerX0Inpaint:
    def __init__(self, model, sigmas):
        self.inner_model = model
        self.sigmas = sigmas

    def __call__(self, x, sigma, denoise_mask, model_options={}, seed=None):
        assert denoise_mask is None, "the stand-in has no inpainting"
        return self.inner_model(x, sigma, model_options=model_options, seed=seed)


def simple_scheduler(model_sampling, steps):
    s = model_sampling
    sigs = []
    ss = len(s.sigmas) / steps
    for x in range(steps):
        sigs += [float(s.sigmas[-(1 + int(x * ss))])]
    sigs += [0.0]
    return torch.FloatTensor(sigs)


class KSAMPLER:
    def __init__(self, sampler_function, extra_options={}):
        self.sampler_function = sampler_function
        self.extra_options = extra_options

    def max_denoise(self, model_wrap, sigmas):
        max_sigma = float(model_wrap.inner_model.model_sampling.sigma_max)
        sigma = float(sigmas[0])
        return math.isclose(max_sigma, sigma, rel_tol=1e-05) or sigma > max_sigma

    def sample(self, model_wrap, sigmas, extra_args, callback, noise, latent_image=None, denoise_mask=None, disable_pbar=False):
        extra_args["denoise_mask"] = denoise_mask
        model_k = KSamplerX0Inpaint(model_wrap, sigmas)
        model_k.latent_image = latent_image
        model_k.noise = noise
        noise = model_wrap.inner_model.model_sampling.noise_scaling(sigmas[0], noise, latent_image, self.max_denoise(model_wrap, sigmas))
        samples = self.sampler_function(model_k, noise, sigmas, extra_args=extra_args, callback=None, disable=True, **self.extra_options)
        return model_wrap.inner_model.model_sampling.inverse_noise_scaling(sigmas[-1], samples)


def ksampler(sampler_name, extra_options={}):
    import k_diffusion.sampling  # ComfyUI's comfy/k_diffusion/sampling.py vendors these functions

    return KSAMPLER(getattr(k_diffusion.sampling, f"sample_{sampler_name}"), extra_options)


def pre_run_control(model, conds):
    s = model.model_sampling
    for x in conds:
        if "control" in x:
            x["control"].pre_run(model, lambda a: s.percent_to_sigma(a))


def encode_model_conds(model_function, conds, noise, device, prompt_type, **kwargs):
    for t in range(len(conds)):
        x = conds[t]
        params = x.copy()
        params["device"] = device
        params["noise"] = noise
        params["prompt_type"] = params.get("prompt_type", prompt_type)
        out = model_function(**params)
        x = x.copy()
        model_conds = x["model_conds"].copy()
        model_conds.update(out)
        x["model_conds"] = model_conds
        conds[t] = x
    return conds


def process_conds(model, noise, conds, device, latent_image=None, denoise_mask=None, seed=None):
    for k in conds:
        conds[k] = conds[k][:]
    for k in conds:
        conds[k] = encode_model_conds(model.extra_conds, conds[k], noise, device, k, latent_image=latent_image, seed=seed)
    for k in conds:
        pre_run_control(model, conds[k])
    return conds


class CFGGuider:
    def __init__(self, model_patcher):
        self.model_patcher = model_patcher
        self.model_options = model_patcher.model_options
        self.original_conds = {}
        self.cfg = 1.0

    def set_conds(self, positive, negative):
        self.original_conds = {k: comfy.sampler_helpers.convert_cond(v) for k, v in {"positive": positive, "negative": negative}.items()}

    def set_cfg(self, cfg):
        self.cfg = cfg

    def __call__(self, *args, **kwargs):
        return self.outer_predict_noise(*args, **kwargs)

    def outer_predict_noise(self, x, timestep, model_options={}, seed=None):
        return comfy.patcher_extension.WrapperExecutor.new_class_executor(
            self.predict_noise, self,
            comfy.patcher_extension.get_all_wrappers(comfy.patcher_extension.WrappersMP.PREDICT_NOISE, self.model_options, is_model_options=True),
        ).execute(x, timestep, model_options, seed)

    def predict_noise(self, x, timestep, model_options={}, seed=None):
        return sampling_function(self.inner_model, x, timestep, self.conds.get("negative", None), self.conds.get("positive", None), self.cfg,
                                 model_options=model_options, seed=seed)

    def inner_sample(self, noise, latent_image, device, sampler, sigmas, denoise_mask, callback, disable_pbar, seed):
        self.conds = process_conds(self.inner_model, noise, self.conds, device, latent_image, denoise_mask, seed)
        extra_model_options = comfy.model_patcher.create_model_options_clone(self.model_options)
        extra_model_options.setdefault("transformer_options", {})["sample_sigmas"] = sigmas
        extra_args = {"model_options": extra_model_options, "seed": seed}
        executor = comfy.patcher_extension.WrapperExecutor.new_class_executor(
            sampler.sample, sampler,
            comfy.patcher_extension.get_all_wrappers(comfy.patcher_extension.WrappersMP.SAMPLER_SAMPLE, extra_args["model_options"],
                                                     is_model_options=True),
        )
        samples = executor.execute(self, sigmas, extra_args, callback, noise, latent_image, denoise_mask, disable_pbar)
        return self.inner_model.process_latent_out(samples.to(torch.float32))

    def outer_sample(self, noise, latent_image, sampler, sigmas, denoise_mask=None, callback=None, disable_pbar=False, seed=None):
        self.inner_model, self.conds, self.loaded_models = comfy.sampler_helpers.prepare_sampling(self.model_patcher, noise.shape, self.conds,
                                                                                                 self.model_options)
        try:
            self.model_patcher.pre_run()
            output = self.inner_sample(noise, latent_image, self.model_patcher.load_device, sampler, sigmas, denoise_mask, callback,
                                       disable_pbar, seed)
        finally:
            self.model_patcher.cleanup()
        del self.inner_model
        del self.loaded_models
        return output

    def sample(self, noise, latent_image, sampler, sigmas, denoise_mask=None, callback=None, disable_pbar=False, seed=None):
        if sigmas.shape[-1] == 0:
            return latent_image
        self.conds = {k: [a.copy() for a in v] for k, v in self.original_conds.items()}
        try:
            orig_model_options = self.model_options
            self.model_options = comfy.model_patcher.create_model_options_clone(self.model_options)
            comfy.sampler_helpers.prepare_model_patcher(self.model_patcher, self.conds, self.model_options)
            executor = comfy.patcher_extension.WrapperExecutor.new_class_executor(
                self.outer_sample, self,
                comfy.patcher_extension.get_all_wrappers(comfy.patcher_extension.WrappersMP.OUTER_SAMPLE, self.model_options, is_model_options=True),
            )
            output = executor.execute(noise, latent_image, sampler, sigmas, denoise_mask, callback, disable_pbar, seed)
        finally:
            self.model_options = orig_model_options
        del self.conds
        return output


def sample(model, noise, positive, negative, cfg, device, sampler, sigmas, model_options={}, latent_image=None, denoise_mask=None,
           callback=None, disable_pbar=False, seed=None):
    cfg_guider = CFGGuider(model)
    cfg_guider.set_conds(positive, negative)
    cfg_guider.set_cfg(cfg)
    return cfg_guider.sample(noise, latent_image, sampler, sigmas, denoise_mask, callback, disable_pbar, seed)
