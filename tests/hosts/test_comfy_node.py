"""The ComfyUI node on SD1/SDXL-style UNets, driven through a stand-in of ComfyUI's sampling code
(tests/hosts/comfy_standin, faithful to ComfyUI a125cd84) over real tiny ldm UNets. Expected
results are computed by hand: the perturbed prediction through a pristine ldm copy of the same
weights whose selected attn1 modules attend through the float64 reference plan, or through
ComfyUI's own replace protocol with the reference plan put there by the test."""
import pytest
import torch
from ldm.modules.diffusionmodules.openaimodel import UNetModel as LdmUNetModel

from asag.layers import LayerAddress, resolve_layers, self_attention_modules
from asag.reuse import WRAPPER_ATTR, blocks_before
from tests.core.reference import reference_attention
from tests.hosts.block_counter import BlockCounter
from tests.hosts.comfy_env import (LATENT, apply_node, comfy_host, conditioning, ksampler, make_model,  # noqa: F401
                                   node_inputs, step_noise)
from tests.hosts.control_network import ControlNetwork
from tests.models import tiny_unet

SIGMA = 2.0
CFG = 5.0


def prompts():
    """Positive and negative CONDITIONING; the negative as long as two 77-token chunks would be."""
    return conditioning(1), conditioning(2, tokens=14)


def one_step(host, model, cfg=CFG, sigma=SIGMA, positive=None, negative=None):
    """One Euler step from ``sigma`` to 0 through KSampler's path: the step's denoised prediction
    at ``x = noise * sigma`` (the result of every post-CFG function)."""
    default_positive, default_negative = prompts()
    return ksampler(host, model, positive or default_positive, negative or default_negative, cfg, sigmas=torch.tensor([sigma, 0.0]))


def reference_attn1(iterations, strength=1.0):
    """ASAG's operator in ComfyUI's attn1 replace form, from the float64 reference."""
    def attn1(q, k, v, extra_options):
        split = lambda t: t.reshape(t.shape[0], t.shape[1], extra_options["n_heads"], -1).transpose(1, 2)  # noqa: E731
        out = reference_attention(split(q), split(k), split(v), iterations=iterations, strength=strength)
        return out.float().transpose(1, 2).reshape(q.shape[0], q.shape[1], -1)
    return attn1


def predict(model, sigma, context, attn1=None, keys=(), control=None, patches_replace=None):
    """A cond prediction through ComfyUI's model call with the test's own patches: ``attn1`` at
    ``keys``, ``patches_replace`` tables, ``control`` residuals (one cond row)."""
    x = step_noise() * sigma
    replace = {name: dict(table) for name, table in (patches_replace or {}).items()}
    if attn1 is not None:
        replace["attn1"] = {**replace.get("attn1", {}), **{key: attn1 for key in keys}}
    options = {"patches_replace": replace, "cond_or_uncond": [0]}
    with torch.no_grad():
        return model.model.apply_model(x, torch.tensor([sigma]), c_crossattn=context, control=control, transformer_options=options)


def ldm_prediction(unet, model_sampling, sigma, context, addresses=(), iterations=2):
    """The same prediction through a pristine ldm UNet (ldm's forward and attention), its attn1
    modules at ``addresses`` attending through the float64 reference plan."""
    x = step_noise() * sigma
    modules = self_attention_modules(unet)

    def reference_forward(module):
        def forward(h, context=None, mask=None):
            split = lambda t: t.reshape(t.shape[0], t.shape[1], module.heads, -1).transpose(1, 2)  # noqa: E731
            out = reference_attention(split(module.to_q(h)), split(module.to_k(h)), split(module.to_v(h)), iterations=iterations)
            return module.to_out(out.float().transpose(1, 2).reshape(h.shape[0], h.shape[1], -1))
        return forward

    for address in addresses:
        modules[address].forward = reference_forward(modules[address])
    sigmas = torch.tensor([sigma])
    depth = max(len(m.transformer_blocks) for m in unet.modules() if hasattr(m, "transformer_blocks"))
    with torch.no_grad():
        eps = LdmUNetModel.forward(unet, model_sampling.calculate_input(sigmas, x), model_sampling.timestep(sigmas).float(),
                                   context=[context] * depth)
    for address in addresses:
        del modules[address].forward
    return model_sampling.calculate_denoised(sigmas, eps, x)


