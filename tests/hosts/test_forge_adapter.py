"""The Forge adapter, driven through a stand-in of Forge's patcher and sampling function
(tests/hosts/forge_standin, faithful to Forge dfdcbab) over a real tiny ldm UNet."""
import copy

import pytest
import torch

from asag.hosts.settings import HostOptions
from asag.params import NOTE_KEY, PARAM_BY_INFOTEXT_KEY, AsagParams
from tests.core.reference import reference_attention
from tests.hosts.forge_env import ScriptCallbacks, denoise_step, forge_host, forge_legacy_host, inputs, make_p, reset_forge_objects  # noqa: F401

SIGMA = 2.0
CFG = 5.0


def plain_attention(q, k, v, extra_options):
    """Ordinary attention in Forge's replacement form (what reference-only's sdp() does)."""
    b, n, inner = q.shape
    split = lambda z: z.reshape(b, -1, extra_options["n_heads"], extra_options["dim_head"]).transpose(1, 2)
    return torch.nn.functional.scaled_dot_product_attention(split(q), split(k), split(v)).transpose(1, 2).reshape(b, n, inner)


def start(host, p, callbacks=None, options=HostOptions(), **fields):
    """What scripts/asag.py does in process() and process_before_every_sampling()."""
    callbacks = callbacks or ScriptCallbacks()
    host.forge.register_callbacks(callbacks)
    host.forge.start_job(p, host.job.start(p, [{"enabled": True, **fields}]), options)
    host.forge.before_sampling(p)
    return callbacks


def baseline_step(host, p, x, cond, uncond, cond_scale=CFG):
    plain = make_p(host)  # same seed, so the same weights
    return denoise_step(host, plain, ScriptCallbacks(), x, SIGMA, cond, uncond, cond_scale)


def attn1_modules(p):
    from asag.layers import self_attention_modules

    return self_attention_modules(p.sd_model.forge_objects.unet.model.diffusion_model)


def sinkhorn_by_hand(p, x, cond, addresses, iterations, strength=1.0):
    """The perturbed cond prediction computed without Forge's machinery: the selected attn1
    modules' forward swapped for the float64 reference plan, then ldm's own UNet forward."""
    kmodel = p.sd_model.forge_objects.unet.model
    modules = attn1_modules(p)
    originals = {}

    def perturbed_forward(module):
        def forward(h, context=None, mask=None):
            heads = module.heads
            q, k, v = module.to_q(h), module.to_k(h), module.to_v(h)
            split = lambda t: t.reshape(t.shape[0], t.shape[1], heads, -1).transpose(1, 2)
            out = reference_attention(split(q), split(k), split(v), iterations=iterations, strength=strength)
            return module.to_out(out.float().transpose(1, 2).reshape(q.shape))
        return forward

    for address in addresses:
        originals[address] = modules[address].forward
        modules[address].forward = perturbed_forward(modules[address])
    try:
        sigma = torch.full((x.shape[0],), SIGMA)
        predictor = kmodel.predictor
        with torch.no_grad():
            eps = kmodel.diffusion_model(predictor.calculate_input(sigma, x), predictor.timestep(sigma), context=cond)
        return predictor.calculate_denoised(sigma, eps, x)
    finally:
        for address, forward in originals.items():
            modules[address].forward = forward


def spy_on_extra_passes(host, monkeypatch):
    """Records the model_options of every batch call that carries ASAG's attn1 replacement."""
    calls = []
    real = host.sampling.calc_cond_uncond_batch

    def spy(model, cond, uncond, x, timestep, model_options):
        attn1 = model_options.get("transformer_options", {}).get("patches_replace", {}).get("attn1", {})
        if any(fn.__name__ == "asag_sinkhorn_attn1" for fn in attn1.values()):
            assert uncond is None, "the extra pass runs on the cond rows only"
            calls.append(model_options)
        return real(model, cond, uncond, x, timestep, model_options)

    monkeypatch.setattr(host.sampling, "calc_cond_uncond_batch", spy)
    return calls


def asag_functions(host, model_options, name):
    return [f for f in model_options.get(name, []) if getattr(f, host.forge.OWNED_ATTR, False)]


# ---- the stand-in itself ----------------------------------------------------------------------

