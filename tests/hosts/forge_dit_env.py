"""Test host for ASAG on the transformer models of Forge Neo: small random-weight Flux, Chroma,
Lumina 2, Z-Image, Anima and Qwen-Image models of the stand-in's architecture (tests/hosts/forge_neo_standin/backend/nn),
behind Neo's KModel, predictor and patcher as the engines build them
(backend/diffusion_engine/flux.py:29, chroma.py, lumina.py, zimage.py, anima.py, qwen.py), and their conditioning as
the engines' get_learned_conditioning returns it: for Flux a dict (T5 context, CLIP-L pooled
vector, Flux dev's distilled guidance) carried as the WebUI carries dict conditioning
(DictWithShape); for Lumina 2 (Gemma), Z-Image (Qwen3), Anima (Qwen3 through its adapter) and
Qwen-Image (Qwen2.5-VL) the text encoder's hidden states."""
import importlib
from types import SimpleNamespace

import torch

# Shapes of the real models, scaled down: Flux.1 dev has hidden 3072 (24 heads of 128, rope axes
# 16/56/56), 19 double and 38 single blocks, 16 latent channels in 2x2 patches, T5 context 4096,
# CLIP-L vector 768. Ten blocks of each kind: shallower than the real models, so ``auto`` fits the
# default to them (asag/hosts/families/base.py ``auto_spec``); ``with_depth`` gives real depths.
CONTEXT_DIM, VECTOR_DIM, LATENT_CHANNELS = 40, 32, 16
FLUX = dict(in_channels=LATENT_CHANNELS, out_channels=LATENT_CHANNELS, vec_in_dim=VECTOR_DIM, context_in_dim=CONTEXT_DIM,
            hidden_size=48, mlp_ratio=4.0, num_heads=3, depth=10, depth_single_blocks=10, axes_dim=[4, 6, 6], theta=10000,
            patch_size=2, qkv_bias=True, guidance_embed=True)
CHROMA = dict(in_channels=LATENT_CHANNELS * 4, out_channels=LATENT_CHANNELS * 4, context_in_dim=CONTEXT_DIM, hidden_size=48,
              mlp_ratio=2.0, num_heads=3, depth=10, depth_single_blocks=10, axes_dim=[4, 6, 6], theta=10000, patch_size=2,
              qkv_bias=True, in_dim=64, out_dim=48, hidden_dim=32, n_layers=2)
# Lumina 2: dim 2304, 24 heads (rope axes 32/32/32), 26 layers, 2 + 2 refiners, Gemma context 2304,
# shift 6. Z-Image: dim 3840, 30 heads, 30 layers, Qwen3 context 2560, its 256-wide modulation,
# time scale 1000, text and image padded to multiples of 32, shift 3. The Z-Image one needs a
# width of at least 256 (its modulation reads min(dim, 256) features of a 256-wide embedding).
LUMINA = dict(patch_size=2, in_channels=LATENT_CHANNELS, dim=48, n_layers=10, n_refiner_layers=2, n_heads=3, multiple_of=16,
              ffn_dim_multiplier=2.0, norm_eps=1e-5, qk_norm=True, cap_feat_dim=CONTEXT_DIM, axes_dims=[4, 6, 6], axes_lens=[1, 512, 512])
ZIMAGE = dict(LUMINA, dim=256, n_heads=4, axes_dims=[16, 24, 24], z_image_modulation=True, time_scale=1000.0, pad_tokens_multiple=32,
              rope_theta=256.0)
NEXTDIT = {"lumina": LUMINA, "zimage": ZIMAGE}
# Anima (Cosmos-Predict2 2B): width 2048, 16 heads of 128, 28 blocks, context 1024 (the text
# adapter's output), adaLN-LoRA 256, rope extrapolation 4 in height and width, a 5-D latent
# (batch, 16, 1, H, W) of Qwen-Image's VAE; flow predictor, shift 3 (its scheduler config).
ANIMA = dict(in_channels=LATENT_CHANNELS, out_channels=LATENT_CHANNELS, patch_spatial=2, patch_temporal=1, model_channels=48, num_heads=3,
             crossattn_emb_channels=CONTEXT_DIM, adaln_lora_dim=16, num_blocks=10, rope_h_extrapolation_ratio=4.0,
             rope_w_extrapolation_ratio=4.0, rope_t_extrapolation_ratio=1.0)
