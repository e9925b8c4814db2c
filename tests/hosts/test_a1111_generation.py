"""ASAG inside the A1111 denoiser: a real ldm LatentDiffusion, real k-diffusion samplers and stand-in
host modules (tests/hosts/a1111_standin, mirroring v1.10.1)."""
import numpy as np
import pytest
import torch

from asag import attention
from asag.hosts import a1111
from asag.sinkhorn import adversarial_sinkhorn_attention_heads
from tests.hosts.a1111_harness import WebUI, apply_model_failing_at

SCALE = 3.0


def inpaint_settings():
    init = torch.randn((2, 4, 16, 16), generator=torch.Generator().manual_seed(7))
    mask = torch.zeros(1, 1, 16, 16)
    mask[..., :8] = 1.0  # keep the left half
    return dict(batch_size=2, init_latent=init, mask=mask, denoising_strength=0.75, steps=4)


# A 1-step Euler txt2img returns the first call's denoised output: with ASAG it must be exactly the
# host's own result plus the ASAG term, whatever the batch layout.
ONE_STEP = dict(steps=1, sampler_name="Euler")
LAYOUTS = {
    "batch of 3": dict(batch_size=3),
    "AND prompt": dict(batch_size=2, and_weights=[[0.7, 0.3], [1.0]]),
    "padded conds (longer negative)": dict(batch_size=2, uncond_tokens=16),
    "CFG 1": dict(batch_size=2, cfg_scale=1.0),
}
SCENARIOS = {
    **{name: dict(ONE_STEP, **layout) for name, layout in LAYOUTS.items()},
    "euler a": dict(batch_size=2, steps=4, sampler_name="Euler a"),
    "heun": dict(batch_size=1, steps=3, sampler_name="Heun"),
    "dpm++ 2m": dict(batch_size=2, steps=4, sampler_name="DPM++ 2M"),
    "ddim": dict(batch_size=2, steps=4, sampler_name="DDIM"),
    "hires": dict(batch_size=1, steps=3, enable_hr=True, hr_steps=3, width_latent=8),
    "inpaint": inpaint_settings(),
}


@pytest.fixture(scope="module")
def host():
    webui = WebUI()
    # Baselines on a WebUI that never loaded the extension; then load it, as a user installs it.
    webui.baselines = {name: webui.generate(None, **settings)[0] for name, settings in SCENARIOS.items()}
    webui.load_extension()
    yield webui
    webui.close()


def same_pixels(a, b):
    return len(a.images) == len(b.images) and all(np.array_equal(x, y) for x, y in zip(a.images, b.images))


# ---- a direct computation, without the extension -----------------------------------------------
def direct_term(host, settings):
    """``w * sum(weight * (cond - perturbed))`` per image at the first model call, computed here: the
    inner model as the sampler wraps it, the middle attn1 swapped by hand."""
    import k_diffusion.external

    model = host.shared.sd_model
    denoiser = k_diffusion.external.CompVisDenoiser(model, quantize=True)
    batch_size = settings["batch_size"]
    sigma = denoiser.get_sigmas(1)[0]
    x = torch.randn((batch_size, 4, 16, 16), generator=torch.Generator().manual_seed(0)) * sigma
    cond, _ = host.conds(batch_size, settings.get("and_weights"))
    conds_list, rows = host.prompt_parser.reconstruct_multicond_batch(cond, 0)
    x_rows = torch.cat([x[i:i + 1].expand(len(parts), -1, -1, -1) for i, parts in enumerate(conds_list)])
    condition = {"c_crossattn": [rows], "c_concat": [x.new_zeros(len(x_rows), 5, 1, 1)]}
    attn1 = model.model.diffusion_model.middle_block[1].transformer_blocks[0].attn1

    def sinkhorn(h, context=None, **_):
        context = h if context is None else context
        out = adversarial_sinkhorn_attention_heads(attn1.to_q(h), attn1.to_k(context), attn1.to_v(context), attn1.heads,
                                                   iterations=2, scale=attn1.scale)
        return attn1.to_out(out)

    with torch.no_grad():
        plain = denoiser(x_rows, sigma.expand(len(x_rows)), cond=condition)
        attn1.forward = sinkhorn
        try:
            perturbed = denoiser(x_rows, sigma.expand(len(x_rows)), cond=condition)
        finally:
            del attn1.forward
    return torch.stack([sum(SCALE * w * (plain[r] - perturbed[r]) for r, w in parts) for parts in conds_list])


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_result_is_the_host_result_plus_the_asag_term(host, layout):
    settings = SCENARIOS[layout]
    processed, _ = host.generate([True, SCALE], **settings)
    base = host.baselines[layout]
    assert (processed.latents - base.latents).abs().max() > 1e-2  # ASAG changed it
    torch.testing.assert_close(processed.latents, base.latents + direct_term(host, settings), atol=2e-4, rtol=1e-4)
    assert processed.infotext["ASAG scale"] == SCALE


