"""``python -m asag.bench step --model flux`` (or ``chroma``, ``zimage``, ``lumina``, ``anima``,
``qwen``): cost per sampling step of ASAG on a transformer model in Forge Neo.

Runs in the repository checkout, not inside the WebUI: it drives the Forge adapter through the
test suite's stand-in of Neo's modules (tests/hosts/forge_neo_standin, its model code) with a
transformer of random weights, through Neo's sampling function, one Euler step per call. The
token counts are the real ones (``--latent 128``: a 1024x1024 image, 4096 image tokens, with 512
text tokens) and so are the block counts (Flux: 19 double, 38 single; Z-Image: 2 + 2 refiners,
30 layers; Anima: 28 blocks; Qwen-Image: 60) and the head size (128); the width is ``--heads``
heads (Flux and Qwen-Image have 24, Z-Image 30, Anima 16), so that a CPU run takes minutes. A
narrower model gives attention a larger share of a block's cost than the real one has (attention
grows with tokens x width, the linear layers with width squared), and ASAG's extra cost is
attention: the ratios it prints are, if anything, above the real model's. Measured side by side:
the plain step, ASAG with the extra pass in full (Settings: reuse off), and ASAG with the extra
pass taking the blocks before the first perturbed one from the main pass (the default); the full
pass's ratio is the cost of one more model call plus the Sinkhorn plans."""
from __future__ import annotations

import torch

from .hosts.settings import HostOptions
from .stepbench import side_by_side

TEXT_TOKENS = 512  # Flux dev's T5 sequence length
DEFAULT_BLOCKS = {"flux": ("double 7-9, single 7-9", "single 20-22"), "chroma": ("double 7-9, single 7-9", "single 20-22"),
                  "zimage": ("layers 7-9", "layers 20-22"), "lumina": ("layers 7-9", "layers 20-22"),
                  "anima": ("blocks 7-9", "blocks 20-22"), "qwen": ("blocks 7-9", "blocks 40-42")}


def bench_dit_step(repeats: int, model: str = "flux", latent: int = 64, heads: int = 2, blocks: tuple[str, ...] | None = None,
                   steps: int = 1, cond_scale: float = 1.0, config: dict | None = None, text_tokens: int = TEXT_TOKENS) -> None:
    """``config``: a model config instead of the Flux-shaped one (the tests pass a small one)."""
    from tests.hosts import forge_dit_env
    from tests.hosts.forge_env import ScriptCallbacks, _host, euler

    threads = torch.get_num_threads()
    host_context = _host("neo")
    host = next(host_context)
    torch.set_num_threads(threads)  # the stand-in host runs tiny test models on one thread
    config = config or _full_depth(model, heads)
    blocks = blocks or DEFAULT_BLOCKS[model]
    p = forge_dit_env.dit_p(host, model, config=config)
    pristine = p.sd_model.forge_objects.unet
    callbacks = ScriptCallbacks()
    host.forge.register_callbacks(callbacks)
    x, cond, uncond = forge_dit_env.dit_inputs(model, size=latent, tokens=text_tokens, uncond_tokens=text_tokens)
    sigmas = torch.linspace(1.0, 0.0, steps + 1)

    def sampling(fields, reuse=True):
        def run():
            p.sd_model.forge_objects.unet = pristine
            host.forge.start_job(p, host.job.start(p, [fields]), HostOptions(reuse=reuse))
            host.forge.before_sampling(p)
            euler(host, p, callbacks, x, sigmas, cond, uncond, cond_scale)
            host.forge.end_job(p)
        return run

    diffusion_model = pristine.model.diffusion_model
    family = host.forge.families.family_for(diffusion_model)
    parameters = sum(t.numel() for t in diffusion_model.parameters()) / 1e6
    layout = " + ".join(f"{count} {kind}" for kind, count in family.kinds(diffusion_model).items())
    heads = next(config[key] for key in ("num_heads", "n_heads", "num_attention_heads") if key in config)
    print(f"sampling step, {model}-shaped transformer ({parameters:.0f} M parameters, random weights, blocks: {layout}, "
          f"{heads} heads), {latent * 8}x{latent * 8} ({(latent // 2) ** 2} image + {text_tokens} text tokens), batch 1, "
          f"CFG {cond_scale:g}, Euler, {steps} steps per run, median of {repeats} interleaved runs, float32, cpu, "
          f"{torch.get_num_threads()} threads")
    results = {"plain": sampling({"enabled": False})}
    for spec in blocks:
        fields = {"enabled": True, "scale": 2.0, "dit_layers": spec}
        results[f"ASAG {spec}, full extra pass"] = sampling(fields, reuse=False)
        results[f"ASAG {spec}, reuse"] = sampling(fields, reuse=True)
    try:
        print(side_by_side(results, repeats, steps, baseline="plain"))
    finally:
        host_context.close()


def _full_depth(model: str, heads: int) -> dict:
    """The model's block counts and head size, ``heads`` heads wide."""
    from tests.hosts import forge_dit_env

    if model in ("flux", "chroma"):
        base = forge_dit_env.FLUX if model == "flux" else forge_dit_env.CHROMA
        return dict(base, hidden_size=128 * heads, num_heads=heads, axes_dim=[16, 56, 56], depth=19, depth_single_blocks=38,
                    **({"out_dim": 128 * heads} if model == "chroma" else {}))
    if model == "anima":
        return dict(forge_dit_env.ANIMA, model_channels=128 * heads, num_heads=heads, num_blocks=28, adaln_lora_dim=256)
    if model == "qwen":
        return dict(forge_dit_env.QWEN, attention_head_dim=128, num_attention_heads=heads, num_layers=60, axes_dims_rope=(16, 56, 56))
    base = forge_dit_env.NEXTDIT[model]
    return dict(base, dim=128 * heads, n_heads=heads, axes_dims=[32, 48, 48], n_layers=30 if model == "zimage" else 26, multiple_of=256)
