"""ASAG with sd-webui-controlnet on A1111: the perturbed pass carries the control (stand-in of
ControlNet's UNet hook in tests/hosts/controlnet_standin, mirroring 56cec5b2)."""
import os
import sys

import numpy as np
import pytest
import torch

from asag.hosts import a1111, controlnet
from asag.layers import resolve_layers, self_attention_modules
from asag.reuse import WRAPPER_ATTR, blocks_before
from asag.sinkhorn import adversarial_sinkhorn_attention_heads
from tests.conftest import ROOT
from tests.hosts.a1111_harness import WebUI
from tests.hosts.block_counter import BlockCounter

CN_STANDIN = os.path.join(ROOT, "tests", "hosts", "controlnet_standin")
SCALE = 3.0
MAX_UNITS = 2


@pytest.fixture(scope="module")
def host():
    sys.path.insert(0, CN_STANDIN)
    import hook
    import internal_controlnet.external_code as external_code

    webui = WebUI()
    webui.hook_module, webui.external_code = hook, external_code
    webui.load_extension()
    yield webui
    webui.close()
    sys.path.remove(CN_STANDIN)
    for name in [m for m in sys.modules if m in ("hook", "internal_controlnet") or m.startswith("internal_controlnet.")]:
        del sys.modules[name]


class ControlNetScript:
    """Stands for sd-webui-controlnet's AlwaysOn script: process() marks the prompt contexts and hooks
    the UNet (ControlNet wraps p.sample and hooks in process), postprocess() restores."""

    def __init__(self, host):
        self.host, self.hook = host, None

    def title(self):
        return "ControlNet"

    def process(self, p, *units):
        enabled = [unit for unit in units if unit.enabled]
        if not enabled:
            return
        mark = self.host.hook_module.mark
        for parts in p.cond.batch:
            for part in parts:
                part.schedules = [s._replace(cond=mark(s.cond, True)) for s in part.schedules]
        p.uncond = [[s._replace(cond=mark(s.cond, False)) for s in schedules] for schedules in p.uncond]
        hint = torch.randn((1, 4, 16, 16), generator=torch.Generator().manual_seed(11))
        self.hook = self.host.hook_module.UnetHook(self.host.shared.sd_model.model.diffusion_model, enabled, hint)
        self.hook.hook()

    def postprocess(self, p, processed, *units):
        if self.hook is not None:
            self.hook.restore()


def units(host, *modules):
    unit = host.external_code.ControlNetUnit
    listed = [unit(enabled=True, module=m, model=f"control_{m}") for m in modules]
    return listed + [unit()] * (MAX_UNITS - len(listed))


def generate(host, asag_args, modules, **settings):
    script = ControlNetScript(host)
    processed, p = host.generate(asag_args, before=[(script, units(host, *modules))] if modules else [], **settings)
    return processed, p, script.hook


ONE_STEP = dict(batch_size=2, steps=1, sampler_name="Euler")