def test_skipped_uncond_steps_still_get_the_term(host):
    # Skip early CFG / NGMS drop the uncond rows after on_cfg_denoiser: CFG falls back to cond.
    settings = SCENARIOS["batch of 3"]
    host.shared.opts.skip_early_cond = 1.0
    try:
        processed, p = host.generate([True, SCALE], **settings)
        plain, _ = host.generate(None, **settings)
    finally:
        host.shared.opts.skip_early_cond = 0.0
    assert p.extra_generation_params["Skip Early CFG"] == 1.0
    torch.testing.assert_close(processed.latents, plain.latents + direct_term(host, settings), atol=2e-4, rtol=1e-4)


def test_chunked_batches_get_the_same_term(host):
    # batch_cond_uncond off (low-VRAM setups): the host and the extra pass run batch_size rows at a time.
    settings = SCENARIOS["AND prompt"]
    host.shared.opts.batch_cond_uncond = False
    try:
        chunked, _ = host.generate([True, SCALE], **settings)
        plain, _ = host.generate(None, **settings)
    finally:
        host.shared.opts.batch_cond_uncond = True
    torch.testing.assert_close(chunked.latents, plain.latents + direct_term(host, settings), atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize("scenario", ["euler a", "heun", "dpm++ 2m", "ddim", "hires"])
def test_every_sampler_family_is_guided_and_off_is_untouched(host, scenario):
    settings = SCENARIOS[scenario]
    guided, _ = host.generate([True, SCALE], **settings)
    assert torch.isfinite(guided.latents).all()
    assert (guided.latents - host.baselines[scenario].latents).abs().max() > 1e-3
    off, _ = host.generate([False, SCALE], **settings)
    assert same_pixels(off, host.baselines[scenario]) and torch.equal(off.latents, host.baselines[scenario].latents)
    assert off.infotext == host.baselines[scenario].infotext


def test_progress_by_sigma_works_for_both_sampler_families(host):
    for scenario in ("dpm++ 2m", "ddim"):
        whole, _ = host.generate([{"enabled": True, "scale": SCALE, "progress_by": "sigma"}], **SCENARIOS[scenario])
        late, _ = host.generate([{"enabled": True, "scale": SCALE, "progress_by": "sigma", "start": 0.999}], **SCENARIOS[scenario])
        assert not torch.equal(whole.latents, host.baselines[scenario].latents)
        assert not torch.equal(whole.latents, late.latents)


def test_inpainting_leaves_the_masked_area_untouched_at_every_step(host):
    settings = SCENARIOS["inpaint"]
    seen = {}

    def record(params):  # registered after ASAG's: sees its result
        seen.setdefault(record.run, []).append(params.x.clone())

    host.callbacks.on_cfg_after_cfg(record)
    try:
        for record.run, args in (("off", [False]), ("on", [True, SCALE])):
            host.generate(args, **settings)
    finally:
        host.callbacks.remove_callbacks_for_function(record)
    keep = settings["mask"].bool().expand(2, 4, 16, 16)
    for off, on in zip(seen["off"], seen["on"]):
        assert torch.equal(on[keep], off[keep])
        assert (on[~keep] - off[~keep]).abs().max() > 1e-4


def test_scale_zero_and_outside_the_window_run_no_extra_pass(host, monkeypatch):
    calls = []
    original = a1111._perturbed_pass
    monkeypatch.setattr(a1111, "_perturbed_pass", lambda *a, **k: calls.append(1) or original(*a, **k))
    settings = SCENARIOS["dpm++ 2m"]
    zero, _ = host.generate([True, 0.0], **settings)
    assert calls == [] and same_pixels(zero, host.baselines["dpm++ 2m"])
    host.generate([{"enabled": True, "start": 0.5, "end": 1.0}], **settings)  # 4 calls at progress 0, 1/3, 2/3, 1
    assert len(calls) == 2
    calls.clear()
    host.generate([{"enabled": True, "schedule": "linear"}], **settings)  # scale 0 at the last call
    assert len(calls) == 3


@pytest.mark.parametrize("mode,expected", [("same", {False: 2, True: 2}), ("off", {False: 2}), ("only", {True: 2}),
                                           ("override", {False: 2, True: 5})])
def test_hires_modes(host, monkeypatch, mode, expected):
    seen = {}
    original = attention.adversarial_sinkhorn_attention_heads

    def counting(q, k, v, heads, **kwargs):
        seen[host.hr_flag()] = kwargs["iterations"]
        return original(q, k, v, heads, **kwargs)

    host.hr_flag = lambda: a1111.ACTIVE.state.in_hr_pass
    monkeypatch.setattr(attention, "adversarial_sinkhorn_attention_heads", counting)
    host.generate([{"enabled": True, "hires": mode, "hires_iterations": 5}], **SCENARIOS["hires"])
    assert seen == expected


def test_an_exception_in_the_extra_pass_leaves_the_image_and_the_model_untouched(host, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(attention, "adversarial_sinkhorn_attention_heads", broken)
    failed, _ = host.generate([True, SCALE], **SCENARIOS["dpm++ 2m"])  # the host logs and goes on
    assert same_pixels(failed, host.baselines["dpm++ 2m"])
    unet = host.shared.sd_model.model.diffusion_model
    assert not any("forward" in m.__dict__ for m in unet.modules())


def test_after_a_crash_or_an_interrupt_the_next_generation_is_as_if_never_installed(host):
    settings = SCENARIOS["euler a"]
    with apply_model_failing_at(host.shared.sd_model, 3, "CUDA out of memory (simulated)"), \
            pytest.raises(RuntimeError, match="simulated"):
        host.generate([True, SCALE], **settings)  # escapes sampling: postprocess never runs
    after_crash, _ = host.generate([False], **settings)
    assert same_pixels(after_crash, host.baselines["euler a"]) and torch.equal(after_crash.latents, host.baselines["euler a"].latents)

    def interrupt(params):
        if params.sampling_step >= 1:
            host.shared.state.interrupted = True

    host.callbacks.on_cfg_after_cfg(interrupt)
    try:
        interrupted, _ = host.generate([True, SCALE], **settings)
    finally:
        host.callbacks.remove_callbacks_for_function(interrupt)
    assert torch.isfinite(interrupted.latents).all()
    after_interrupt, _ = host.generate([False], **settings)
    assert same_pixels(after_interrupt, host.baselines["euler a"]) and torch.equal(after_interrupt.latents, host.baselines["euler a"].latents)
    unet = host.shared.sd_model.model.diffusion_model
    assert not any("forward" in m.__dict__ for m in unet.modules())


def test_named_api_fields_equal_positional_args(host):
    settings = SCENARIOS["dpm++ 2m"]
    positional, _ = host.generate([True, SCALE, 3], **settings)
    named, _ = host.generate([{"enabled": True, "scale": SCALE, "iterations": 3}], **settings)
    assert torch.equal(positional.latents, named.latents) and positional.infotext == named.infotext


@pytest.mark.parametrize("args,field", [
    ([{"enabled": True, "scale": "abc"}], "'scale'"),
    ([{"enabled": True, "layers": "m7"}], "'layers'"),
    ([{"enabled": True, "bogus": 1}], "'bogus'"),
    ([True, 1.5, 2, 1.0, "nonsense"], "'layers'"),
])
def test_bad_payloads_leave_the_image_alone_and_explain(host, args, field):
    processed, _ = host.generate(args, **SCENARIOS["dpm++ 2m"])
    assert same_pixels(processed, host.baselines["dpm++ 2m"])
    note = processed.infotext["ASAG note"]
    assert note.startswith("not applied") and field in note


def test_unsupported_models_are_reported_and_left_alone(host):
    from modules import sd_unet

    sd_unet.current_unet = object()  # e.g. TensorRT
    try:
        processed, _ = host.generate([True, SCALE], **SCENARIOS["dpm++ 2m"])
    finally:
        sd_unet.current_unet = None
    assert same_pixels(processed, host.baselines["dpm++ 2m"])
    assert "alternative UNet" in processed.infotext["ASAG note"]

    from types import SimpleNamespace
    p = SimpleNamespace(extra_generation_params={})
    real = host.shared.sd_model
    host.shared.sd_model = SimpleNamespace(is_sd3=True)
    try:
        host.new_script().process(p, True, SCALE)
    finally:
        host.shared.sd_model = real
    assert "no UNet" in p.extra_generation_params["ASAG note"] and a1111.ACTIVE.state is None


def test_callbacks_are_registered_once(host):
    counts = {k: len(v) for k, v in host.callbacks.callback_map.items()}
    for _ in range(2):
        host.generate([True, SCALE], **SCENARIOS["CFG 1"])
    assert {k: len(v) for k, v in host.callbacks.callback_map.items()} == counts
    assert counts["cfg_denoiser"] == counts["cfg_denoised"] == counts["cfg_after_cfg"] == 1


def test_diagnostics_are_logged_per_generation_when_enabled(host, caplog):
    caplog.set_level("INFO", logger="asag")
    host.generate([True, SCALE], **SCENARIOS["dpm++ 2m"])
    assert "diagnostics" not in caplog.text  # off by default
    host.shared.opts.asag_diagnostics = True
    try:
        host.generate([{"enabled": True, "scale": SCALE, "start": 0.5}], **SCENARIOS["dpm++ 2m"])
    finally:
        del host.shared.opts.asag_diagnostics
    line = next(l for l in caplog.text.splitlines() if "diagnostics on " in l)
    assert "diagnostics on A1111 (ldm): 2 extra passes" in line and "NaN values 0" in line
    entropy = float(line.split("plan row entropy ")[1].split()[0])
    assert 0.0 < entropy <= 1.0


def test_webui_1_6_without_denoiser_in_the_callback_params(host, monkeypatch):
    # v1.6/1.7: CFGDenoiserParams has no ``denoiser``; ASAG reaches it through p.sampler.model_wrap_cfg.
    settings = SCENARIOS["AND prompt"]
    modern, _ = host.generate([True, SCALE], **settings)
    from modules import script_callbacks

    original = script_callbacks.CFGDenoiserParams.__init__

    def without_denoiser(self, *args):
        original(self, *args[:7])
        del self.denoiser

    monkeypatch.setattr(script_callbacks.CFGDenoiserParams, "__init__", without_denoiser)
    old, _ = host.generate([True, SCALE], **settings)
    assert torch.equal(old.latents, modern.latents)


def test_inpainting_model_gets_its_masked_image_conditioning(host):
    # conditioning_key "hybrid" (9 input channels): c_concat must reach the perturbed pass too.
    from tests.hosts.a1111_harness import tiny_latent_diffusion

    regular = host.shared.sd_model
    host.shared.sd_model = tiny_latent_diffusion(conditioning_key="hybrid", in_channels=9)
    image_conditioning = torch.randn((2, 5, 16, 16), generator=torch.Generator().manual_seed(4))
    try:
        settings = dict(batch_size=2, steps=3, sampler_name="Euler", image_conditioning=image_conditioning)
        off, _ = host.generate([False], **settings)
        on, _ = host.generate([True, SCALE], **settings)
    finally:
        host.shared.sd_model = regular
    assert "ASAG note" not in on.infotext
    assert (on.latents - off.latents).abs().max() > 1e-3



def test_layers_with_a_single_token_are_reported_and_leave_the_image_alone(host, monkeypatch):
    # 32x32 pixels: a 4x4 latent, the tiny UNet's middle block at 1x1 (as SD1.5's below 128x128).
    calls = []
    original = a1111._perturbed_pass
    monkeypatch.setattr(a1111, "_perturbed_pass", lambda *a, **k: calls.append(1) or original(*a, **k))
    settings = dict(batch_size=1, steps=3, sampler_name="Euler", width_latent=4)
    off, _ = host.generate([False], **settings)
    on, _ = host.generate([True, SCALE, 2, 1.0, "middle"], **settings)
    assert calls == [] and torch.equal(on.latents, off.latents)
    note = on.infotext["ASAG note"]
    assert note.startswith("no effect") and "(middle)" in note and "4x4 latent (32x32 pixels)" in note
    assert on.infotext["ASAG scale"] == SCALE  # the settings stay: they act at larger sizes
    output_side, _ = host.generate([True, SCALE, 2, 1.0, "u6-8"], **settings)  # 16 tokens there
    assert "ASAG note" not in output_side.infotext and len(calls) == 3
    assert (output_side.latents - off.latents).abs().max() > 1e-3