def context_of(conditioning_):
    return conditioning_[0][0]


def sdxl_like(unet):
    """SDXL's shape at toy size: the transformer stacks deeper at the lower resolution and in the
    middle (2) than at the higher (1; SDXL has 2 and 10)."""
    for name, module in unet.named_modules():
        if hasattr(module, "transformer_blocks") and name.startswith(("input_blocks.4.", "input_blocks.5.", "output_blocks.3.",
                                                                      "output_blocks.4.", "output_blocks.5.")):
            del module.transformer_blocks[1]
    return unet


# ---- the stand-in itself ----------------------------------------------------------------------

@pytest.mark.parametrize("layout", ["sd1", "sdxl"])
def test_standin_unet_equals_ldm_and_routes_attn1_keys_as_comfyui(comfy_host, layout):
    model = make_model(comfy_host, layout)
    context = context_of(conditioning(1))
    pristine = tiny_unet(layout, seed=0)
    sampling = model.get_model_object("model_sampling")
    assert torch.allclose(predict(model, SIGMA, context), ldm_prediction(pristine, sampling, SIGMA, context), atol=1e-5)
    seen = []

    def recorder(q, k, v, extra_options):
        seen.append((extra_options["block"], extra_options["block_index"], extra_options["n_heads"], extra_options["cond_or_uncond"]))
        return reference_attn1(0, strength=-1.0)(q, k, v, extra_options)  # strength -1, no balancing: ordinary attention

    modules = self_attention_modules(model.get_model_object("diffusion_model"))
    last = max(modules)
    keys = [("middle", 0, 0), last.patch_key[:2]]  # the 3-tuple key, and the 2-tuple fallback
    routed = predict(model, SIGMA, context, recorder, keys)
    assert torch.allclose(routed, predict(model, SIGMA, context), atol=1e-4)
    middle = [(("middle", 0), 0, modules[LayerAddress("middle", 0, 0)].heads, [0])]
    tail = [(("output", last.block), index, modules[last].heads, [0]) for index in range(last.transformer + 1)]
    assert seen == middle + tail


def test_standin_wrap_attn_hands_every_attention_call_to_the_override(comfy_host):
    """What the transformer models' support will build on (ComfyUI's wrap_attn, attention.py:118-134)."""
    model = make_model(comfy_host)
    context = context_of(conditioning(1))
    calls = []

    def override(func, q, k, v, heads, *args, **kwargs):
        calls.append((q.shape[1], k.shape[1], heads, kwargs["transformer_options"]["block"]))
        return func(q, k, v, heads, *args, **kwargs)  # the backend itself: no second call of the override

    x = step_noise() * SIGMA
    options = {"optimized_attention_override": override, "cond_or_uncond": [0]}
    with torch.no_grad():
        overridden = model.model.apply_model(x, torch.tensor([SIGMA]), c_crossattn=context, transformer_options=options)
    layers = len(self_attention_modules(model.get_model_object("diffusion_model")))
    assert len(calls) == 2 * layers  # attn1 and attn2 of every transformer block, once each
    assert calls[0] == (LATENT * LATENT, LATENT * LATENT, 4, ("input", 1)) and calls[1][1] == context.shape[1]
    assert torch.equal(overridden, predict(model, SIGMA, context))


# ---- registration and inputs ------------------------------------------------------------------

