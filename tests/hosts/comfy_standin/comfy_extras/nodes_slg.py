# Stand-in for Comfy-Org/ComfyUI comfy_extras/nodes_slg.py at a125cd84b054a57729b5eecab930ca9408719832:
# SkipLayerGuidanceDiT. Kept faithful: its mechanism: clone the model, append a post-CFG function
# that copies model_options, replaces the double / single blocks it names by "return args" (the
# block skipped) through set_model_options_patch_replace(..., "dit", "double_block" | "single_block",
# i), and inside the window (percent_to_sigma of start and end, on sigma[0]) runs calc_cond_batch
# on [cond] and returns cfg_result + (cond_pred - slg) * scale. Simplified: the V3 schema is left
# out (execute returns a tuple), no rescaling_scale.
import re

import comfy.model_patcher
import comfy.samplers


class SkipLayerGuidanceDiT:
    @classmethod
    def execute(cls, model, scale, start_percent, end_percent, double_layers="", single_layers=""):
        def skip(args, extra_args):
            return args

        model_sampling = model.get_model_object("model_sampling")
        sigma_start = model_sampling.percent_to_sigma(start_percent)
        sigma_end = model_sampling.percent_to_sigma(end_percent)
        double_layers = [int(i) for i in re.findall(r"\d+", double_layers)]
        single_layers = [int(i) for i in re.findall(r"\d+", single_layers)]
        if len(double_layers) == 0 and len(single_layers) == 0:
            return (model,)

        def post_cfg_function(args):
            model, cond_pred, cond, cfg_result = args["model"], args["cond_denoised"], args["cond"], args["denoised"]
            sigma, x = args["sigma"], args["input"]
            model_options = args["model_options"].copy()
            for layer in double_layers:
                model_options = comfy.model_patcher.set_model_options_patch_replace(model_options, skip, "dit", "double_block", layer)
            for layer in single_layers:
                model_options = comfy.model_patcher.set_model_options_patch_replace(model_options, skip, "dit", "single_block", layer)
            sigma_ = sigma[0].item()
            if scale > 0 and sigma_end <= sigma_ <= sigma_start:
                (slg,) = comfy.samplers.calc_cond_batch(model, [cond], x, sigma, model_options)
                cfg_result = cfg_result + (cond_pred - slg) * scale
            return cfg_result

        m = model.clone()
        m.set_model_sampler_post_cfg_function(post_cfg_function)
        return (m,)