def test_standin_forward_equals_ldm_forward_and_routes_attn1_replacements(forge_host):
    p = make_p(forge_host)
    unet = p.sd_model.forge_objects.unet.model.diffusion_model
    x, cond, _ = inputs()
    t = torch.tensor([500.0])
    seen = []

    def recorder(q, k, v, extra_options):
        seen.append((extra_options["block"], extra_options["block_index"], tuple(q.shape), extra_options["n_heads"]))
        return plain_attention(q, k, v, extra_options)

    from ldm.modules.diffusionmodules.openaimodel import UNetModel

    with torch.no_grad():
        expected = UNetModel.forward(unet, x, t, context=cond)  # ldm's own forward
        assert torch.allclose(unet(x, t, context=cond, transformer_options={}), expected, atol=1e-5)
        options = {"patches_replace": {"attn1": {("middle", 0, 0): recorder, ("output", 4): recorder}}}
        routed = unet(x, t, context=cond, transformer_options=options)
    assert torch.allclose(routed, expected, atol=1e-4)
    # the 3-tuple key, and the 2-tuple fallback; middle at 4x4 latents: 16 tokens, 64 channels = 8 heads x 8
    assert seen == [(("middle", 0), 0, (1, 16, 64), 8), (("output", 4), 0, (1, 64, 64), 8)]


# ---- the guidance -------------------------------------------------------------------------------

@pytest.mark.parametrize("layers, scale, iterations", [("middle", 2.0, 2), ("d1,u3", 1.5, 0)])
def test_post_cfg_gives_cfg_plus_scale_times_cond_minus_perturbed(forge_host, layers, scale, iterations):
    p = make_p(forge_host)
    x, cond, uncond = inputs()
    callbacks = start(forge_host, p, scale=scale, iterations=iterations, layers=layers)
    denoised, cond_pred, uncond_pred = denoise_step(forge_host, p, callbacks, x, SIGMA, cond, uncond, CFG)

    base, base_cond, base_uncond = baseline_step(forge_host, p, x, cond, uncond)
    assert torch.allclose(cond_pred, base_cond, atol=1e-5) and torch.allclose(uncond_pred, base_uncond, atol=1e-5)
    from asag.layers import resolve_layers

    addresses = resolve_layers(layers, attn1_modules(p))
    perturbed = sinkhorn_by_hand(p, x, cond, addresses, iterations)
    assert (perturbed - cond_pred).abs().max() > 1e-3, "the perturbation must change the prediction"
    expected = base + scale * (base_cond - perturbed)
    assert torch.allclose(denoised, expected, atol=2e-4), (denoised - expected).abs().max()
    assert (denoised - base).abs().max() > 1e-3


def test_live_model_options_are_unchanged_by_a_step(forge_host):
    p = make_p(forge_host)
    # Another extension's patches already in place: an attn2 replace and a 2-tuple attn1 replace.
    other = plain_attention
    p.sd_model.forge_objects.unet.set_model_attn2_replace(other, "input", 1, 0)
    p.sd_model.forge_objects.unet.set_model_attn1_replace(other, "output", 8)
    callbacks = start(forge_host, p, layers="all", scale=1.0)
    live = p.sd_model.forge_objects.unet.model_options
    snapshot = copy.deepcopy(live)  # functions are kept by reference, containers copied
    inner = live["transformer_options"]["patches_replace"]
    inner_attn1 = dict(inner["attn1"])
    x, cond, uncond = inputs()
    denoise_step(forge_host, p, callbacks, x, SIGMA, cond, uncond, CFG)
    assert live == snapshot
    assert inner["attn1"] == inner_attn1 == {("output", 8): other}
    assert p.sd_model.forge_objects.unet.model_options is live


