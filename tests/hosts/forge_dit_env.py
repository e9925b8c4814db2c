"""Test host for ASAG on the transformer models of Forge Neo: small random-weight Flux and Chroma
models of the stand-in's architecture (tests/hosts/forge_neo_standin/backend/nn), behind Neo's
KModel, predictor and patcher as the Flux / Chroma engines build them
(backend/diffusion_engine/flux.py:29, chroma.py), and their conditioning as the engines'
get_learned_conditioning returns it (a dict: T5 context, CLIP-L pooled vector, Flux dev's
distilled guidance), carried as the WebUI carries dict conditioning (DictWithShape)."""
import importlib
from types import SimpleNamespace

import torch

# Shapes of the real models, scaled down: Flux.1 dev has hidden 3072 (24 heads of 128, rope axes
# 16/56/56), 19 double and 38 single blocks, 16 latent channels in 2x2 patches, T5 context 4096,
# CLIP-L vector 768. Ten blocks of each kind keep the default selection (7-9 of each) meaningful.
CONTEXT_DIM, VECTOR_DIM, LATENT_CHANNELS = 40, 32, 16
FLUX = dict(in_channels=LATENT_CHANNELS, out_channels=LATENT_CHANNELS, vec_in_dim=VECTOR_DIM, context_in_dim=CONTEXT_DIM,
            hidden_size=48, mlp_ratio=4.0, num_heads=3, depth=10, depth_single_blocks=10, axes_dim=[4, 6, 6], theta=10000,
            patch_size=2, qkv_bias=True, guidance_embed=True)
CHROMA = dict(in_channels=LATENT_CHANNELS * 4, out_channels=LATENT_CHANNELS * 4, context_in_dim=CONTEXT_DIM, hidden_size=48,
              mlp_ratio=2.0, num_heads=3, depth=10, depth_single_blocks=10, axes_dim=[4, 6, 6], theta=10000, patch_size=2,
              qkv_bias=True, in_dim=64, out_dim=48, hidden_dim=32, n_layers=2)


class DictWithShape(dict):
    """Forge's modules/prompt_parser.py DictWithShape (dfdcbab; Neo the same): dict conditioning
    with the batch shape of its context, and the row selection compile_weighted_conditions uses."""

    @property
    def shape(self):
        return self["crossattn"].shape

    def advanced_indexing(self, rows):
        return DictWithShape({key: value[rows] for key, value in self.items()})


def dit_model(family: str, seed: int = 0):
    torch.manual_seed(seed)
    if family == "flux":
        return importlib.import_module("backend.nn.flux").IntegratedFluxTransformer2DModel(**FLUX)
    return importlib.import_module("backend.nn.chroma").IntegratedChromaTransformer2DModel(**CHROMA)


def dit_p(host, family: str = "flux", seed: int = 0):
    """A processing object whose model is a Flux or Chroma transformer on Neo's engine."""
    predictor = importlib.import_module("backend.modules.k_prediction").PredictionFlux()
    patcher = host.patcher.UnetPatcher(host.k_model.KModel(dit_model(family, seed), predictor))
    sd_model = SimpleNamespace(forge_objects=SimpleNamespace(unet=patcher), is_sd1=False, is_sdxl=False, is_wan=False, is_inpaint=False)
    return SimpleNamespace(sd_model=sd_model, extra_generation_params={}, is_hr_pass=False, seeds=[seed])


def dit_inputs(family: str = "flux", seed: int = 1, batch: int = 1, size: int = 24, tokens: int = 8, uncond_tokens: int = 8,
               guidance: float = 3.5):
    """Latent (``size`` x ``size``: (size / 2)^2 image tokens), conditioning and negative
    conditioning of ``tokens`` / ``uncond_tokens`` T5 tokens. Chroma has no pooled vector in use and
    no distilled guidance (its engine sends neither: the model takes zeros)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, LATENT_CHANNELS, size, size, generator=g)

    def conditioning(n):
        cond = {"crossattn": torch.randn(batch, n, CONTEXT_DIM, generator=g), "vector": torch.randn(batch, VECTOR_DIM, generator=g)}
        if family == "flux":
            cond["guidance"] = torch.full((batch,), guidance)
        return DictWithShape(cond)

    return x, conditioning(tokens), conditioning(uncond_tokens)