def test_node_is_declared_from_params(comfy_host):
    node = comfy_host.node
    assert node.NODE_CLASS_MAPPINGS == {"ASAG": node.AsagNode}
    assert node.NODE_DISPLAY_NAME_MAPPINGS == {"ASAG": "Adversarial Sinkhorn Attention Guidance (ASAG)"}
    assert (node.AsagNode.CATEGORY, node.AsagNode.RETURN_TYPES) == ("model_patches/unet", ("MODEL",))
    declared = node.AsagNode.INPUT_TYPES()["required"]
    assert list(declared) == ["model", "scale", "iterations", "strength", "layers", "start_percent", "end_percent", "schedule", "rescale",
                              "dit_layers"]
    for spec in node.NODE_PARAMS:
        kind, options = declared[node.input_name(spec)]
        assert options["default"] == spec.default
        assert options["tooltip"] == (node.COMFYUI_WORDING[spec.name].tooltip if spec.name in node.COMFYUI_WORDING else spec.help)
        if spec.choices:
            assert kind == list(spec.choices)
        elif spec.kind in (int, float):
            assert (kind, options["min"], options["max"], options["step"]) == (
                {int: "INT", float: "FLOAT"}[spec.kind], spec.minimum, spec.maximum, spec.step)
    assert declared["layers"][0] == declared["dit_layers"][0] == "STRING"


# ---- the guidance -----------------------------------------------------------------------------

@pytest.mark.parametrize("layers, scale, iterations", [("middle", 2.0, 2), ("d1,u3", 1.5, 0)])
def test_a_step_is_cfg_plus_scale_times_cond_minus_perturbed(comfy_host, layers, scale, iterations):
    model = make_model(comfy_host)
    base = one_step(comfy_host, model)
    guided = one_step(comfy_host, apply_node(comfy_host, model, scale=scale, layers=layers, iterations=iterations))

    pristine = tiny_unet("sd1", seed=0)
    sampling = model.get_model_object("model_sampling")
    context = context_of(prompts()[0])
    cond = ldm_prediction(pristine, sampling, SIGMA, context)
    perturbed = ldm_prediction(pristine, sampling, SIGMA, context, resolve_layers(layers, self_attention_modules(pristine)), iterations)
    assert (perturbed - cond).abs().max() > 1e-3, "the perturbation must change the prediction"
    expected = base + scale * (cond - perturbed)
    assert torch.allclose(guided, expected, atol=2e-4), (guided - expected).abs().max()
    assert (guided - base).abs().max() > 1e-3


def test_sdxl_layout_keys_reach_the_layers_the_spec_names(comfy_host):
    model = make_model(comfy_host, "sdxl")
    sdxl_like(model.get_model_object("diffusion_model"))
    pristine = sdxl_like(tiny_unet("sdxl", seed=0))
    spec = "d2.1, m0.1, u2.1, u3"  # input blocks with attention: 4, 5, 7, 8; output: 0-5
    addresses = resolve_layers(spec, self_attention_modules(pristine))
    assert [a.patch_key for a in addresses] == [("input", 7, 1), ("middle", 0, 1), ("output", 2, 1), ("output", 3, 0)]

    base = one_step(comfy_host, model)
    guided = one_step(comfy_host, apply_node(comfy_host, model, scale=2.0, layers=spec))
    sampling = model.get_model_object("model_sampling")
    context = context_of(prompts()[0])
    expected = base + 2.0 * (ldm_prediction(pristine, sampling, SIGMA, context) - ldm_prediction(pristine, sampling, SIGMA, context, addresses))
    assert torch.allclose(guided, expected, atol=2e-4), (guided - expected).abs().max()
    with pytest.raises(ValueError, match=r"'layers'.*'d0\.1' selects no layer; this model has .*d0 = input_blocks\.4 \(1\)"):
        apply_node(comfy_host, model, layers="d0.1")


def test_cfg_1_gives_cond_plus_scale_times_cond_minus_perturbed_without_uncond(comfy_host, monkeypatch):
    model = make_model(comfy_host)
    calls = []
    real = comfy_host.samplers.calc_cond_batch

    def spy(model_, conds, x, timestep, model_options):
        calls.append(conds)
        return real(model_, conds, x, timestep, model_options)

    monkeypatch.setattr(comfy_host.samplers, "calc_cond_batch", spy)
    guided = one_step(comfy_host, apply_node(comfy_host, model, scale=3.0), cfg=1.0)
    assert [len(conds) for conds in calls] == [2, 1] and calls[0][1] is None, "CFG 1: no uncond rows; the extra pass on [cond]"

    pristine = tiny_unet("sd1", seed=0)
    sampling = model.get_model_object("model_sampling")
    context = context_of(prompts()[0])
    cond = ldm_prediction(pristine, sampling, SIGMA, context)
    perturbed = ldm_prediction(pristine, sampling, SIGMA, context, [LayerAddress("middle", 0, 0)])
    expected = cond + 3.0 * (cond - perturbed)
    assert torch.allclose(guided, expected, atol=2e-4), (guided - expected).abs().max()


