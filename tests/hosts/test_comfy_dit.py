"""The ComfyUI node on transformer models: tiny random-weight models of ComfyUI's own code for Flux
(Flux.2 Klein is the same class), Chroma, SD3 / SD3.5 (MMDiT-X blocks included), Qwen-Image,
Lumina 2 and Z-Image (stand-ins in tests/hosts/comfy_standin/comfy/ldm, as ComfyUI a125cd84 has
them and, with NAMES_BLOCKS, as newer ComfyUI names its blocks), sampled through the stand-in of
ComfyUI's sampling code. Expected results by hand: the perturbed prediction is the model's own
call with an attention override of the test's, which knows the blocks by the order of the calls
and computes the float64 reference (``joint_by_hand``) at the selected ones."""
import importlib
from types import SimpleNamespace

import pytest
import torch

from asag.reuse import WRAPPER_ATTR
from tests.hosts.block_counter import BlockCounter
from tests.hosts.comfy_env import DIT_LATENT, DIT_MODELS, apply_node, comfy_host, dit_conditioning, ksampler, make_dit_model  # noqa: F401
from tests.hosts.test_forge_dit import joint_by_hand

SIGMA = 0.7
ITERATIONS = 2
# Each family's attention calls in one model call, in order, as (kind, index[, "image"]): a
# second call of an SD3.5 Medium (MMDiT-X) block attends over the image alone; a NextDiT's
# caption refiners ("context") attend over the text alone.
CALLS = {
    "flux": [("double", i) for i in range(3)] + [("single", i) for i in range(4)],
    "sd3": [call for i in range(4) for call in ([("double", i), ("double", i, "image")] if i < 2 else [("double", i)])],
    "qwen": [("blocks", i) for i in range(4)],
    "lumina": [("context", 0), ("context", 1), ("refiner", 0), ("refiner", 1)] + [("layers", i) for i in range(4)],
}
CALLS.update(chroma=CALLS["flux"], zimage=CALLS["lumina"])
# Two blocks per family, of different kinds where it has them, the first after others (reuse).
TWO_BLOCKS = {"flux": "double 1, single 2", "chroma": "double 1, single 2", "sd3": "double 0, double 2", "qwen": "blocks 1, blocks 3",
              "lumina": "refiner 1, layers 2", "zimage": "refiner 1, layers 2"}
IMAGE_ONLY = {"refiner"}
# The module of each family's stand-in, whose NAMES_BLOCKS gives newer ComfyUI's block names.
MODEL_MODULES = {family: module for family, (module, *_) in DIT_MODELS.items()}
CASES = [("flux", False), ("chroma", False), ("sd3", False), ("qwen", False), ("lumina", False),
         ("flux", True), ("qwen", True), ("lumina", True), ("zimage", True)]


def names_blocks(family, on=True):
    importlib.import_module(MODEL_MODULES[family]).NAMES_BLOCKS = on  # undone: the fixture drops the stand-in modules


def model_conds(model, conditioning):
    """What the model's extra_conds make of a CONDITIONING, as the model call receives it."""
    context, extra = conditioning[0]
    conds = model.model.extra_conds(cross_attn=context, **extra)
    return {name: cond.process_cond(batch_size=1).cond for name, cond in conds.items()}