@pytest.mark.parametrize("reuse", [False, True])
def test_replacement_runs_on_the_selected_layers_only(forge_host, monkeypatch, reuse):
    p = make_p(forge_host)
    # Like reference-only: an attn1 replacement on every 3-tuple key, recording where it runs.
    ran = []

    def recorder(q, k, v, extra_options):
        ran.append((tuple(extra_options["cond_or_uncond"]), extra_options["block"] + (extra_options["block_index"],)))
        return plain_attention(q, k, v, extra_options)

    p.sd_model.forge_objects.unet.set_model_replace_all(recorder, "attn1")
    extra_passes = spy_on_extra_passes(forge_host, monkeypatch)
    callbacks = start(forge_host, p, layers="m0,u1", scale=1.0, options=HostOptions(reuse=reuse))
    x, cond, uncond = inputs()
    denoise_step(forge_host, p, callbacks, x, SIGMA, cond, uncond, CFG)

    all_keys = {a.patch_key for a in attn1_modules(p)}
    selected = {("middle", 0, 0), ("output", 1, 0)}
    # Reuse would take the input blocks from the main pass, but a replacement registered on them
    # (which may keep state, as reference-only's does) makes the extra pass run them in full.
    assert {where for rows, where in ran if rows == (1, 0)} == all_keys  # main pass: untouched
    assert {where for rows, where in ran if rows == (0,)} == all_keys - selected  # extra pass
    assert len(extra_passes) == 1
    attn1 = extra_passes[0]["transformer_options"]["patches_replace"]["attn1"]
    ours = {key for key, fn in attn1.items() if fn is not recorder}
    assert ours == selected and all(len(key) == 3 for key in ours)


def test_sinkhorn_replacement_takes_more_keys_than_queries(forge_host):
    params = AsagParams(enabled=True, iterations=3, strength=0.7)
    g = torch.Generator().manual_seed(3)
    q = torch.randn(2, 16, 4 * 8, generator=g)
    k = torch.randn(2, 40, 4 * 8, generator=g)
    v = torch.randn(2, 40, 4 * 8, generator=g)
    out = forge_host.forge.sinkhorn_attn1(params)(q, k, v, {"n_heads": 4, "dim_head": 8, "block": ("middle", 0)})
    assert out.shape == q.shape and out.dtype == q.dtype
    split = lambda t: t.reshape(2, t.shape[1], 4, 8).transpose(1, 2)
    expected = reference_attention(split(q), split(k), split(v), iterations=3, strength=0.7).transpose(1, 2).reshape(q.shape)
    assert torch.allclose(out.double(), expected, atol=1e-4)


# ---- placement, idempotence, interplay ----------------------------------------------------------

def test_asag_runs_before_an_earlier_post_cfg_reblend(forge_host):
    p = make_p(forge_host)
    x, cond, uncond = inputs()
    known = torch.zeros_like(x)
    mask = torch.zeros_like(x, dtype=torch.bool)
    mask[..., :8, :] = True

    def reblend(args):  # like inpaint_only: restore the known region of the result
        return torch.where(mask, known, args["denoised"])

    p.sd_model.forge_objects.unet.set_model_sampler_post_cfg_function(reblend)
    callbacks = start(forge_host, p, scale=3.0)
    functions = p.sd_model.forge_objects.unet.model_options["sampler_post_cfg_function"]
    assert functions[1:] == [reblend] and asag_functions(forge_host, p.sd_model.forge_objects.unet.model_options, "sampler_post_cfg_function") == functions[:1]
    denoised, _, _ = denoise_step(forge_host, p, callbacks, x, SIGMA, cond, uncond, CFG)
    assert torch.equal(denoised[mask], known[mask])
    base = baseline_step(forge_host, p, x, cond, uncond)[0]
    assert (denoised[~mask] - base[~mask]).abs().max() > 1e-3


def test_hires_double_call_is_idempotent(forge_host):
    p = make_p(forge_host)
    pristine = p.sd_model.forge_objects.unet
    x, cond, uncond = inputs()
    callbacks = start(forge_host, p, scale=2.0, hires="override", hires_scale=1.0)
    first_pass = denoise_step(forge_host, p, callbacks, x, SIGMA, cond, uncond, CFG)[0]

    p.is_hr_pass = True
    forge_host.forge.before_hr(p)
    forge_host.forge.before_sampling(p)  # Forge's first call, before its reset of forge_objects
    forge_host.forge.before_sampling(p)  # ... and once more on the same objects
    twice = p.sd_model.forge_objects.unet.model_options
    for name in ("sampler_post_cfg_function", "sampler_pre_cfg_function"):
        assert len(twice[name]) == 1 and asag_functions(forge_host, twice, name) == twice[name]
    on_same_objects = denoise_step(forge_host, p, callbacks, x, SIGMA, cond, uncond, CFG)[0]

    reset_forge_objects(p, pristine)
    forge_host.forge.before_sampling(p)
    after_reset = denoise_step(forge_host, p, callbacks, x, SIGMA, cond, uncond, CFG)[0]
    assert torch.equal(on_same_objects, after_reset)
    base = baseline_step(forge_host, p, x, cond, uncond)[0]
    # override: the hires scale (1.0) is half the first pass's (2.0)
    assert torch.allclose(after_reset - base, (first_pass - base) / 2, atol=1e-5)
    assert "sampler_post_cfg_function" not in pristine.model_options