def test_scale_0_is_the_image_without_the_node_and_any_other_scale_differs(comfy_host):
    model = make_model(comfy_host)
    positive, negative = prompts()
    plain = ksampler(comfy_host, model, positive, negative, CFG)
    off = apply_node(comfy_host, model, scale=0.0)
    assert off is model  # off means untouched: no clone, no function
    assert torch.equal(ksampler(comfy_host, off, positive, negative, CFG), plain)
    guided = ksampler(comfy_host, apply_node(comfy_host, model, scale=1.5), positive, negative, CFG)
    assert (guided - plain).abs().max() > 1e-3, "ASAG on must change the image"


def spy_on_extra_passes(host, monkeypatch):
    """The sigma of every extra pass (a calc_cond_batch call whose options carry ASAG's attn1)."""
    sigmas = []
    real = host.samplers.calc_cond_batch

    def spy(model_, conds, x, timestep, model_options):
        attn1 = model_options["transformer_options"].get("patches_replace", {}).get("attn1", {})
        if any(fn.__name__ == "asag_sinkhorn_attn1" for fn in attn1.values()):
            sigmas.append(float(timestep[0]))
        return real(model_, conds, x, timestep, model_options)

    monkeypatch.setattr(host.samplers, "calc_cond_batch", spy)
    return sigmas


def test_the_window_holds_outside_it_the_image_is_bit_identical(comfy_host, monkeypatch):
    model = make_model(comfy_host)
    positive, negative = prompts()
    plain = ksampler(comfy_host, model, positive, negative, CFG, steps=6)
    extra = spy_on_extra_passes(comfy_host, monkeypatch)

    # 6 simple-scheduler steps sit at about 0, 17, 33, 50, 67 and 83 percent of the timesteps
    outside = ksampler(comfy_host, apply_node(comfy_host, model, start_percent=0.9, end_percent=1.0), positive, negative, CFG, steps=6)
    assert extra == [] and torch.equal(outside, plain)

    sampling = model.get_model_object("model_sampling")
    schedule = comfy_host.samplers.simple_scheduler(sampling, 6)[:-1].tolist()
    inside = [s for s in schedule if sampling.percent_to_sigma(0.6) <= s <= sampling.percent_to_sigma(0.3)]
    assert 0 < len(inside) < len(schedule)
    windowed = ksampler(comfy_host, apply_node(comfy_host, model, start_percent=0.3, end_percent=0.6), positive, negative, CFG, steps=6)
    assert extra == pytest.approx(inside)
    assert (windowed - plain).abs().max() > 1e-3


@pytest.mark.parametrize("schedule, factor", [("linear", 0.75), ("cosine", 0.5 * (1 + 0.7071067811865476))])
def test_the_schedule_decays_over_the_window_in_percent(comfy_host, schedule, factor):
    model = make_model(comfy_host)
    sigma = model.get_model_object("model_sampling").percent_to_sigma(0.25)  # a quarter through the window [0, 1]
    base = one_step(comfy_host, model, sigma=sigma)
    constant = one_step(comfy_host, apply_node(comfy_host, model, scale=2.0), sigma=sigma)
    decayed = one_step(comfy_host, apply_node(comfy_host, model, scale=2.0, schedule=schedule), sigma=sigma)
    assert torch.allclose(decayed - base, factor * (constant - base), atol=1e-4)


def test_rescale_matches_the_cond_predictions_spread(comfy_host):
    model = make_model(comfy_host)
    plain = one_step(comfy_host, apply_node(comfy_host, model, scale=4.0))
    rescaled = one_step(comfy_host, apply_node(comfy_host, model, scale=4.0, rescale=0.7))
    cond = ldm_prediction(tiny_unet("sd1", seed=0), model.get_model_object("model_sampling"), SIGMA, context_of(prompts()[0]))
    expected = 0.7 * plain * (cond.std() / plain.std()) + 0.3 * plain  # Lin et al. eq. 15-16, per sample (one here)
    assert torch.allclose(rescaled, expected, atol=2e-4)
    assert (rescaled - plain).abs().max() > 1e-3


