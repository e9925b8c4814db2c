"""A small WebUI for tests: the stand-in host modules (tests/hosts/a1111_standin), a real
random-weight ldm LatentDiffusion as ``shared.sd_model``, and the extension's script loaded the
way the WebUI loads it (module named after the file, registered callbacks and all)."""
from __future__ import annotations

import contextlib
import importlib.util
import os
import sys

import torch
from ldm.modules.attention import SpatialTransformer

from tests.conftest import ROOT
from tests.models import wake_zero_layers

STANDIN = os.path.join(ROOT, "tests", "hosts", "a1111_standin")
CONTEXT_DIM, TOKENS = 32, 8


TINY_UNET = dict(image_size=16, model_channels=32, num_res_blocks=2, attention_resolutions=[1, 2, 4], channel_mult=[1, 2, 2],
                 num_head_channels=8, use_spatial_transformer=True, transformer_depth=1, context_dim=CONTEXT_DIM, legacy=False)
# configs/v1-inference.yaml's UNet: the real SD1.5 shape, with random weights.
SD15_UNET = dict(image_size=64, model_channels=320, num_res_blocks=2, attention_resolutions=[4, 2, 1], channel_mult=[1, 2, 4, 4],
                 num_heads=8, use_spatial_transformer=True, transformer_depth=1, context_dim=768, legacy=False)


def tiny_latent_diffusion(conditioning_key="crossattn", in_channels=4, seed=0, unet_params=TINY_UNET):
    from ldm.models.diffusion.ddpm import LatentDiffusion

    torch.manual_seed(seed)
    unet = {"target": "ldm.modules.diffusionmodules.openaimodel.UNetModel",
            "params": dict(unet_params, in_channels=in_channels, out_channels=4)}
    vae = {"target": "ldm.models.autoencoder.AutoencoderKL", "params": {
        "embed_dim": 4, "lossconfig": {"target": "torch.nn.Identity"},
        "ddconfig": {"double_z": True, "z_channels": 4, "resolution": 128, "in_channels": 3, "out_ch": 3, "ch": 32,
                     "ch_mult": [1, 1, 1, 1], "num_res_blocks": 1, "attn_resolutions": [], "dropout": 0.0}}}
    model = LatentDiffusion(first_stage_config=vae, cond_stage_config={"target": "torch.nn.Identity"}, unet_config=unet,
                            conditioning_key=conditioning_key, linear_start=0.00085, linear_end=0.012, timesteps=1000,
                            scale_factor=0.18215, cond_stage_key="txt", image_size=16, channels=4, use_ema=False)
    wake_zero_layers(model.model)
    return model.eval()


# configs/inference/sd_xl_base.yaml's UNet: the real SDXL shape, with random weights. ldm's UNetModel
# takes one transformer depth for every level, so it is built with the deepest and the level's
# depth is applied by ``sdxl_shaped`` (SDXL_DEPTHS: channels -> transformer blocks).
SDXL_UNET = dict(image_size=128, model_channels=320, num_res_blocks=2, attention_resolutions=[2, 4], channel_mult=[1, 2, 4],
                 num_head_channels=64, use_spatial_transformer=True, transformer_depth=10, context_dim=[2048] * 10,
                 use_linear_in_transformer=True, legacy=False)
SDXL_DEPTHS = {640: 2, 1280: 10}
SDXL_VECTOR_DIM = 2816


class SharedContextSpatialTransformer(SpatialTransformer):
    """sgm's SpatialTransformer where ldm's differs: one context serves every transformer block."""

    def forward(self, x, context=None):
        if not isinstance(context, list):
            context = [context] * len(self.transformer_blocks)
        return super().forward(x, context)


def sdxl_shaped(unet, depths=SDXL_DEPTHS):
    """Give an ldm UNet built with the deepest transformers sgm's per-level depths and context use."""
    for module in unet.modules():
        if isinstance(module, SpatialTransformer):
            module.__class__ = SharedContextSpatialTransformer
            module.transformer_blocks = module.transformer_blocks[:depths.get(module.in_channels, len(module.transformer_blocks))]
    return unet


def tiny_sdxl_diffusion(seed=0, unet_params=TINY_UNET, vector_dim=8, depths={}):
    """Stands for an SDXL model as A1111 loads it (sgm's DiffusionEngine, extended by
    modules/sd_models_xl.py of v1.10.1): conds are dicts of "crossattn" and "vector", the UNet adds
    the vector through a "sequential" label embedding (sgm's UNetModel), and ``apply_model`` is
    sd_models_xl.apply_model followed by sgm's OpenAIWrapper. Built on ldm's LatentDiffusion for
    the VAE and noise schedule, since sgm is not on PyPI; the UNet's modules are ldm's."""
    import types

    model = tiny_latent_diffusion(seed=seed, unet_params=unet_params)
    unet = sdxl_shaped(model.model.diffusion_model, depths)
    width = unet.time_embed[0].out_features
    torch.manual_seed(seed + 1)
    unet.num_classes = "sequential"
    unet.label_emb = torch.nn.Sequential(torch.nn.Sequential(torch.nn.Linear(vector_dim, width), torch.nn.SiLU(), torch.nn.Linear(width, width)))
    model.is_sdxl, model.is_sdxl_inpaint = True, False

    def apply_model(self, x, t, cond):
        if self.is_sdxl_inpaint:
            x = torch.cat([x] + cond["c_concat"], dim=1)
        x = torch.cat((x, cond.get("concat", torch.Tensor([]).type_as(x))), dim=1)  # OpenAIWrapper.forward
        return self.model.diffusion_model(x, timesteps=t, context=cond.get("crossattn", None), y=cond.get("vector", None))

    model.apply_model = types.MethodType(apply_model, model)
    return model.eval()


