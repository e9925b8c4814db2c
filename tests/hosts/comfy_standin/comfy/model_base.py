# Stand-in for Comfy-Org/ComfyUI comfy/model_base.py at a125cd84b054a57729b5eecab930ca9408719832.
# Kept faithful: BaseModel.apply_model (APPLY_MODEL wrappers around _apply_model), _apply_model
# (input scaled by model_sampling, sigma turned into the timestep, the diffusion model called with
# context=c_crossattn, control, transformer_options and the other conds, denoised from its output),
# extra_conds for an SD1/SD2/SDXL text model (c_crossattn), current_patcher.
# The transformer models' classes (Flux, Chroma, SD3, QwenImage, Lumina2): their extra_conds (the
# text as CONDRegular, never repeated to another's length; the pooled vector y, Flux's guidance,
# Lumina 2's num_tokens as CONDConstant) and their flow sampling.
# Simplified: no dtype casting or devices (float32 on the CPU), no c_concat, latent formats are the
# identity, memory_required is 0 (see model_management.get_free_memory); Lumina 2's num_tokens is
# the caption's length (its text encoder's attention mask is all ones: no padding).
import torch

import comfy.conds
import comfy.model_sampling
import comfy.patcher_extension


class BaseModel(torch.nn.Module):
    def __init__(self, diffusion_model, model_sampling=None):
        super().__init__()
        self.diffusion_model = diffusion_model
        self.model_sampling = model_sampling or comfy.model_sampling.ModelSamplingDiscreteEPS()
        self.current_patcher = None
        self.manual_cast_dtype = None
        self.device = torch.device("cpu")

    def apply_model(self, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options={}, **kwargs):
        return comfy.patcher_extension.WrapperExecutor.new_class_executor(
            self._apply_model, self,
            comfy.patcher_extension.get_all_wrappers(comfy.patcher_extension.WrappersMP.APPLY_MODEL, transformer_options),
        ).execute(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)

    def _apply_model(self, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options={}, **kwargs):
        sigma = t
        xc = self.model_sampling.calculate_input(sigma, x)
        t = self.model_sampling.timestep(t).float()
        model_output = self.diffusion_model(xc, t, context=c_crossattn, control=control, transformer_options=transformer_options,
                                            **kwargs).float()
        return self.model_sampling.calculate_denoised(sigma, model_output, x)

    def get_dtype(self):
        return torch.float32

    def extra_conds(self, **kwargs):
        out = {}
        cross_attn = kwargs.get("cross_attn", None)
        if cross_attn is not None:
            out["c_crossattn"] = comfy.conds.CONDCrossAttn(cross_attn)
        return out

    def memory_required(self, input_shape, cond_shapes={}):
        return 0

    def process_latent_in(self, latent):
        return latent

    def process_latent_out(self, latent):
        return latent


class DiT(BaseModel):
    """The conds the transformer models share (the per-class parts as flags)."""
    pooled_y = False  # encode_adm: the pooled text vector as y
    guidance = None  # the default guidance, where the model takes one

    def __init__(self, diffusion_model, model_sampling=None):
        super().__init__(diffusion_model, model_sampling or comfy.model_sampling.ModelSamplingFlowCONST())

    def extra_conds(self, **kwargs):
        out = {}
        if self.pooled_y and kwargs.get("pooled_output") is not None:
            out["y"] = comfy.conds.CONDRegular(kwargs["pooled_output"])
        if kwargs.get("cross_attn") is not None:
            out["c_crossattn"] = comfy.conds.CONDRegular(kwargs["cross_attn"])
        if self.guidance is not None:
            out["guidance"] = comfy.conds.CONDRegular(torch.FloatTensor([kwargs.get("guidance", self.guidance)]))
        return out


class Flux(DiT):
    pooled_y, guidance = True, 3.5


class Chroma(Flux):
    guidance = 0.0


class SD3(DiT):
    pooled_y = True


class QwenImage(DiT):
    pass


class Lumina2(DiT):
    def extra_conds(self, **kwargs):
        out = super().extra_conds(**kwargs)
        if kwargs.get("cross_attn") is not None:
            out["num_tokens"] = comfy.conds.CONDConstant(kwargs["cross_attn"].shape[1])
        return out