def test_plain_unit_perturbed_pass_gets_the_control_residuals(host):
    base, _, base_hook = generate(host, [False], ["canny"], **ONE_STEP)
    guided, _, hook = generate(host, [True, SCALE], ["canny"], **ONE_STEP)
    main, extra = hook.calls
    assert main == (4, True, [1.0, 1.0, 0.0, 0.0], True)  # cond + uncond rows, told apart by the marker
    assert extra == (2, True, [1.0, 1.0], True)  # the extra pass: cond rows, still marked, with control

    # Direct computation through ControlNet's hooked forward: host result + w * (cond - perturbed).
    import k_diffusion.external

    model = host.shared.sd_model
    unet = model.model.diffusion_model
    denoiser = k_diffusion.external.CompVisDenoiser(model, quantize=True)
    sigma = denoiser.get_sigmas(1)[0]
    x = torch.randn((2, 4, 16, 16), generator=torch.Generator().manual_seed(0)) * sigma
    cond, _ = host.conds(2)
    marked = torch.stack([host.hook_module.mark(parts[0].schedules[0].cond, True) for parts in cond.batch])
    condition = {"c_crossattn": [marked], "c_concat": [x.new_zeros(2, 5, 1, 1)]}
    attn1 = unet.middle_block[1].transformer_blocks[0].attn1
    check = host.hook_module.UnetHook(unet, units(host, "canny")[:1], hook.hint)
    check.control.load_state_dict(hook.control.state_dict())
    check.hook()
    try:
        with torch.no_grad():
            plain = denoiser(x, sigma.expand(2), cond=condition)
            attn1.forward = lambda h, context=None, **_: attn1.to_out(adversarial_sinkhorn_attention_heads(
                attn1.to_q(h), attn1.to_k(h), attn1.to_v(h), attn1.heads, iterations=2, scale=attn1.scale))
            perturbed = denoiser(x, sigma.expand(2), cond=condition)
    finally:
        attn1.__dict__.pop("forward", None)
        check.restore()
    torch.testing.assert_close(guided.latents, base.latents + SCALE * (plain - perturbed), atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize("module", ["ip-adapter_clip_sd15", "reference_only"])
def test_stateful_units_switch_the_extra_pass_to_the_full_batch(host, module):
    settings = dict(batch_size=2, steps=3, sampler_name="Euler")
    guided, p, hook = generate(host, [True, SCALE], [module, "canny"], **settings)
    assert {rows for rows, *_ in hook.calls} == {4}  # every UNet call had the main pass's layout
    assert len(hook.calls) == 6  # 3 main + 3 extra passes: none failed
    base, _, _ = generate(host, [False], [module, "canny"], **settings)
    assert (guided.latents - base.latents).abs().max() > 1e-3
    assert "ASAG note" not in guided.infotext


def test_without_the_full_batch_switch_a_stateful_unit_would_break(host, monkeypatch):
    # What the automatic choice prevents: a cond-only call after a full first call.
    monkeypatch.setattr(controlnet, "needs_full_batch", lambda p: False)
    failures = []
    monkeypatch.setattr(a1111, "_perturbed_pass", _recording_failures(a1111._perturbed_pass, failures))
    guided, _, hook = generate(host, [True, SCALE], ["ip-adapter_clip_sd15"], batch_size=2, steps=2, sampler_name="Euler")
    assert failures and "invalid for input of size" in str(failures[0])


def _recording_failures(function, failures):
    def wrapper(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except RuntimeError as err:
            failures.append(err)
            raise
    return wrapper


def test_full_batch_option_forces_the_mode_for_plain_units(host):
    _, _, hook = generate(host, [{"enabled": True, "scale": SCALE, "full_batch": True}], ["canny"], **ONE_STEP)
    assert [rows for rows, *_ in hook.calls] == [4, 4]


@pytest.mark.parametrize("modules", [["canny"], ["reference_only"], ["ip-adapter_clip_sd15", "depth"]])
def test_asag_off_leaves_the_controlnet_result_unchanged(host, modules):
    settings = dict(batch_size=2, steps=3, sampler_name="Euler a")
    plain, _ = host.generate(None, before=[(ControlNetScript(host), units(host, *modules))], **settings)
    off, _, _ = generate(host, [False, SCALE], modules, **settings)
    assert torch.equal(plain.latents, off.latents)
    assert all(np.array_equal(a, b) for a, b in zip(plain.images, off.images))


@pytest.mark.parametrize("unit_fields,stateful", [
    (dict(module="ip-adapter_face_id_plus", model="ip-adapter-faceid-plusv2_sd15"), True),
    (dict(module="InsightFace (InstantID)", model="ip-adapter_instant_id_sdxl"), True),
    (dict(module="ip-adapter_pulid", model="ip-adapter_pulid_sdxl_fp16"), True),
    (dict(module="inpaint_only+lama", model="control_v11p_sd15_inpaint"), True),
    (dict(module="tile_colorfix+sharp", model="control_v11f1e_sd15_tile"), True),
    (dict(module="reference_adain+attn", model="None"), True),
    (dict(module="canny", model="control_v11p_sd15_canny"), False),
    (dict(module="t2ia_color_grid", model="t2iadapter_color_sd14v1"), False),
    (dict(module="none", model="controllllite_v01032064e_sdxl_canny"), False),
])
def test_unit_classification(host, unit_fields, stateful):
    unit = host.external_code.ControlNetUnit(enabled=True, **unit_fields)
    assert (controlnet.stateful_reason(unit) is not None) is stateful
    multi = host.external_code.ControlNetUnit(enabled=True, module="canny", input_mode=host.external_code.InputMode.MERGE)
    assert controlnet.stateful_reason(multi) is not None


@pytest.mark.parametrize("spec", ["middle", "u6-8", "all"])
@pytest.mark.parametrize("modules", [["canny"], ["reference_only"], ["ip-adapter_clip_sd15", "depth"]])
def test_reuse_keeps_the_control_and_skips_exactly_the_reused_blocks(host, modules, spec, caplog):
    # sd-webui-controlnet's replaced UNet forward calls the blocks itself and adds its residuals
    # to their outputs: with reuse, the replayed outputs get them as the computed ones did.
    # reference_only replaces the transformer blocks' _forward (a feature bank, fresh noise): code
    # inside the blocks, so the extra pass runs in full, and the console says why.
    caplog.set_level("INFO", logger="asag")
    unet = host.shared.sd_model.model.diffusion_model
    settings = dict(batch_size=2, steps=2, sampler_name="Euler")
    base, _, _ = generate(host, [False], modules, **settings)
    results, computed = {}, {}
    for reuse in (False, True):
        host.shared.opts.asag_reuse_blocks = reuse
        counter = BlockCounter([unet])
        try:
            results[reuse] = generate(host, [{"enabled": True, "scale": SCALE, "layers": spec}], modules, **settings)
        finally:
            host.shared.opts.asag_reuse_blocks = True
            counter.close()
        computed[reuse] = counter.block_computations
    (off, _, hook_off), (on, _, hook_on) = results[False], results[True]
    assert (off.latents - base.latents).abs().max() > 1e-3 * base.latents.abs().max()
    assert (on.latents - off.latents).abs().max() <= 1e-4 * off.latents.abs().max()
    assert hook_on.calls == hook_off.calls  # the same UNet calls, each with its control
    assert all(had_control for *_, had_control in hook_on.calls) == (modules != ["reference_only"])
    reused = len(blocks_before(unet, resolve_layers(spec, self_attention_modules(unet))))
    if modules == ["reference_only"] and spec != "all":  # "all" replays input block 0 only: no transformer in it
        assert computed[False] == computed[True]
        assert "computed in full, without the main pass's blocks: another extension's code in input block" in caplog.text
    else:
        assert computed[False] - computed[True] == reused * settings["steps"]  # one extra-pass UNet call per step
    assert not any(hasattr(m.__dict__.get("forward"), WRAPPER_ATTR) for m in unet.modules())