# ---- bad values -------------------------------------------------------------------------------

def test_bad_values_are_errors_naming_the_input(comfy_host):
    validate = comfy_host.node.AsagNode.VALIDATE_INPUTS
    assert validate(layers="middle", dit_layers="auto", start_percent=0.0, end_percent=1.0) is True
    assert validate(layers=None, dit_layers=None, start_percent=None, end_percent=None) is True  # linked inputs: checked on execution
    message = validate(layers="middle", dit_layers="auto", start_percent=0.7, end_percent=0.2)
    assert "'start_percent' and 'end_percent'" in message and "0.7" in message
    assert "'start_percent': got 1.5, expected a number from 0 to 1" in validate(layers="middle", dit_layers="auto", start_percent=1.5,
                                                                                   end_percent=1.0)
    assert "'layers'" in validate(layers=" ", dit_layers="auto", start_percent=0.0, end_percent=1.0)

    model = make_model(comfy_host)
    with pytest.raises(ValueError, match=r"ASAG parameter 'layers': 'u9' asks for a block this model lacks; this model has .*u0 = output_blocks\.0"):
        apply_node(comfy_host, model, layers="u9")
    with pytest.raises(ValueError, match=r"ASAG input 'scale': got 25, expected a number from 0 to 20"):
        apply_node(comfy_host, model, scale=25)
    with pytest.raises(ValueError, match=r"ASAG input 'schedule': got 'steep', expected one of 'constant', 'linear', 'cosine'"):
        apply_node(comfy_host, model, schedule="steep")


def test_comfyui_shows_bad_values_on_the_node_before_the_run(comfy_host):
    """ComfyUI's prompt check (execution.validate_inputs): its own range and list checks, and
    VALIDATE_INPUTS for the inputs it takes, each error naming the input."""
    comfy_host.nodes.NODE_CLASS_MAPPINGS["ASAG"] = comfy_host.node.AsagNode
    comfy_host.nodes.CHECKPOINT_FILES[:] = ["model.safetensors"]

    def errors(**inputs):
        prompt = {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "model.safetensors"}},
                  "2": {"class_type": "ASAG", "inputs": {"model": ["1", 0], **node_inputs(comfy_host, **inputs)}}}
        ok, found, _ = comfy_host.execution.validate_inputs(prompt, "2", {})
        return [error["details"] for error in found]

    assert errors() == []
    assert errors(scale=25) == ["scale"]
    assert errors(schedule="steep") == ["schedule: 'steep' not in ['constant', 'linear', 'cosine']"]
    window = errors(start_percent=0.7, end_percent=0.2)
    assert len(window) == 4 and all("'start_percent' and 'end_percent'" in details for details in window)  # one per input it takes


# ---- what stays untouched ---------------------------------------------------------------------

def test_the_input_model_and_the_next_run_without_the_node_are_unchanged(comfy_host):
    model = make_model(comfy_host)
    positive, negative = prompts()
    before = ksampler(comfy_host, model, positive, negative, CFG)
    options, wrappers = repr(model.model_options), repr(model.wrappers)
    guided = apply_node(comfy_host, model)
    assert guided is not model and guided.model is model.model
    ksampler(comfy_host, guided, positive, negative, CFG)
    assert (repr(model.model_options), repr(model.wrappers)) == (options, wrappers)
    assert torch.equal(ksampler(comfy_host, model, positive, negative, CFG), before)


def test_a_model_asag_cannot_guide_is_passed_through_with_a_console_line(comfy_host, caplog):
    caplog.set_level("INFO", logger="asag")
    model = make_model(comfy_host)

    class VideoUNet(comfy_host.openaimodel.UNetModel):  # SVD's class in ComfyUI is a UNetModel subclass
        pass

    model.model.diffusion_model.__class__ = VideoUNet
    assert apply_node(comfy_host, model) is model
    assert "not applied" in caplog.text and "the model is VideoUNet" in caplog.text


