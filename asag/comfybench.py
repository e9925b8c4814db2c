"""``python -m asag.bench comfy``: cost per sampling step of the ASAG node against ComfyUI's own PAG
node, side by side on the same model.

Runs in the repository checkout, not inside ComfyUI: it drives the nodes through the test suite's
stand-in of ComfyUI's modules (tests/hosts/comfy_standin, mirroring ComfyUI a125cd84: the model
patcher, KSampler's path through CFGGuider and calc_cond_batch, ComfyUI's UNet forward and
attention patch protocol, comfy_extras/nodes_pag.py and nodes_slg.py) with a real SD1.5- or
SDXL-shaped ldm UNet of random weights and k-diffusion's Euler, 77-token prompts, CFG 5. Rows:
CFG alone; CFG + PAG (ComfyUI's node: one full extra pass on the positive prompt, the middle
block's self-attention replaced by its values); CFG + ASAG at its default layers (middle) with
the extra pass in full, and with the blocks before the first perturbed one taken from the main
pass (the node's default). Each with its per-step median and its ratios to CFG alone and to PAG.

``--model flux``: a Flux-shaped transformer of ComfyUI's code (19 double and 38 single blocks,
heads of 128, ``--heads`` of them; 512 text tokens) at CFG 1 (distilled), ASAG at its default
blocks (double 7-9, single 7-9) against SkipLayerGuidanceDiT at its own (the same blocks skipped),
both acting at every step. SDXL's pooled vector is left out (the stand-in UNet takes no class
label: one linear layer per step)."""
from __future__ import annotations

import torch

from .stepbench import side_by_side

STEPS = 3
CFG = 5.0
MODELS = {"sd15": "SD1.5-shaped UNet", "sdxl": "SDXL-shaped UNet", "flux": "Flux-shaped transformer"}
FLUX_BLOCKS = "double 7-9, single 7-9"  # ASAG's default on Flux, and SkipLayerGuidanceDiT's


def bench_comfy(repeats: int, model: str = "sd15", latent: int = 64, steps: int = STEPS, layers: tuple[str, ...] | None = None,
                heads: int = 2, unet_params: dict | None = None, text_tokens: int | None = None) -> None:
    """``unet_params``: an ldm UNetModel config (or, for Flux, a model config) instead of the
    model's own (the tests pass a small one)."""
    from tests.hosts import comfy_env

    if model not in MODELS:
        raise SystemExit(f"the ComfyUI benchmark takes --model {', '.join(MODELS)}")
    repeats = max(1, repeats)
    with comfy_env.comfy_modules(threads=None) as host:
        if model == "flux":
            patcher, context_width, pooled = _flux(host, heads, unet_params), comfy_env.TEXT_WIDTH, comfy_env.POOLED_WIDTH
            tokens, channels, cfg = text_tokens or 512, 4, 1.0
        else:
            patcher = _unet(host, model, latent, unet_params)
            context_width, pooled = _context_width(patcher), None
            tokens, channels, cfg = text_tokens or 77, 4, CFG
        generator = torch.Generator().manual_seed(0)

        def prompt():
            extra = {"pooled_output": torch.randn(1, pooled, generator=generator)} if pooled else {}
            return [[torch.randn(1, tokens, context_width, generator=generator), extra]]

        positive, negative = prompt(), prompt()
        noise = torch.randn(1, channels, latent, latent, generator=generator)
        sampling_model = patcher.get_model_object("model_sampling")
        sigmas = host.samplers.simple_scheduler(sampling_model, steps)

        def run_of(guided):
            def run():
                with torch.no_grad():
                    host.samplers.sample(guided, noise, positive, negative, cfg, torch.device("cpu"), host.samplers.ksampler("euler"),
                                         sigmas, model_options=guided.model_options, latent_image=torch.zeros_like(noise), seed=0)
            return run

        def asag(reuse, **inputs):
            return host.comfyui.patch(patcher, host.node.node_params({"scale": 2.0, **inputs}), reuse=reuse)

        diffusion_model = patcher.get_model_object("diffusion_model")
        parameters = sum(t.numel() for t in diffusion_model.parameters()) / 1e6
        if model == "flux":
            baseline, rival = "plain", "SkipLayerGuidanceDiT"
            results = {baseline: run_of(patcher),
                       rival: run_of(host.nodes_slg.SkipLayerGuidanceDiT.execute(patcher, 3.0, 0.0, 1.0, "7, 8, 9", "7, 8, 9")[0])}
            for spec in layers or (FLUX_BLOCKS,):
                results[f"ASAG {spec}, full extra pass"] = run_of(asag(False, dit_layers=spec))
                results[f"ASAG {spec}, reuse"] = run_of(asag(True, dit_layers=spec))
            shape = f"{(latent // 2) ** 2} image + {tokens} text tokens, CFG 1"
        else:
            baseline, rival = "CFG", "CFG + PAG"
            results = {baseline: run_of(patcher), rival: run_of(host.nodes_pag.PerturbedAttentionGuidance.execute(patcher, 3.0)[0])}
            for spec in layers or ("middle",):
                results[f"CFG + ASAG {spec}, full extra pass"] = run_of(asag(False, layers=spec))
                results[f"CFG + ASAG {spec}, reuse"] = run_of(asag(True, layers=spec))
            shape = f"{tokens}-token prompts, CFG {CFG:g}"
        print(f"ComfyUI sampling step, {MODELS[model] if unet_params is None else 'small model'} ({parameters:.0f} M parameters, random "
              f"weights), {latent * 8}x{latent * 8} ({latent}x{latent} latent), batch 1, {shape}, Euler, {steps} steps per run, "
              f"median of {repeats} interleaved runs, float32, cpu, {torch.get_num_threads()} threads")
        print(side_by_side(results, repeats, steps, baseline, rival))