def test_reference_recording_call_gets_no_extra_pass_and_inpaint_pre_cfg_keeps_it(forge_host, monkeypatch):
    p = make_p(forge_host)
    unet = p.sd_model.forge_objects.unet
    x, cond, uncond = inputs()
    recorded_inputs = []

    def recording_modifier(model, x, timestep, uncond, cond, cond_scale, model_options, seed):
        # reference-only: record the style on a freshly noised reference latent, cond_scale 1
        xt = torch.ones_like(x) + torch.randn(x.shape, generator=torch.Generator().manual_seed(9)) * timestep[0]
        recorded_inputs.append(xt)
        forge_host.sampling.sampling_function_inner(model, xt, timestep, uncond, cond, 1, model_options, seed)
        return model, x, timestep, uncond, cond, cond_scale, model_options, seed

    def inpaint_pre_cfg(model, c, uc, x, timestep, model_options):  # replaces x, as inpaint_only does
        return model, c, uc, x * 0.5, timestep, model_options

    unet.add_conditioning_modifier(recording_modifier)
    unet.add_sampler_pre_cfg_function(inpaint_pre_cfg)
    extra_passes = spy_on_extra_passes(forge_host, monkeypatch)
    callbacks = start(forge_host, p, scale=1.0)
    denoise_step(forge_host, p, callbacks, x, SIGMA, cond, uncond, CFG)
    assert len(recorded_inputs) == 1  # the recording call happened ...
    assert len(extra_passes) == 1  # ... and only the real call ran ASAG's extra pass


# ---- when ASAG does not apply -------------------------------------------------------------------

@pytest.mark.parametrize("flags", [(), ("is_sd3",)])
def test_non_unet_models_are_reported_and_left_untouched(forge_host, flags):
    p = make_p(forge_host, layout_flags=flags)
    before = p.sd_model.forge_objects.unet
    callbacks = start(forge_host, p, scale=2.0)
    assert p.sd_model.forge_objects.unet is before and before.model_options == {"transformer_options": {}}
    assert "not a UNet model" in p.extra_generation_params[NOTE_KEY]
    x, cond, uncond = inputs()
    out = denoise_step(forge_host, p, callbacks, x, SIGMA, cond, uncond, CFG)[0]
    assert torch.equal(out, baseline_step(forge_host, p, x, cond, uncond)[0])


def test_unknown_layers_are_reported_with_what_the_model_has(forge_host):
    p = make_p(forge_host)
    before = p.sd_model.forge_objects.unet
    start(forge_host, p, layers="u40")
    assert p.sd_model.forge_objects.unet is before
    note = p.extra_generation_params[NOTE_KEY]
    assert "'u40'" in note and "m0 = middle_block" in note


def test_disabled_means_no_patch(forge_host):
    p = make_p(forge_host)
    before = p.sd_model.forge_objects.unet
    forge_host.forge.start_job(p, forge_host.job.start(p, [{"enabled": False, "scale": 3.0}]))
    forge_host.forge.before_sampling(p)
    assert p.sd_model.forge_objects.unet is before and p.extra_generation_params == {}


@pytest.mark.parametrize("progress_by, step, runs", [("steps", 0, False), ("steps", 9, True), ("sigma", 0, True)])
def test_outside_the_active_window_there_is_no_extra_pass(forge_host, monkeypatch, progress_by, step, runs):
    p = make_p(forge_host)
    extra_passes = spy_on_extra_passes(forge_host, monkeypatch)
    # sigma 2.0 lies at log-progress ~0.34 of the predictor's 0.029..14.6 range
    callbacks = start(forge_host, p, start=0.3, end=1.0, progress_by=progress_by)
    x, cond, uncond = inputs()
    out = denoise_step(forge_host, p, callbacks, x, SIGMA, cond, uncond, CFG, step=step, total=10)[0]
    assert len(extra_passes) == int(runs)
    assert torch.equal(out, baseline_step(forge_host, p, x, cond, uncond)[0]) != runs


