"""``python -m asag.bench step``: cost per sampling step in the A1111 denoiser.

Runs in the repository checkout, not inside the WebUI: it drives the extension through the test
suite's stand-in of the WebUI modules (tests/hosts/a1111_standin, mirroring v1.10.1) with a real
SD1.5-shaped ldm UNet (random weights) and a real k-diffusion sampler. Three configurations are
measured side by side: CFG alone (extension never loaded), CFG with ASAG installed but disabled,
and CFG + ASAG (middle block, 2 iterations)."""
from __future__ import annotations

import statistics
import time

import torch

from .bench import format_table, peak_extra_bytes

STEPS = 3


def bench_step(device: str, repeats: int, latent: int = 64, unet_params: dict | None = None) -> None:
    """``unet_params``: an ldm UNetModel config, SD1.5's by default (the tests pass a small one)."""
    from tests.hosts.a1111_harness import SD15_UNET, WebUI, tiny_latent_diffusion

    if device != "cpu":
        raise SystemExit("the step benchmark runs the CPU stand-in host; use --device cpu")
    repeats = max(1, repeats)
    unet_name = "SD1.5-shaped UNet" if unet_params is None else "UNet"
    unet_params = unet_params or SD15_UNET
    model = tiny_latent_diffusion(unet_params=dict(unet_params, image_size=latent))
    host = WebUI(sd_model=model, context_dim=unet_params["context_dim"], tokens=77)
    settings = dict(batch_size=1, steps=STEPS, sampler_name="Euler", width_latent=latent)

    def sampling(asag_args):
        def run():
            p = host.processing_for(asag_args, **settings)
            p.scripts.process(p)
            with torch.no_grad():
                p.sample()
            p.scripts.postprocess(p, None)
        return run

    print(f"sampling step, {unet_name} ({sum(t.numel() for t in model.model.parameters()) / 1e6:.0f} M parameters, "
          f"random weights), {latent * 8}x{latent * 8} ({latent}x{latent} latent), batch 1, Euler, {STEPS} steps per run, "
          f"median of {repeats} interleaved runs, float32, cpu, {torch.get_num_threads()} threads")
    results = {"CFG": sampling(None)}
    host.load_extension()
    results["ASAG installed, off"] = sampling([False])
    results["CFG + ASAG"] = sampling([True, 1.5, 2, 1.0, "middle"])
    # Interleaved (one run of each configuration per round, the order rotating from round to
    # round), so drift in machine load and position in the round hit all alike.
    for run in results.values():
        run()  # warm-up
    names = list(results)
    samples = {name: [] for name in names}
    for round_ in range(repeats):
        for name in names[round_ % len(names):] + names[:round_ % len(names)]:
            start = time.perf_counter()
            results[name]()
            samples[name].append((time.perf_counter() - start) / STEPS)
    times = {name: statistics.median(values) for name, values in samples.items()}
    peaks = {name: peak_extra_bytes(run, "cpu") for name, run in results.items()}
    host.close()
    # spread: (slowest - fastest) / median of one configuration's runs, the noise a ratio sits in.
    rows = [[name, f"{times[name]:.2f}", f"{(max(samples[name]) - min(samples[name])) / times[name]:.3f}",
             f"{times[name] / times['CFG']:.3f}", f"{peaks[name] / 2**20:.0f}", f"{peaks[name] / peaks['CFG']:.3f}"]
            for name in names]
    print(format_table(["configuration", "s/step", "spread", "time / CFG", "peak MiB", "peak / CFG"], rows))