def text_tokens(family, model, context):
    multiple = getattr(model.get_model_object("diffusion_model"), "pad_tokens_multiple", None)
    return -(-context.shape[1] // multiple) * multiple if multiple else context.shape[1]


def predict(family, model, conditioning, blocks=(), override=None, options=None, flipped=()):
    """The cond prediction at ``SIGMA`` through ComfyUI's model call; ``blocks``: the addresses whose
    attention is ``joint_by_hand`` (the image first in a ``flipped`` block), known by call order;
    ``override``: another attention override to pass the other calls through."""
    x = torch.randn(1, 4, DIT_LATENT, DIT_LATENT, generator=torch.Generator().manual_seed(0)) * SIGMA
    conds = model_conds(model, conditioning)
    text = text_tokens(family, model, conds["c_crossattn"])
    calls = []

    def by_hand(func, *args, **kwargs):
        call = CALLS[family][len(calls) % len(CALLS[family])]
        calls.append(call)
        if call[:2] not in blocks:
            return override(func, *args, **kwargs) if override else func(*args, **kwargs)
        q, k, v = args[:3]
        heads = args[3] if len(args) > 3 else kwargs["heads"]
        if not kwargs.get("skip_reshape"):
            q, k, v = (t.reshape(t.shape[0], t.shape[1], heads, -1).transpose(1, 2) for t in (q, k, v))
        image_only = len(call) == 3 or call[0] in IMAGE_ONLY
        if call[:2] in flipped:  # image first: the same attention with the tokens put text first
            n_img = q.shape[2] - text
            order = torch.cat([torch.arange(n_img, q.shape[2]), torch.arange(n_img)])
            out = joint_by_hand(*(t[:, :, order] for t in (q, k, v)), text, ITERATIONS)[:, :, torch.argsort(order)]
        else:
            out = joint_by_hand(q, k, v, 0 if image_only else text, ITERATIONS)
        return out.to(q.dtype).transpose(1, 2).reshape(q.shape[0], q.shape[2], -1)

    options = {**(options or {}), "optimized_attention_override": by_hand, "cond_or_uncond": [0]}
    with torch.no_grad():
        return model.model.apply_model(x, torch.tensor([SIGMA]), transformer_options=options, **conds)


def sample(model, cfg, positive=None, negative=None, sigmas=None):
    """KSampler's run (4 steps, or ``sigmas``) on the tiny transformers' latent; the negative
    prompt longer than the positive one."""
    samplers = importlib.import_module("comfy.samplers")
    return ksampler(SimpleNamespace(samplers=samplers), model, positive or dit_conditioning(1), negative or dit_conditioning(2, tokens=7),
                    cfg, sigmas=sigmas, latent=DIT_LATENT)


def one_step(model, cfg=1.0):
    """One Euler step from SIGMA to 0 through KSampler's path: the step's denoised prediction at
    ``x = noise * SIGMA`` (flow matching: x = sigma * noise + (1 - sigma) * 0)."""
    return sample(model, cfg, sigmas=torch.tensor([SIGMA, 0.0]))


def addresses(spec):
    return {(kind, int(index)) for kind, index in (item.split() for item in spec.split(", "))}


# ---- the guidance -----------------------------------------------------------------------------

@pytest.mark.parametrize("family, named", CASES, ids=[f"{f}{'-named' if n else ''}" for f, n in CASES])
def test_a_step_at_cfg_1_is_cond_plus_scale_times_cond_minus_perturbed(comfy_host, family, named):
    if named:
        names_blocks(family)
    model = make_dit_model(comfy_host, family)
    base = one_step(model)
    guided = one_step(apply_node(comfy_host, model, scale=2.0, dit_layers=TWO_BLOCKS[family]))
    cond = predict(family, model, dit_conditioning(1))
    perturbed = predict(family, model, dit_conditioning(1), addresses(TWO_BLOCKS[family]))
    assert (perturbed - cond).abs().max() > 1e-3, "the perturbation must change the prediction"
    assert torch.allclose(base, cond, atol=1e-5)
    expected = cond + 2.0 * (cond - perturbed)
    assert torch.allclose(guided, expected, atol=2e-4), (guided - expected).abs().max()


def test_a_double_block_with_the_image_first_is_read_the_other_way_round(comfy_host):
    """ComfyUI's DoubleStreamBlock attends over cat(img, txt) where flipped_img_txt is set."""
    model = make_dit_model(comfy_host, "flux")
    model.get_model_object("diffusion_model").double_blocks[1].flipped_img_txt = True
    guided = one_step(apply_node(comfy_host, model, scale=2.0, dit_layers="double 1"))
    cond = predict("flux", model, dit_conditioning(1))
    perturbed = predict("flux", model, dit_conditioning(1), {("double", 1)}, flipped={("double", 1)})
    text_first = predict("flux", model, dit_conditioning(1), {("double", 1)})
    assert (perturbed - text_first).abs().max() > 1e-3
    expected = cond + 2.0 * (cond - perturbed)
    assert torch.allclose(guided, expected, atol=2e-4), (guided - expected).abs().max()


def test_above_cfg_1_with_a_longer_negative_prompt(comfy_host):
    model = make_dit_model(comfy_host, "sd3")
    base = one_step(model, cfg=4.0)
    guided = one_step(apply_node(comfy_host, model, scale=1.5, dit_layers="double 2-3"), cfg=4.0)
    cond = predict("sd3", model, dit_conditioning(1))
    perturbed = predict("sd3", model, dit_conditioning(1), {("double", 2), ("double", 3)})
    expected = base + 1.5 * (cond - perturbed)
    assert torch.allclose(guided, expected, atol=2e-4), (guided - expected).abs().max()


def test_scale_0_is_the_model_itself_and_any_other_scale_differs(comfy_host):
    model = make_dit_model(comfy_host, "qwen")
    plain = sample(model, 3.0)
    assert apply_node(comfy_host, model, scale=0.0) is model
    assert (sample(apply_node(comfy_host, model, scale=2.0), 3.0) - plain).abs().max() > 1e-3


# ---- reuse ------------------------------------------------------------------------------------

@pytest.mark.parametrize("family, blocks, replayed", [
    ("flux", "double 2, single 1", 2),  # the double blocks before the first perturbed one
    ("chroma", "single 0", 3),
    ("sd3", "double 2", 2),  # MMDiT-X blocks among the replayed
    ("qwen", "blocks 3", 3),
    ("lumina", "layers 1", 5),  # the caption and image refiners run first
])
def test_reuse_gives_the_same_image_with_exactly_the_blocks_before_the_first_perturbed_replayed(comfy_host, family, blocks, replayed, caplog):
    caplog.set_level("INFO", logger="asag")
    comfyui = comfy_host.comfyui
    model = make_dit_model(comfy_host, family)
    params = comfy_host.node.node_params({"scale": 2.0, "dit_layers": blocks})
    diffusion_model = model.get_model_object("diffusion_model")
    family_data = comfyui.families.comfyui_family_for(diffusion_model)
    results = {}
    for reuse in (True, False):  # the negative prompt longer: cond and uncond run as separate calls (CONDRegular)
        counter = BlockCounter([diffusion_model], blocks=family_data.blocks, first_layer=lambda block: block)
        try:
            results[reuse] = (sample(comfyui.patch(model, params, reuse=reuse), 3.0), counter.block_computations)
        finally:
            counter.close()
    (on, computed_on), (off, computed_off) = results[True], results[False]
    steps = 4
    assert computed_off - computed_on == replayed * steps
    torch.testing.assert_close(on, off, rtol=0, atol=1e-5 * off.abs().max().item())
    total = len(family_data.blocks(diffusion_model))
    assert f"{replayed} of {total} blocks replayed from the main pass in {steps} of {steps} extra passes" in caplog.text
    assert not any(hasattr(vars(m).get("forward"), WRAPPER_ATTR) for m in diffusion_model.modules())


def test_another_nodes_block_replacement_before_the_perturbed_block_makes_the_extra_pass_run_in_full(comfy_host, caplog):
    caplog.set_level("INFO", logger="asag")
    model = make_dit_model(comfy_host, "flux")
    model.set_model_patch_replace(lambda args, extra: extra["original_block"](args), "dit", "double_block", 0)
    one_step(apply_node(comfy_host, model, scale=2.0, dit_layers="single 0"))
    assert "computed in full, without the main pass's blocks: a dit replacement is set on double block 0" in caplog.text


# ---- chaining ---------------------------------------------------------------------------------

def test_another_nodes_attention_override_still_gets_every_other_call(comfy_host):
    model = make_dit_model(comfy_host, "sd3")
    seen = []

    def theirs(func, *args, **kwargs):  # another node's override, set on the model (a SageAttention switch, say)
        seen.append(args[0].shape)
        return func(*args, **kwargs)

    model.model_options["transformer_options"]["optimized_attention_override"] = theirs
    guided = one_step(apply_node(comfy_host, model, scale=2.0, dit_layers="double 0"))
    calls = len(CALLS["sd3"])
    assert len(seen) == calls + calls - 2  # the main pass's calls, then the extra pass's but block 0's two
    cond = predict("sd3", model, dit_conditioning(1))
    perturbed = predict("sd3", model, dit_conditioning(1), {("double", 0)}, override=theirs)
    expected = cond + 2.0 * (cond - perturbed)
    assert torch.allclose(guided, expected, atol=2e-4), (guided - expected).abs().max()


def test_pag_and_skip_layer_guidance_chained_with_asag_on_a_transformer_run_all(comfy_host):
    model = make_dit_model(comfy_host, "flux")
    passed = []

    def passthrough(args, extra):  # another node's whole-block replacement on the block ASAG perturbs
        passed.append(args["img"].shape[0])
        return extra["original_block"](args)

    model.set_model_patch_replace(passthrough, "dit", "double_block", 1)
    chained = comfy_host.nodes_pag.PerturbedAttentionGuidance.execute(model, 3.0)[0]
    chained = comfy_host.nodes_slg.SkipLayerGuidanceDiT.execute(chained, 1.5, 0.0, 1.0, double_layers="2")[0]
    chained = apply_node(comfy_host, chained, scale=2.0, dit_layers="double 1")
    passed.clear()
    guided = one_step(chained)
    assert len(passed) == 4  # the main pass, PAG's, SLG's and ASAG's extra passes

    options = {"patches_replace": {"dit": {("double_block", 1): passthrough}}}
    cond = predict("flux", model, dit_conditioning(1), options=options)
    skipped = {"patches_replace": {"dit": {("double_block", 1): passthrough, ("double_block", 2): lambda args, extra: args}}}
    slg = predict("flux", model, dit_conditioning(1), options=skipped)
    asag = predict("flux", model, dit_conditioning(1), {("double", 1)}, options=options)
    expected = cond + 0.0 + 1.5 * (cond - slg) + 2.0 * (cond - asag)  # PAG's middle-block attn1 is not in a transformer
    assert torch.allclose(guided, expected, atol=3e-4), (guided - expected).abs().max()


# ---- what ASAG cannot guide, and what stays untouched -------------------------------------------

def test_a_comfyui_without_the_attention_override_says_so_and_leaves_the_model(comfy_host, caplog, monkeypatch):
    caplog.set_level("INFO", logger="asag")
    model = make_dit_model(comfy_host, "flux")
    monkeypatch.delattr(comfy_host.attention, "wrap_attn")
    assert apply_node(comfy_host, model, scale=2.0) is model
    assert caplog.text.count("too old for ASAG on transformer models (Flux)") == 1


def test_a_model_asag_has_no_family_for_says_so_once_naming_its_class(comfy_host, caplog):
    caplog.set_level("INFO", logger="asag")

    class WanModel(torch.nn.Module):  # a video model's class (comfy/ldm/wan/model.py)
        pass

    model = comfy_host.model_patcher.ModelPatcher(comfy_host.model_base.DiT(WanModel()), torch.device("cpu"), torch.device("cpu"))
    assert apply_node(comfy_host, model) is model
    assert caplog.text.count("not applied") == 1 and "the model is WanModel" in caplog.text


def test_the_input_model_and_the_next_run_are_unchanged(comfy_host):
    model = make_dit_model(comfy_host, "lumina")
    before = sample(model, 3.0)
    options, wrappers = repr(model.model_options), repr(model.wrappers)
    guided = apply_node(comfy_host, model, dit_layers="refiner 0, layers 1")  # a forward mark and reuse's forwards
    assert guided is not model and guided.model is model.model
    sample(guided, 3.0)
    assert (repr(model.model_options), repr(model.wrappers)) == (options, wrappers)
    assert not any(hasattr(vars(m).get("forward"), WRAPPER_ATTR) for m in model.model.modules())
    assert torch.equal(sample(model, 3.0), before)


def test_bad_blocks_name_the_input_and_what_the_model_has(comfy_host):
    model = make_dit_model(comfy_host, "flux")
    with pytest.raises(ValueError, match=r"'dit_layers': 'double 5' asks for a block this model lacks; this model has double 0-2, single 0-3"):
        apply_node(comfy_host, model, dit_layers="double 5")


def test_flux_2_klein_depths_get_auto_at_the_same_relative_depth(comfy_host, caplog):
    """ComfyUI loads Flux.2 (Klein: 5 double and 20 single blocks in the 4B) as the same class."""
    caplog.set_level("INFO", logger="asag")
    model = make_dit_model(comfy_host, "flux")
    flux = model.get_model_object("diffusion_model")
    flux.double_blocks.extend(type(flux.double_blocks[0])(32, 2, 2.0, True) for _ in range(2))
    flux.single_blocks.extend(type(flux.single_blocks[0])(32, 2, 2.0) for _ in range(16))
    guided = one_step(apply_node(comfy_host, model, scale=2.0))
    assert "auto chose double 2, single 3-4 on this Flux model (this model has double 0-4, single 0-19" in caplog.text
    assert "Sinkhorn attention at 3 Flux blocks (double 2, single 3-4)" in caplog.text
    assert (guided - one_step(model)).abs().max() > 1e-3


def test_a_failure_in_the_extra_pass_leaves_the_model_as_it_was(comfy_host):
    """An exception inside the extra pass (an interrupt, out of memory): every forward ASAG put on
    the model (the marks of blocks without a dit replacement, reuse's) is taken off again."""
    model = make_dit_model(comfy_host, "lumina")
    before = sample(model, 3.0)
    calls = []

    def failing(func, *args, **kwargs):  # another node's override, failing in the extra pass
        calls.append(1)
        if len(calls) > len(CALLS["lumina"]):
            raise RuntimeError("interrupted")
        return func(*args, **kwargs)

    guided = apply_node(comfy_host, model, dit_layers="refiner 0, layers 1")
    guided.model_options["transformer_options"]["optimized_attention_override"] = failing
    with pytest.raises(RuntimeError, match="interrupted"):
        one_step(guided)
    assert not any(hasattr(vars(m).get("forward"), WRAPPER_ATTR) for m in model.model.modules())
    assert torch.equal(sample(model, 3.0), before)


class FluxControl:
    """A Flux ControlNet as ComfyUI's sampling code meets it (comfy/controlnet.py: ``pre_run``, and
    ``get_control`` per model call that carries the cond, giving ``{"input": [...], "output": [...]}``
    residuals that Flux's forward_orig adds to the image tokens after each block): here one random
    linear map of the latent's patches per double block, broadcast to the call's rows."""

    def __init__(self, blocks=3, width=32):
        g = torch.Generator().manual_seed(9)
        self.maps = [torch.randn(16, width, generator=g) * 0.2 for _ in range(blocks)]
        self.calls = 0

    def pre_run(self, model, percent_to_timestep_function):
        pass

    def get_control(self, x_noisy, t, cond, batched_number, transformer_options):
        self.calls += 1
        patches = x_noisy.unfold(2, 2, 2).unfold(3, 2, 2).permute(0, 2, 3, 1, 4, 5).flatten(3).flatten(1, 2)
        return {"input": [patches @ m for m in self.maps], "middle": [], "output": []}


def test_reuse_with_a_controlnet_on_the_prompt_gives_the_same_image(comfy_host, caplog):
    """The residuals are added to the blocks' outputs in place, after each block: on the replayed
    outputs in the extra pass as on the computed ones."""
    caplog.set_level("INFO", logger="asag")
    comfyui = comfy_host.comfyui
    model = make_dit_model(comfy_host, "flux")
    control = FluxControl()
    positive = [[dit_conditioning(1)[0][0], {**dit_conditioning(1)[0][1], "control": control}]]
    params = comfy_host.node.node_params({"scale": 2.0, "dit_layers": "single 1"})
    plain = sample(model, 3.0, positive=positive)
    control.calls = 0
    on = sample(comfyui.patch(model, params, reuse=True), 3.0, positive=positive)
    assert control.calls == 2 * 4  # the main pass's cond call and the extra pass, every step
    assert "4 of 7 blocks replayed from the main pass in 4 of 4 extra passes" in caplog.text  # double 0-2, single 0
    off = sample(comfyui.patch(model, params, reuse=False), 3.0, positive=positive)
    torch.testing.assert_close(on, off, rtol=0, atol=1e-5 * off.abs().max().item())
    assert (sample(model, 3.0) - plain).abs().max() > 1e-3, "the control must act"
