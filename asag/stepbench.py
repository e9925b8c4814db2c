"""``python -m asag.bench step``: cost per sampling step in the A1111 denoiser.

Runs in the repository checkout, not inside the WebUI: it drives the extension through the test
suite's stand-in of the WebUI modules (tests/hosts/a1111_standin, mirroring v1.10.1) with a real
SD1.5- or SDXL-shaped ldm UNet (random weights) and a real k-diffusion sampler. Measured side by
side: CFG alone (extension never loaded), CFG with ASAG installed but disabled, and for each layer
list CFG + ASAG with today's full extra pass (Settings: reuse off) and with the extra pass reusing
the main pass (reuse on, the default). With ``negative_chunks=2``, rows with a prompt of one 77-token
chunk and a negative prompt of two (the commonest setup), ``pad_cond_uncond`` on: the main pass
runs the prompt padded to two chunks, and reuse must give the extra pass that same context."""
from __future__ import annotations

import statistics
import time

import torch

from .bench import format_table, peak_extra_bytes

STEPS = 3
# model -> (name, default layer lists)
MODELS = {"sd15": ("SD1.5-shaped UNet", ("middle", "u6-8")), "sdxl": ("SDXL-shaped UNet", ("middle", "u3-5"))}


def bench_step(device: str, repeats: int, latent: int = 64, unet_params: dict | None = None, model: str = "sd15",
               layers: tuple[str, ...] | None = None, steps: int = STEPS, negative_chunks: int = 1) -> None:
    """``unet_params``: an ldm UNetModel config instead of the model's own (the tests pass a small one)."""
    from tests.hosts.a1111_harness import SD15_UNET, SDXL_DEPTHS, SDXL_UNET, SDXL_VECTOR_DIM, WebUI, tiny_latent_diffusion, tiny_sdxl_diffusion

    if device != "cpu":
        raise SystemExit("the step benchmark runs the CPU stand-in host; use --device cpu")
    repeats = max(1, repeats)
    name, default_layers = MODELS[model]
    layers = layers or default_layers
    if unet_params is not None:
        name = "UNet"
    if model == "sdxl":
        unet_params = dict(unet_params or SDXL_UNET, image_size=latent)
        sd_model = tiny_sdxl_diffusion(unet_params=unet_params, vector_dim=SDXL_VECTOR_DIM, depths=SDXL_DEPTHS)
        host = WebUI(sd_model=sd_model, context_dim=SDXL_UNET["context_dim"][0], tokens=77, vector_dim=SDXL_VECTOR_DIM)
    else:
        unet_params = dict(unet_params or SD15_UNET, image_size=latent)
        sd_model = tiny_latent_diffusion(unet_params=unet_params)
        host = WebUI(sd_model=sd_model, context_dim=unet_params["context_dim"], tokens=77)
    settings = dict(batch_size=1, steps=steps, sampler_name="Euler", width_latent=latent)

    def sampling(asag_args, reuse=True, negative_tokens=None):
        def run():
            host.shared.opts.asag_reuse_blocks = reuse
            host.shared.opts.pad_cond_uncond = negative_tokens is not None
            p = host.processing_for(asag_args, uncond_tokens=negative_tokens, **settings)
            p.scripts.process(p)
            with torch.no_grad():
                p.sample()
            p.scripts.postprocess(p, None)
        return run

    print(f"sampling step, {name} ({sum(t.numel() for t in sd_model.model.parameters()) / 1e6:.0f} M parameters, "
          f"random weights), {latent * 8}x{latent * 8} ({latent}x{latent} latent), batch 1, Euler, {steps} steps per run, "
          f"median of {repeats} interleaved runs, float32, cpu, {torch.get_num_threads()} threads")
    results = {"CFG": sampling(None)}
    host.load_extension()
    results["ASAG installed, off"] = sampling([False])
    for spec in layers:
        args = [True, 1.5, 2, 1.0, spec]
        results[f"ASAG {spec}, full extra pass"] = sampling(args, reuse=False)
        results[f"ASAG {spec}, reuse"] = sampling(args, reuse=True)
    if negative_chunks > 1:
        negative = 77 * negative_chunks
        results[f"CFG, {negative_chunks}-chunk negative"] = sampling([False], negative_tokens=negative)
        for spec in layers:
            args = [True, 1.5, 2, 1.0, spec]
            results[f"ASAG {spec}, {negative_chunks}-chunk negative, full"] = sampling(args, reuse=False, negative_tokens=negative)
            results[f"ASAG {spec}, {negative_chunks}-chunk negative, reuse"] = sampling(args, reuse=True, negative_tokens=negative)
    print(side_by_side(results, repeats, steps, baseline="CFG"))
    host.close()


def side_by_side(results: dict, repeats: int, steps: int, baseline: str, rival: str | None = None) -> str:
    """The table of ``results`` (name -> a run of ``steps`` steps): seconds per step, spread, peak
    memory and their ratios to ``baseline``'s (and the time's to ``rival``'s, if given). The
    peak-memory run of each configuration is also its warm-up. Then the timed runs, interleaved
    (one run of each configuration per round, the order rotating from round to round), so drift in
    machine load and position in the round hit all alike."""
    peaks = {name: peak_extra_bytes(run, "cpu") for name, run in results.items()}
    names = list(results)
    samples = {name: [] for name in names}
    for round_ in range(repeats):
        for name in names[round_ % len(names):] + names[:round_ % len(names)]:
            start = time.perf_counter()
            results[name]()
            samples[name].append((time.perf_counter() - start) / steps)
    times = {name: statistics.median(values) for name, values in samples.items()}
    # spread: (slowest - fastest) / median of one configuration's runs, the noise a ratio sits in.
    rivals = [rival] if rival else []
    rows = [[name, f"{times[name]:.2f}", f"{(max(samples[name]) - min(samples[name])) / times[name]:.3f}",
             *(f"{times[name] / times[other]:.3f}" for other in [baseline, *rivals]), f"{peaks[name] / 2**20:.0f}",
             f"{peaks[name] / max(peaks[baseline], 1):.3f}"]
            for name in names]
    return format_table(["configuration", "s/step", "spread", *(f"time / {other}" for other in [baseline, *rivals]), "peak MiB",
                         f"peak / {baseline}"], rows)