# ---- infotext and API ---------------------------------------------------------------------------

def test_infotext_and_api_are_the_shared_ones(forge_host):
    p = make_p(forge_host)
    fields = {"scale": 2.5, "layers": "m0,u1", "schedule": "cosine"}
    callbacks = start(forge_host, p, **fields)
    x, cond, uncond = inputs()
    denoise_step(forge_host, p, callbacks, x, SIGMA, cond, uncond, CFG)
    expected = AsagParams(enabled=True, **fields).to_infotext()
    assert p.extra_generation_params == expected
    assert set(expected) <= set(PARAM_BY_INFOTEXT_KEY)
    assert forge_host.forge.job is forge_host.job
    assert getattr(p, forge_host.forge.STATE_ATTR).params == AsagParams.from_args([{"enabled": True, **fields}])
    forge_host.forge.end_job(p)
    assert getattr(p, forge_host.forge.STATE_ATTR) is None


# ---- reForge main: calc_cond_batch and the ComfyUI pre-CFG form ---------------------------------

def test_reforge_uses_calc_cond_batch_with_a_list_of_conds(forge_host, monkeypatch):
    import sys
    import types

    calls = []

    def calc_cond_batch(model, conds, x_in, timestep, model_options):  # reForge's list form
        calls.append(conds)
        return list(forge_host.sampling.calc_cond_uncond_batch(model, conds[0], None, x_in, timestep, model_options)[:1])

    samplers = types.ModuleType("ldm_patched.modules.samplers")
    samplers.calc_cond_batch = calc_cond_batch
    monkeypatch.setattr(forge_host.detect, "detect_host", lambda: forge_host.detect.REFORGE)
    monkeypatch.setitem(sys.modules, "ldm_patched", types.ModuleType("ldm_patched"))
    monkeypatch.setitem(sys.modules, "ldm_patched.modules", types.ModuleType("ldm_patched.modules"))
    monkeypatch.setitem(sys.modules, "ldm_patched.modules.samplers", samplers)
    openaimodel = types.ModuleType("ldm_patched.ldm.modules.diffusionmodules.openaimodel")
    openaimodel.SpatialTransformer = forge_host.unet_nn.SpatialTransformer
    openaimodel.forward_timestep_embed = lambda *a, **k: None  # reForge's blocks are called through it
    for name in ("ldm_patched.ldm", "ldm_patched.ldm.modules", "ldm_patched.ldm.modules.diffusionmodules"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, openaimodel.__name__, openaimodel)
    p = make_p(forge_host)
    start(forge_host, p)
    options = p.sd_model.forge_objects.unet.model_options
    pre_cfg, post_cfg = options["sampler_pre_cfg_function"][0], options["sampler_post_cfg_function"][0]
    assert pre_cfg({"conds_out": ["c", "u"], "input": torch.zeros(1)}) == ["c", "u"]  # dict form, outputs returned

    x, cond, uncond = inputs()
    model = p.sd_model.forge_objects.unet.model
    compiled = forge_host.sampling.compile_conditions(cond)
    sigma = torch.full((1,), SIGMA)
    with torch.no_grad():
        cond_pred, _ = forge_host.sampling.calc_cond_uncond_batch(model, compiled, None, x, sigma, options)
        out = post_cfg({"denoised": cond_pred, "cond": compiled, "uncond": None, "cond_scale": 1.0, "model": model,
                        "uncond_denoised": None, "cond_denoised": cond_pred, "sigma": sigma, "model_options": options, "input": x})
    assert calls == [[compiled]]
    assert (out - cond_pred).abs().max() > 1e-3


# ---- diagnostics and the single-token case ------------------------------------------------------