@contextlib.contextmanager
def apply_model_failing_at(model, call: int, message: str):
    """``model.apply_model`` raising ``RuntimeError(message)`` at its ``call``-th call (an out of
    memory in the middle of sampling, say), put back as it was on exit."""
    saved = model.__dict__.get("apply_model")  # an instance-level one (SDXL-shaped), or None
    real_apply, calls = model.apply_model, []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == call:
            raise RuntimeError(message)
        return real_apply(*args, **kwargs)

    model.apply_model = failing
    try:
        yield
    finally:
        if saved is None:
            del model.apply_model
        else:
            model.apply_model = saved


class WebUI:
    """Imports the stand-in ``modules`` package; ``load_extension()`` runs scripts/asag.py.
    ``vector_dim``: SDXL-style dict conds with a vector of that size (None: SD1-style tensors)."""

    def __init__(self, sd_model=None, context_dim=CONTEXT_DIM, tokens=TOKENS, vector_dim=None):
        self.context_dim, self.tokens, self.vector_dim = context_dim, tokens, vector_dim
        sys.path.insert(0, STANDIN)
        for name in [m for m in sys.modules if m == "modules" or m.startswith("modules.")]:
            del sys.modules[name]
        from modules import processing, prompt_parser, script_callbacks, scripts, shared
        self.processing, self.prompt_parser, self.callbacks, self.scripts, self.shared = processing, prompt_parser, script_callbacks, scripts, shared
        script_callbacks.clear_callbacks()
        shared.sd_model = sd_model if sd_model is not None else tiny_latent_diffusion()
        self.module = None

    def close(self):
        self.callbacks.clear_callbacks()
        sys.path.remove(STANDIN)
        for name in [m for m in sys.modules if m == "modules" or m.startswith("modules.") or m == "asag.py"]:
            del sys.modules[name]

    def load_extension(self):
        path = os.path.join(ROOT, "scripts", "asag.py")
        spec = importlib.util.spec_from_file_location("asag.py", path)  # script_loading.load_module
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        self.module = module
        return module

    def new_script(self):
        script = self.module.AsagScript()
        script.filename = "scripts/asag.py"
        from asag.params import PARAMS
        script.n_args = len(PARAMS)
        return script

    # ---- generation --------------------------------------------------------------------------
    def conds(self, batch_size, and_weights=None, uncond_tokens=None, steps=1000, seed=1):
        """Conditionings as the WebUI's prompt parser hands them to the sampler. ``and_weights``:
        per image, the weights of its AND parts (default: one part of weight 1)."""
        pp = self.prompt_parser
        gen = torch.Generator().manual_seed(seed)

        def text(tokens):
            context = torch.randn(tokens, self.context_dim, generator=gen)
            if self.vector_dim is None:
                return context
            return {"crossattn": context, "vector": torch.randn(self.vector_dim, generator=gen)}

        and_weights = and_weights or [[1.0]] * batch_size
        batch = [[pp.ComposableScheduledPromptConditioning([pp.ScheduledPromptConditioning(steps, text(self.tokens))], w)
                  for w in weights] for weights in and_weights]
        cond = pp.MulticondLearnedConditioning((batch_size,), batch)
        uncond = [[pp.ScheduledPromptConditioning(steps, text(uncond_tokens or self.tokens))] for _ in range(batch_size)]
        return cond, uncond

    def generate(self, asag_args=None, batch_size=1, and_weights=None, uncond_tokens=None, before=(), **kwargs):
        """One ``process_images`` call. ``asag_args``: the script's args (positional list, or
        ``[dict]``), or None for a WebUI without the extension's script. ``before``: other
        AlwaysOn scripts, as ``(script, args)``, loaded before ASAG."""
        p = self.processing_for(asag_args, batch_size, and_weights, uncond_tokens, before, **kwargs)
        return self.processing.process_images(p), p

    def processing_for(self, asag_args=None, batch_size=1, and_weights=None, uncond_tokens=None, before=(), **kwargs):
        from asag.params import PARAMS

        cond, uncond = self.conds(batch_size, and_weights, uncond_tokens=uncond_tokens)
        model = self.shared.sd_model
        if getattr(model, "cond_stage_model_empty_prompt", None) is None:
            # modules/sd_models.py at load: the encoded empty prompt (crossattn only for SDXL), which pad_cond_uncond appends
            gen = torch.Generator().manual_seed(99)
            model.cond_stage_model_empty_prompt = torch.randn(1, self.tokens, self.context_dim, generator=gen)
        scripts, script_args = [], [0]
        for script, args in before:
            script.n_args = len(args)
            scripts.append(script)
            script_args += list(args)
        if asag_args is not None:
            scripts.append(self.new_script())
            # As the API's init_script_args: given args by position over the UI defaults.
            script_args += list(asag_args) + [s.default for s in PARAMS][len(asag_args):]
        runner = self.scripts.ScriptRunner(scripts)
        return self.processing.Processing(cond=cond, uncond=uncond, batch_size=batch_size, scripts=runner,
                                          script_args=tuple(script_args), **kwargs)
