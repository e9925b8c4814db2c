# Stand-in for Comfy-Org/ComfyUI comfy_extras/nodes_pag.py at a125cd84b054a57729b5eecab930ca9408719832:
# ComfyUI's PAG node. Kept faithful: its mechanism, which ASAG's node shares: clone the model, append
# a post-CFG function that copies model_options, replaces the attn1 of ("middle", 0) by "return v"
# (set_model_options_patch_replace), runs calc_cond_batch on [cond] and returns
# cfg_result + (cond_pred - pag) * scale; scale 0 returns cfg_result. Simplified: the V3 schema
# (comfy_api.latest.io) is left out; execute returns a tuple, as a V1 node's function does.
import comfy.model_patcher
import comfy.samplers


class PerturbedAttentionGuidance:
    @classmethod
    def execute(cls, model, scale):
        unet_block = "middle"
        unet_block_id = 0
        m = model.clone()

        def perturbed_attention(q, k, v, extra_options, mask=None):
            return v

        def post_cfg_function(args):
            model = args["model"]
            cond_pred = args["cond_denoised"]
            cond = args["cond"]
            cfg_result = args["denoised"]
            sigma = args["sigma"]
            model_options = args["model_options"].copy()
            x = args["input"]
            if scale == 0:
                return cfg_result
            model_options = comfy.model_patcher.set_model_options_patch_replace(model_options, perturbed_attention, "attn1", unet_block,
                                                                                unet_block_id)
            (pag,) = comfy.samplers.calc_cond_batch(model, [cond], x, sigma, model_options)
            return cfg_result + (cond_pred - pag) * scale

        m.set_model_sampler_post_cfg_function(post_cfg_function)
        return (m,)
