"""Reuse of the main pass in the extra pass, inside the A1111 denoiser (stand-in host modules
mirroring v1.10.1, real ldm models, real k-diffusion samplers): the same images as without reuse,
exactly the reused blocks fewer in every extra pass, nothing left behind."""
import contextlib

import pytest
import torch

from asag.hosts import a1111
from asag.layers import resolve_layers, self_attention_modules
from asag.reuse import WRAPPER_ATTR, blocks_before, unet_blocks
from tests.hosts.block_counter import BlockCounter
from tests.hosts.a1111_harness import WebUI, apply_model_failing_at, tiny_latent_diffusion, tiny_sdxl_diffusion

SCALE = 3.0
SPECS = ["middle", "u0-2", "u6-8", "d1,m0", "all"]
STEPS = dict(steps=3, sampler_name="Euler")


@pytest.fixture(scope="module")
def host():
    webui = WebUI()
    webui.load_extension()
    webui.models = {"sd1": webui.shared.sd_model, "refiner": tiny_latent_diffusion(seed=5),
                    "inpainting": tiny_latent_diffusion(conditioning_key="hybrid", in_channels=9, seed=6),
                    "sdxl": tiny_sdxl_diffusion(seed=7)}
    yield webui
    webui.close()


def inpainting_conditioning():
    return torch.randn((2, 5, 16, 16), generator=torch.Generator().manual_seed(4))


# name -> (generation settings, host options to set, model)
LAYOUTS = {
    "batch 1": (dict(batch_size=1), {}, "sd1"),
    "batch 3": (dict(batch_size=3), {}, "sd1"),
    "AND prompts": (dict(batch_size=2, and_weights=[[0.7, 0.3], [1.0]]), {}, "sd1"),
    "chunked (batch_cond_uncond off)": (dict(batch_size=2, and_weights=[[0.6, 0.4], [1.0]]), {"batch_cond_uncond": False}, "sd1"),
    "longer negative prompt": (dict(batch_size=2, and_weights=[[0.5, 0.5], [0.5, 0.5]], uncond_tokens=16), {}, "sd1"),
    # a prompt of one chunk, a negative prompt of two: the prompt padded with the empty prompt
    "two-chunk negative, pad_cond_uncond": (dict(batch_size=2, uncond_tokens=14), {"pad_cond_uncond": True}, "sd1"),
    "two-chunk negative, pad_cond_uncond_v0": (dict(batch_size=2, uncond_tokens=14), {"pad_cond_uncond_v0": True}, "sd1"),
    "two-chunk negative, pad_cond_uncond, full batch": (dict(batch_size=2, uncond_tokens=14, full_batch=True), {"pad_cond_uncond": True}, "sd1"),
    "SDXL, two-chunk negative, pad_cond_uncond": (dict(batch_size=1, uncond_tokens=14), {"pad_cond_uncond": True}, "sdxl"),
    "skipped uncond rows": (dict(batch_size=2, steps=4), {"skip_early_cond": 0.5}, "sd1"),
    "full batch": (dict(batch_size=2, full_batch=True), {}, "sd1"),
    "full batch, chunked, longer negative": (dict(batch_size=2, full_batch=True, uncond_tokens=16), {"batch_cond_uncond": False}, "sd1"),
    "SDXL dict conds": (dict(batch_size=2), {}, "sdxl"),
    "inpainting model": (dict(batch_size=2, image_conditioning=inpainting_conditioning()), {}, "inpainting"),
    "hires fix": (dict(batch_size=1, enable_hr=True, hr_steps=2, width_latent=8), {}, "sd1"),
    "refiner switch": (dict(batch_size=2, steps=4, refiner_switch_at=0.5), {}, "sd1"),
    "DDIM": (dict(batch_size=2, sampler_name="DDIM"), {}, "sd1"),
}


@contextlib.contextmanager
def options(host, **values):
    saved = {key: getattr(host.shared.opts, key, None) for key in values}
    for key, value in values.items():
        setattr(host.shared.opts, key, value)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                delattr(host.shared.opts, key)
            else:
                setattr(host.shared.opts, key, value)


def generate(host, layout, asag=None, reuse=True):
    """One generation of ``layout``; returns (processed, UNet calls, block computations)."""
    settings, host_options, model = LAYOUTS[layout]
    settings = dict(STEPS, **settings)
    full_batch = settings.pop("full_batch", False)
    models = [host.models[model]]
    if "refiner_switch_at" in settings:
        settings["refiner_model"] = host.models["refiner"]
        models.append(host.models["refiner"])
    host.shared.sd_model = host.models[model]
    host.vector_dim = 8 if model == "sdxl" else None
    args = None if asag is None else [{"enabled": True, "scale": SCALE, "layers": asag, "full_batch": full_batch}]
    counters = BlockCounter([model.model.diffusion_model for model in models])
    try:
        with options(host, asag_reuse_blocks=reuse, **host_options):
            processed, _ = host.generate(args if args is not None else [False], **settings)
    finally:
        counters.close()
        host.shared.sd_model, host.vector_dim = host.models["sd1"], None
    return processed, counters.unet_calls, counters.block_computations


def reused_blocks(host, model, spec):
    unet = host.models[model].model.diffusion_model
    return len(blocks_before(unet, resolve_layers(spec, self_attention_modules(unet))))