def test_each_run_gets_one_console_line(comfy_host, caplog):
    caplog.set_level("INFO", logger="asag")
    model = make_model(comfy_host)
    positive, negative = prompts()
    ksampler(comfy_host, apply_node(comfy_host, model, layers="middle, u0"), positive, negative, CFG, steps=3)
    lines = [line for line in caplog.text.splitlines() if "extra passes" in line]
    assert len(lines) == 1 and "3 extra passes in 3 steps" in lines[0] and "2 self-attention layers (middle, u0)" in lines[0], lines
    assert "blocks replayed" in lines[0] and "guidance RMS" in lines[0]


# ---- other patches in the extra pass ----------------------------------------------------------

def test_controlnet_on_the_cond_reaches_the_extra_pass(comfy_host, monkeypatch):
    model = make_model(comfy_host)
    hint = torch.randn(1, 4, LATENT, LATENT, generator=torch.Generator().manual_seed(7))
    control = comfy_host.controlnet.ControlNet(ControlNetwork(model.get_model_object("diffusion_model"))).set_cond_hint(hint, 0.8)
    positive, negative = prompts()
    positive = [[positive[0][0], {**positive[0][1], "control": control}]]  # ControlNetApplyAdvanced on the positive only
    extra = spy_on_extra_passes(comfy_host, monkeypatch)
    seen = []
    real_get_control = control.get_control

    def get_control(x_noisy, t, cond, batched_number, transformer_options):
        attn1 = transformer_options.get("patches_replace", {}).get("attn1", {})
        seen.append((batched_number, any(fn.__name__ == "asag_sinkhorn_attn1" for fn in attn1.values())))
        return real_get_control(x_noisy, t, cond, batched_number, transformer_options)

    control.get_control = get_control
    base = one_step(comfy_host, model, positive=positive, negative=negative)
    guided = one_step(comfy_host, apply_node(comfy_host, model, scale=2.0), positive=positive, negative=negative)
    assert len(extra) == 1 and (1, True) in seen, seen

    control.pre_run(model.model, model.get_model_object("model_sampling").percent_to_sigma)
    x, sigmas, context = step_noise() * SIGMA, torch.tensor([SIGMA]), context_of(positive)

    def residuals():
        return real_get_control(x, sigmas, {"c_crossattn": context}, 1, {})

    cond = predict(model, SIGMA, context, control=residuals())
    perturbed = predict(model, SIGMA, context, reference_attn1(2), [("middle", 0, 0)], control=residuals())
    assert (perturbed - predict(model, SIGMA, context, reference_attn1(2), [("middle", 0, 0)])).abs().max() > 1e-3
    expected = base + 2.0 * (cond - perturbed)
    assert torch.allclose(guided, expected, atol=2e-4), (guided - expected).abs().max()


def ip_adapter_attn2(image_embeds, weight=0.7):
    """IP-Adapter's attn2 replacement (cubiq/ComfyUI_IPAdapter_plus CrossAttentionPatch): the
    text attention plus the weighted attention over image tokens, whose embeddings each row takes
    by ``cond_or_uncond`` (the cond rows the image's, the uncond rows zeros)."""
    g = torch.Generator().manual_seed(11)
    projections = {}

    def attn2(q, k, v, extra_options):
        heads, inner = extra_options["n_heads"], q.shape[-1]
        if inner not in projections:
            projections[inner] = (torch.randn(image_embeds.shape[-1], inner, generator=g) * 0.3,
                                  torch.randn(image_embeds.shape[-1], inner, generator=g) * 0.3)
        to_k, to_v = projections[inner]
        rows = q.shape[0] // len(extra_options["cond_or_uncond"])
        embeds = torch.cat([image_embeds if kind == 0 else torch.zeros_like(image_embeds)
                            for kind in extra_options["cond_or_uncond"] for _ in range(rows)])
        split = lambda t: t.reshape(t.shape[0], t.shape[1], heads, -1).transpose(1, 2)  # noqa: E731
        attend = lambda kk, vv: torch.nn.functional.scaled_dot_product_attention(split(q), split(kk), split(vv))  # noqa: E731
        out = attend(k, v) + weight * attend(embeds @ to_k, embeds @ to_v)
        return out.transpose(1, 2).reshape(q.shape)
    return attn2