# Qwen-Image: width 3072 (24 heads of 128, rope axes 16/56/56), 60 blocks, Qwen2.5-VL context
# 3584, 16 latent channels in 2x2 patches of a 5-D latent; a flow predictor (multiplier 1).
QWEN = dict(patch_size=2, in_channels=LATENT_CHANNELS * 4, out_channels=LATENT_CHANNELS, num_layers=10, attention_head_dim=16,
            num_attention_heads=3, joint_attention_dim=CONTEXT_DIM, axes_dims_rope=(4, 6, 6))
SHIFTS = {"lumina": 6.0, "zimage": 3.0, "anima": 3.0, "qwen": 1.15}
TENSOR_CONTEXT = ("lumina", "zimage", "anima", "qwen")  # conditioning as the text encoder's hidden states, no dict
FRAME_AXIS = ("anima", "qwen")  # Neo's engines with Wan-style 5-D latents (is_wan)


# The config entries that set a model's block counts, one per block list in execution order
# (NextDiT: refiners of each kind, then layers).
DEPTH_ENTRIES = {"flux": ("depth", "depth_single_blocks"), "chroma": ("depth", "depth_single_blocks"), "lumina": ("n_refiner_layers", "n_layers"),
                 "zimage": ("n_refiner_layers", "n_layers"), "anima": ("num_blocks",), "qwen": ("num_layers",)}
CONFIGS = {"flux": FLUX, "chroma": CHROMA, "lumina": LUMINA, "zimage": ZIMAGE, "anima": ANIMA, "qwen": QWEN}


def with_depth(family: str, counts: tuple[int, ...]) -> dict:
    """The test config of ``family`` (its small width) with ``counts`` blocks per list."""
    return dict(CONFIGS[family], **dict(zip(DEPTH_ENTRIES[family], counts, strict=True)))


class DictWithShape(dict):
    """Forge's modules/prompt_parser.py DictWithShape (dfdcbab; Neo the same): dict conditioning
    with the batch shape of its context, and the row selection compile_weighted_conditions uses."""

    @property
    def shape(self):
        return self["crossattn"].shape

    def advanced_indexing(self, rows):
        return DictWithShape({key: value[rows] for key, value in self.items()})


def dit_model(family: str, seed: int = 0, config: dict | None = None):
    torch.manual_seed(seed)
    if family == "flux":
        return importlib.import_module("backend.nn.flux").IntegratedFluxTransformer2DModel(**(config or FLUX))
    if family == "chroma":
        return importlib.import_module("backend.nn.chroma").IntegratedChromaTransformer2DModel(**(config or CHROMA))
    if family == "anima":
        return importlib.import_module("backend.nn.anima").Anima(**(config or ANIMA))
    if family == "qwen":
        return importlib.import_module("backend.nn.qwen").QwenImageTransformer2DModel(**(config or QWEN))
    return importlib.import_module("backend.nn.lumina").NextDiT(**(config or NEXTDIT[family]))


def dit_p(host, family: str = "flux", seed: int = 0, config: dict | None = None):
    """A processing object whose model is a ``family`` transformer on Neo's engine."""
    prediction = importlib.import_module("backend.modules.k_prediction")
    predictor = prediction.PredictionDiscreteFlow(shift=SHIFTS[family]) if family in SHIFTS else prediction.PredictionFlux()
    patcher = host.patcher.UnetPatcher(host.k_model.KModel(dit_model(family, seed, config), predictor))
    sd_model = SimpleNamespace(forge_objects=SimpleNamespace(unet=patcher), is_sd1=False, is_sdxl=False, is_wan=family in FRAME_AXIS, is_inpaint=False)
    return SimpleNamespace(sd_model=sd_model, extra_generation_params={}, is_hr_pass=False, seeds=[seed])


def dit_inputs(family: str = "flux", seed: int = 1, batch: int = 1, size: int = 24, tokens: int = 8, uncond_tokens: int = 8,
               guidance: float = 3.5):
    """Latent (``size`` x ``size``: (size / 2)^2 image tokens; Anima's and Qwen-Image's with a frame axis), conditioning and negative
    conditioning of ``tokens`` / ``uncond_tokens`` text tokens. Chroma has no pooled vector in use
    and no distilled guidance (its engine sends neither: the model takes zeros)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, LATENT_CHANNELS, *((1,) if family in FRAME_AXIS else ()), size, size, generator=g)

    def conditioning(n):
        if family in TENSOR_CONTEXT:
            return torch.randn(batch, n, CONTEXT_DIM, generator=g)
        cond = {"crossattn": torch.randn(batch, n, CONTEXT_DIM, generator=g), "vector": torch.randn(batch, VECTOR_DIM, generator=g)}
        if family == "flux":
            cond["guidance"] = torch.full((batch,), guidance)
        return DictWithShape(cond)

    return x, conditioning(tokens), conditioning(uncond_tokens)