def assert_nothing_left(host):
    for model in host.models.values():
        for module in model.model.diffusion_model.modules():
            assert not hasattr(module.__dict__.get("forward"), WRAPPER_ATTR)
    state = a1111.ACTIVE.state
    assert state is None or all(plan.reuse is None or not plan.reuse._records for plan in state.unets.values())


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_reuse_gives_the_same_image_and_skips_exactly_the_reused_blocks(host, layout, spec):
    base, main_calls, _ = generate(host, layout)
    off, calls_off, computed_off = generate(host, layout, spec, reuse=False)
    on, calls_on, computed_on = generate(host, layout, spec, reuse=True)
    assert_nothing_left(host)
    # ASAG changes the image measurably, and reuse changes nothing but rounding
    assert (off.latents - base.latents).abs().max() > 1e-3 * base.latents.abs().max()
    assert (on.latents - off.latents).abs().max() <= 1e-4 * off.latents.abs().max()
    assert on.infotext == off.infotext
    extra_calls = calls_on - main_calls
    assert extra_calls > 0 and calls_off == calls_on
    assert computed_off - computed_on == reused_blocks(host, LAYOUTS[layout][2], spec) * extra_calls


def test_reuse_off_is_todays_full_extra_pass(host):
    base, main_calls, computed_base = generate(host, "batch 3")
    off, calls_off, computed_off = generate(host, "batch 3", "middle", reuse=False)
    blocks = len(unet_blocks(host.models["sd1"].model.diffusion_model))
    assert computed_off - computed_base == blocks * (calls_off - main_calls)


def test_nothing_stays_recorded_between_steps(host):
    # After every step (a callback after ASAG's on_cfg_after_cfg): no forward of ours, no recording.
    seen = []
    host.callbacks.on_cfg_after_cfg(lambda params: seen.append(assert_nothing_left(host) is None))
    try:
        generate(host, "AND prompts", "u0-2")
    finally:
        host.callbacks.callback_map["cfg_after_cfg"].pop()
    assert seen == [True] * STEPS["steps"]


def test_a_failure_inside_the_unet_drops_the_recording_at_once(host):
    unet = host.models["sd1"].model.diffusion_model
    calls = []

    def fail_in_the_second_main_pass(*_):
        calls.append(1)
        if len(calls) == 3:  # main, extra, then the next step's main pass
            raise RuntimeError("CUDA out of memory (simulated)")

    handle = unet.output_blocks[4].register_forward_pre_hook(fail_in_the_second_main_pass)
    try:
        with pytest.raises(RuntimeError, match="simulated"):
            generate(host, "batch 1", "u6-8")  # escapes sampling: postprocess never runs
    finally:
        handle.remove()
    assert a1111.ACTIVE.state is not None  # the failed job's state is still there ...
    assert_nothing_left(host)  # ... but nothing of the reuse


def test_a_failure_before_the_unet_is_cleaned_up_by_the_next_generation(host):
    with apply_model_failing_at(host.models["sd1"], 3, "simulated"), pytest.raises(RuntimeError, match="simulated"):
        generate(host, "batch 1", "middle")
    after, _, _ = generate(host, "batch 1")  # ASAG off
    base, _, _ = generate(host, "batch 1")
    assert torch.equal(after.latents, base.latents)
    assert_nothing_left(host)
    assert a1111.ACTIVE.state is None


def test_an_interrupt_leaves_nothing(host):
    def interrupt(params):
        if params.sampling_step >= 1:
            host.shared.state.interrupted = True

    host.callbacks.on_cfg_after_cfg(interrupt)
    try:
        interrupted, _, _ = generate(host, "batch 1", "middle")
    finally:
        host.callbacks.remove_callbacks_for_function(interrupt)
    assert torch.isfinite(interrupted.latents).all()
    assert_nothing_left(host)
    assert a1111.ACTIVE.state is None


def test_diagnostics_report_the_reuse(host, caplog):
    caplog.set_level("INFO", logger="asag")
    with options(host, asag_diagnostics=True):
        generate(host, "batch 1", "middle")
    line = next(l for l in caplog.text.splitlines() if "diagnostics on " in l)
    blocks = len(unet_blocks(host.models["sd1"].model.diffusion_model))
    assert f"3 of 3 extra passes took {reused_blocks(host, 'sd1', 'middle')} of the model's {blocks} blocks" in line


def test_under_lowvram_reuse_is_off_and_says_so(host, caplog):
    caplog.set_level("INFO", logger="asag")
    host.shared.cmd_opts.lowvram = True
    try:
        _, main_calls, computed_base = generate(host, "batch 1")
        on, calls_on, computed_on = generate(host, "batch 1", "u6-8", reuse=True)
    finally:
        host.shared.cmd_opts.lowvram = False
    off, _, _ = generate(host, "batch 1", "u6-8", reuse=False)
    blocks = len(unet_blocks(host.models["sd1"].model.diffusion_model))
    assert computed_on - computed_base == blocks * (calls_on - main_calls)  # every block of the extra pass computed
    assert torch.equal(on.latents, off.latents)
    assert "reuse of the main pass is off under --lowvram" in caplog.text


def test_diagnostics_say_none_and_why_when_nothing_was_reused(host, caplog):
    caplog.set_level("INFO", logger="asag")
    block = host.models["sd1"].model.diffusion_model.input_blocks[1][1].transformer_blocks[0]
    handle = block.attn1.register_forward_pre_hook(lambda *_: None)  # another extension's hook
    try:
        with options(host, asag_diagnostics=True):
            generate(host, "batch 1", "middle")
    finally:
        handle.remove()
    line = next(l for l in caplog.text.splitlines() if "diagnostics on " in l)
    assert "none of the 3 extra passes took blocks from the main pass; computed in full: a hook on input block 1" in line
    assert "nan" not in line
    assert "the extra pass is computed in full, without the main pass's blocks: a hook on input block 1" in caplog.text