def test_an_attn2_patch_reaches_the_extra_pass(comfy_host):
    model = make_model(comfy_host)
    image_embeds = torch.randn(1, 4, 16, generator=torch.Generator().manual_seed(3))
    attn2 = ip_adapter_attn2(image_embeds)
    for address in self_attention_modules(model.get_model_object("diffusion_model")):
        model.set_model_attn2_replace(attn2, *address.patch_key)  # as IPAdapter's node does, on a clone
    base = one_step(comfy_host, model)
    guided = one_step(comfy_host, apply_node(comfy_host, model, scale=2.0))

    context = context_of(prompts()[0])
    ip = {"attn2": model.model_options["transformer_options"]["patches_replace"]["attn2"]}
    cond = predict(model, SIGMA, context, patches_replace=ip)
    perturbed = predict(model, SIGMA, context, reference_attn1(2), [("middle", 0, 0)], patches_replace=ip)
    assert (perturbed - predict(model, SIGMA, context, reference_attn1(2), [("middle", 0, 0)])).abs().max() > 1e-3
    expected = base + 2.0 * (cond - perturbed)
    assert torch.allclose(guided, expected, atol=2e-4), (guided - expected).abs().max()


@pytest.mark.parametrize("order", ["pag, asag", "asag, pag"])
def test_pag_chained_before_or_after_asag_runs_both(comfy_host, order):
    model = make_model(comfy_host)
    base = one_step(comfy_host, model)
    chained = model
    for name in order.split(", "):
        chained = comfy_host.nodes_pag.PerturbedAttentionGuidance.execute(chained, 3.0)[0] if name == "pag" else \
            apply_node(comfy_host, chained, scale=2.0)
    guided = one_step(comfy_host, chained)

    context = context_of(prompts()[0])
    cond = predict(model, SIGMA, context)
    pag = predict(model, SIGMA, context, lambda q, k, v, extra_options: v, [("middle", 0)])
    asag = predict(model, SIGMA, context, reference_attn1(2), [("middle", 0, 0)])
    expected = base + 3.0 * (cond - pag) + 2.0 * (cond - asag)
    assert torch.allclose(guided, expected, atol=3e-4), (guided - expected).abs().max()


def test_a_layer_with_a_single_token_is_skipped_and_said_once_per_run(comfy_host, caplog, monkeypatch):
    caplog.set_level("INFO", logger="asag")
    model = make_model(comfy_host)
    monkeypatch.setattr("tests.hosts.comfy_env.LATENT", 4)  # a 4 x 4 latent: the middle block at 1 x 1
    extra = spy_on_extra_passes(comfy_host, monkeypatch)
    positive, negative = prompts()
    plain = ksampler(comfy_host, model, positive, negative, CFG, steps=3)
    guided = ksampler(comfy_host, apply_node(comfy_host, model), positive, negative, CFG, steps=3)
    assert extra == [] and torch.equal(guided, plain)
    assert caplog.text.count("no effect: every selected layer (middle) has a single token") == 1


# ---- reuse of the main pass -------------------------------------------------------------------

def count_reuse(host, model, positive, negative, cfg, reuse, steps=3, **inputs):
    """The sampled latent with ASAG's node (``reuse`` on or off) and how many UNet blocks computed."""
    params = host.node.node_params(node_inputs(host, **inputs))
    unet = model.get_model_object("diffusion_model")
    counter = BlockCounter([unet])
    try:
        latent = ksampler(host, host.comfyui.patch(model, params, reuse=reuse), positive, negative, cfg, steps=steps)
    finally:
        counter.close()
    assert not hasattr(vars(host.openaimodel).get("forward_timestep_embed"), WRAPPER_ATTR)
    assert not any(hasattr(vars(m).get("forward"), WRAPPER_ATTR) for m in unet.modules())
    return latent, counter.block_computations