def _unet(host, model: str, latent: int, unet_params: dict | None):
    """The ModelPatcher of an SD1.5- or SDXL-shaped ldm UNet with ComfyUI's classes."""
    from ldm.modules.attention import SpatialTransformer
    from ldm.modules.diffusionmodules.openaimodel import UNetModel

    from tests.hosts.a1111_harness import SD15_UNET, SDXL_DEPTHS, SDXL_UNET

    torch.manual_seed(0)
    unet = UNetModel(**dict(unet_params or (SD15_UNET if model == "sd15" else SDXL_UNET), image_size=latent, in_channels=4, out_channels=4)).eval()
    if model == "sdxl":  # sgm's per-level transformer depths (2 and 10), one context for every block
        for module in unet.modules():
            if isinstance(module, SpatialTransformer):
                module.transformer_blocks = module.transformer_blocks[:SDXL_DEPTHS.get(module.in_channels, len(module.transformer_blocks))]
    unet = host.openaimodel.from_ldm(unet)
    return host.model_patcher.ModelPatcher(host.model_base.BaseModel(unet), torch.device("cpu"), torch.device("cpu"))


def _context_width(patcher) -> int:
    unet = patcher.get_model_object("diffusion_model")
    return next(m.attn2.to_k.in_features for m in unet.modules() if hasattr(m, "attn2"))


def _flux(host, heads: int, config: dict | None):
    """The ModelPatcher of a Flux-shaped transformer of ComfyUI's code (the stand-in's Flux)."""
    import importlib

    from tests.hosts import comfy_env

    flux = importlib.import_module("comfy.ldm.flux.model")
    config = config or dict(comfy_env.DIT_MODELS["flux"][3], hidden_size=128 * heads, num_heads=heads, axes_dim=[16, 56, 56], depth=19,
                            depth_single_blocks=38, mlp_ratio=4.0)
    torch.manual_seed(0)
    return host.model_patcher.ModelPatcher(host.model_base.Flux(flux.Flux(**config).eval()), torch.device("cpu"), torch.device("cpu"))