def test_diagnostics_are_logged_per_generation(forge_host, caplog):
    caplog.set_level("INFO", logger="asag")
    p = make_p(forge_host)
    callbacks = start(forge_host, p, scale=2.0, layers="u0-2", options=HostOptions(diagnostics=True))
    x, cond, uncond = inputs()
    for step in range(2):
        denoise_step(forge_host, p, callbacks, x, SIGMA, cond, uncond, CFG, step=step, total=2)
    forge_host.forge.end_job(p)
    line = next(line for line in caplog.text.splitlines() if "diagnostics on " in line)
    assert f"diagnostics on {forge_host.name}: 2 extra passes" in line and "NaN values 0" in line and "of the main passes" in line
    entropy = float(line.split("plan row entropy ")[1].split()[0])
    assert 0.0 < entropy <= 1.0
    relative = float(line.split("guidance RMS ")[1].split("(")[1].split("%")[0])
    assert relative > 0.1  # guidance RMS as a share of the cond prediction: measurably not zero
    assert "2 of 2 extra passes took 10 of the model's 19 blocks from the main pass" in line


def test_without_diagnostics_nothing_is_logged(forge_host, caplog):
    caplog.set_level("INFO", logger="asag")
    p = make_p(forge_host)
    callbacks = start(forge_host, p, scale=2.0)
    x, cond, uncond = inputs()
    denoise_step(forge_host, p, callbacks, x, SIGMA, cond, uncond, CFG)
    forge_host.forge.end_job(p)
    assert "diagnostics" not in caplog.text


def test_layers_with_a_single_token_are_reported_and_leave_the_result_alone(forge_host, monkeypatch):
    # a 4x4 latent: the tiny UNet's middle block at 1x1 (as SD1.5's below 128x128)
    p = make_p(forge_host)
    extra_passes = spy_on_extra_passes(forge_host, monkeypatch)
    callbacks = start(forge_host, p, scale=2.0, layers="middle")
    g = torch.Generator().manual_seed(2)
    x, cond, uncond = torch.randn(1, 4, 4, 4, generator=g) * 3, torch.randn(1, 7, 32, generator=g), torch.randn(1, 7, 32, generator=g)
    out = denoise_step(forge_host, p, callbacks, x, SIGMA, cond, uncond, CFG)[0]
    assert extra_passes == [] and torch.equal(out, baseline_step(forge_host, p, x, cond, uncond)[0])
    note = p.extra_generation_params[NOTE_KEY]
    assert note.startswith("no effect") and "(middle)" in note and "4x4 latent" in note
    assert p.extra_generation_params["ASAG scale"] == 2.0


@pytest.mark.parametrize("hires", ["off", "override"])
def test_the_hires_pass_gets_its_own_settings_when_the_host_keeps_the_first_pass_patcher(forge_legacy_host, hires):
    # Forge Classic (and old Forge) re-copy forge_objects for the hires. fix pass only when a LoRA
    # is loaded (modules/processing.py :1293/:1406 at 5136ce20): the first pass's patched UNet
    # survives into the hires pass, and before_sampling must take off what that pass should not have.
    host = forge_legacy_host
    p = make_p(host)
    callbacks = ScriptCallbacks()
    host.forge.register_callbacks(callbacks)
    host.forge.start_job(p, host.job.start(p, [{"enabled": True, "scale": 2.0, "layers": "u0-2", "hires": hires,
                                                 "hires_scale": 0.0}]))
    host.forge.before_sampling(p)  # the first pass
    owned = lambda: [f for name in host.forge.OWNED_LISTS  # noqa: E731
                     for f in p.sd_model.forge_objects.unet.model_options.get(name, []) if getattr(f, host.forge.OWNED_ATTR, False)]
    assert len(owned()) == 2
    p.is_hr_pass = True
    host.forge.before_sampling(p)  # the hires pass, forge_objects as the first pass left them
    assert owned() == [] if hires == "off" else len(owned()) == 2
    x, cond, uncond = inputs()
    hires_step = denoise_step(host, p, callbacks, x, SIGMA, cond, uncond, CFG)[0]
    never_patched = denoise_step(host, make_p(host), ScriptCallbacks(), x, SIGMA, cond, uncond, CFG)[0]
    assert torch.equal(hires_step, never_patched)  # off, or override with scale 0: the hires pass is not guided
    host.forge.end_job(p)