@pytest.mark.parametrize("layers, cfg", [("middle", CFG), ("u1", CFG), ("d1, u2", 1.0)])
def test_reuse_gives_the_same_image_with_exactly_the_blocks_before_the_first_perturbed_replayed(comfy_host, caplog, layers, cfg):
    """The negative prompt twice as long as the positive one (ComfyUI repeats the shorter context
    to batch them: the extra pass is given the cond's as the main pass ran it) and a ControlNet on
    the positive prompt (its residuals are added between the blocks, in both passes)."""
    caplog.set_level("INFO", logger="asag")
    model = make_model(comfy_host)
    hint = torch.randn(1, 4, LATENT, LATENT, generator=torch.Generator().manual_seed(7))
    control = comfy_host.controlnet.ControlNet(ControlNetwork(model.get_model_object("diffusion_model"))).set_cond_hint(hint, 0.8)
    positive, negative = prompts()
    positive = [[positive[0][0], {**positive[0][1], "control": control}]]
    on, computed_on = count_reuse(comfy_host, model, positive, negative, cfg, True, layers=layers, scale=2.0)
    off, computed_off = count_reuse(comfy_host, model, positive, negative, cfg, False, layers=layers, scale=2.0)
    unet = model.get_model_object("diffusion_model")
    replayed = len(blocks_before(unet, resolve_layers(layers, self_attention_modules(unet))))
    assert replayed > 0 and computed_off - computed_on == replayed * 3
    torch.testing.assert_close(on, off, rtol=0, atol=1e-5 * off.abs().max().item())
    total = len(comfy_host.comfyui.layers.unet_blocks(unet))
    assert f"{replayed} of {total} blocks replayed from the main pass in 3 of 3 extra passes" in caplog.text


def test_a_patch_inside_the_blocks_makes_the_extra_pass_run_in_full_said_once_per_run(comfy_host, caplog):
    caplog.set_level("INFO", logger="asag")
    model = make_model(comfy_host)
    model.set_model_attn1_patch(lambda n, context, value, extra_options: (n, context, value))  # another node's, inside every block
    positive, negative = prompts()
    off, computed_off = count_reuse(comfy_host, model, positive, negative, CFG, False, steps=3, scale=2.0)
    on, computed_on = count_reuse(comfy_host, model, positive, negative, CFG, True, steps=3, scale=2.0)
    assert computed_on == computed_off
    torch.testing.assert_close(on, off, rtol=0, atol=1e-5 * off.abs().max().item())  # the cond's text repeated as the main pass ran it
    assert caplog.text.count("computed in full, without the main pass's blocks: attn1_patch runs inside the blocks") == 1
    total = len(comfy_host.comfyui.layers.unet_blocks(model.get_model_object("diffusion_model")))
    assert caplog.text.count(f"0 of {total} blocks replayed from the main pass") == 2


def test_layers_auto_is_the_middle_block(comfy_host):
    model = make_model(comfy_host)
    assert torch.equal(one_step(comfy_host, apply_node(comfy_host, model, layers="auto")), one_step(comfy_host, apply_node(comfy_host, model)))


def test_a_misspelt_layer_or_block_list_shows_on_the_node_before_the_run(comfy_host):
    comfy_host.nodes.NODE_CLASS_MAPPINGS["ASAG"] = comfy_host.node.AsagNode
    comfy_host.nodes.CHECKPOINT_FILES[:] = ["model.safetensors"]

    def errors(**inputs):
        prompt = {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "model.safetensors"}},
                  "2": {"class_type": "ASAG", "inputs": {"model": ["1", 0], **node_inputs(comfy_host, **inputs)}}}
        return [error["details"] for error in comfy_host.execution.validate_inputs(prompt, "2", {})[1]]

    assert errors(layers="auto, u0-2", dit_layers="double 7-9, single 20") == []
    found = errors(layers="midle")
    assert found and all("'layers': cannot read 'midle'" in details for details in found)
    found = errors(dit_layers="dubble 7-9")
    assert found and all("'dit_layers': cannot read 'dubble 7-9'" in details and "double, single, blocks, refiner, layers" in details
                         for details in found)
