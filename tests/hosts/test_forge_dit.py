"""ASAG on the transformer models of Forge Neo: Flux, Chroma, Lumina 2, Z-Image and Anima (small
random-weight models of the architecture of Neo's backend/nn/flux.py, chroma.py, lumina.py and
anima.py, stand-ins in tests/hosts/forge_neo_standin, checked against diffusers' FluxTransformer2DModel,
ZImageTransformer2DModel and, in test_anima_standin.py, CosmosTransformer3DModel). Through Neo's sampling function,
at CFG 1 (the distilled models) and above: the guided result by hand, scale 0 and the next plain
image bit-identical, the host's attention function and the model's forwards back after every
pass (also one that fails), the joint-attention reading at the host's call (text rows the
model's, the text length the context's), reuse of the main pass equal to none with exactly the
reused blocks skipped, block addressing and its errors, ``auto`` at the real models' depths and at
1 and 2 blocks per list, and the not-applied note for models ASAG has no family for."""
import importlib
import itertools

import pytest
import torch
from einops import rearrange

from asag.dit_layers import block_runs, resolve_blocks
from asag.hosts.families import FAMILIES as DIT_FAMILIES
from asag.hosts.infotext import AUTO_BLOCKS_KEY
from asag.hosts.settings import HostOptions
from asag.params import NOTE_KEY, AsagParams
from asag.reuse import WRAPPER_ATTR
from tests.core.reference import reference_plan
from tests.hosts.block_counter import BlockCounter
from tests.hosts.forge_dit_env import FLUX, NEXTDIT, ZIMAGE, dit_inputs, dit_model, dit_p, with_depth
from tests.hosts.forge_env import ScriptCallbacks, _host, denoise_step, euler, reset_forge_objects
from tests.hosts.test_forge_adapter import start

SIGMA = 0.7
FAMILIES = ["flux", "chroma", "lumina", "zimage", "anima", "qwen"]
# Two selected blocks per family, one of each kind that can be selected.
TWO_BLOCKS = {"flux": "double 2, single 3", "chroma": "double 2, single 3", "lumina": "refiner 1, layers 3", "zimage": "refiner 1, layers 3",
              "anima": "blocks 2, blocks 5", "qwen": "blocks 2, blocks 5"}
# The order of a NextDiT's attention calls in one model call (it does not name its blocks).
NEXTDIT_CALLS = [("context", 0), ("context", 1), ("refiner", 0), ("refiner", 1), *(("layers", i) for i in range(10))]
# Anima's: each block's self-attention, then its cross-attention.
ANIMA_CALLS = [(("blocks", i), part) for i in range(10) for part in ("self", "cross")]
ATTENTION_MODULES = {"flux": "backend.nn.flux", "chroma": "backend.nn.flux", "lumina": "backend.nn.lumina", "zimage": "backend.nn.lumina",
                     "anima": "backend.nn.anima", "qwen": "backend.nn.qwen"}
SIGMAS = torch.tensor([1.0, 0.75, 0.5, 0.25])


@pytest.fixture
def neo():
    yield from _host("neo")


def flux_module():
    return importlib.import_module("backend.nn.flux")


def attention_module(family):
    return importlib.import_module(ATTENTION_MODULES[family])


def step(host, family, cond_scale, *, options=HostOptions(), uncond_tokens=8, **fields):
    """One denoiser step of a fresh generation; returns (p, (denoised, cond_pred, uncond_pred))."""
    x, cond, uncond = dit_inputs(family, uncond_tokens=uncond_tokens)
    p = dit_p(host, family)
    callbacks = start(host, p, options=options, **fields) if fields else ScriptCallbacks()
    out = denoise_step(host, p, callbacks, x, SIGMA, cond, uncond, cond_scale)
    if fields:
        assert_nothing_left(p)
        host.forge.end_job(p)
    return p, out


def assert_nothing_left(p):
    model = p.sd_model.forge_objects.unet.model.diffusion_model
    assert not any(hasattr(vars(m).get("forward"), WRAPPER_ATTR) for m in model.modules())
    for family in FAMILIES:
        assert attention_module(family).attention_function is importlib.import_module("backend.attention").attention_function


def joint_by_hand(q, k, v, text, iterations, strength=1.0):
    """The chosen reading of ASAG on joint attention, in float64 from its formula: text rows are
    the model's softmax attention; an image row keeps the model's weights on the text and spreads
    its remaining share over the image by the reference plan among the image tokens."""
    q64, k64, v64 = q.double(), k.double(), v.double()
    weights = torch.softmax(q64 @ k64.transpose(-1, -2) * q.shape[-1] ** -0.5, dim=-1)
    out = weights @ v64
    image = slice(text, None)
    plan = reference_plan(q[:, :, image], k[:, :, image], iterations=iterations, strength=strength)
    share = weights[:, :, image, image].sum(-1, keepdim=True)
    out[:, :, image] = weights[:, :, image, :text] @ v64[:, :, :text] + share * (plan @ v64[:, :, image])
    return out


def perturbed_by_hand(p, family, x, cond, blocks, iterations):
    """The cond prediction with ``blocks`` attending by ``joint_by_hand``, run by the model itself
    (Neo's KModel), without ASAG's code: Flux names the block under way, a NextDiT's blocks and
    Anima's self- and cross-attentions are known by the order of the calls; the text is Z-Image's
    padded caption; Anima's self-attention holds the image alone."""
    module, kmodel = attention_module(family), p.sd_model.forge_objects.unet.model
    original, calls = module.attention_function, []
    context = cond if isinstance(cond, torch.Tensor) else cond["crossattn"]
    multiple = NEXTDIT[family].get("pad_tokens_multiple") if family in NEXTDIT else None
    text = -(-context.shape[1] // multiple) * multiple if multiple else context.shape[1]

    def by_hand(q, k, v, heads, *args, **kwargs):
        if family in NEXTDIT:
            block = NEXTDIT_CALLS[len(calls)]
        elif family == "anima":
            block, part = ANIMA_CALLS[len(calls)]
            block = block if part == "self" else None
        elif family == "qwen":
            block = ("blocks", len(calls))
        else:
            block = (kwargs["transformer_options"]["block_type"], kwargs["transformer_options"]["block_index"])
        calls.append(block)
        if block not in blocks:
            return original(q, k, v, heads, *args, **kwargs)
        if family == "qwen":  # Qwen-Image passes (batch, tokens, heads * dim)
            q, k, v = (t.unflatten(-1, (heads, -1)).transpose(1, 2) for t in (q, k, v))
        image_only = block[0] == "refiner" or family == "anima"
        out = joint_by_hand(q, k, v, 0 if image_only else text, iterations).to(q.dtype)
        return out.transpose(1, 2).reshape(q.shape[0], q.shape[2], -1)

    if isinstance(cond, torch.Tensor):
        conds = {"c_crossattn": cond}
    else:
        conds = {"c_crossattn": cond["crossattn"], "y": cond["vector"], **({"guidance": cond["guidance"]} if "guidance" in cond else {})}
    module.attention_function = by_hand
    try:
        with torch.no_grad():
            return kmodel.apply_model(x, torch.full((x.shape[0],), SIGMA), **conds)
    finally:
        module.attention_function = original


def to_diffusers(state: dict, hidden: int) -> dict:
    """A BFL-named Flux state dict under diffusers' names (as diffusers' single-file converter maps
    them, which itself only takes the full-size model): fused qkv split, final shift/scale swapped."""
    out = {}

    def put(theirs, ours, split=None, part=0):
        for kind in ("weight", "bias"):
            if f"{ours}.{kind}" in state:
                value = state[f"{ours}.{kind}"]
                out[f"{theirs}.{kind}"] = value if split is None else torch.split(value, split)[part]

    for a, b in (("time_text_embed.timestep_embedder", "time_in"), ("time_text_embed.text_embedder", "vector_in"),
                 ("time_text_embed.guidance_embedder", "guidance_in")):
        put(f"{a}.linear_1", f"{b}.in_layer"), put(f"{a}.linear_2", f"{b}.out_layer")
    put("context_embedder", "txt_in"), put("x_embedder", "img_in"), put("proj_out", "final_layer.linear")
    shift, scale = state["final_layer.adaLN_modulation.1.weight"].chunk(2), state["final_layer.adaLN_modulation.1.bias"].chunk(2)
    out["norm_out.linear.weight"], out["norm_out.linear.bias"] = torch.cat(shift[::-1]), torch.cat(scale[::-1])
    blocks = {int(name.split(".")[1]) for name in state if name.startswith("double_blocks.")}
    for i in blocks:
        ours, theirs = f"double_blocks.{i}", f"transformer_blocks.{i}"
        put(f"{theirs}.norm1.linear", f"{ours}.img_mod.lin"), put(f"{theirs}.norm1_context.linear", f"{ours}.txt_mod.lin")
        for part, (img, txt) in enumerate((("to_q", "add_q_proj"), ("to_k", "add_k_proj"), ("to_v", "add_v_proj"))):
            put(f"{theirs}.attn.{img}", f"{ours}.img_attn.qkv", hidden, part), put(f"{theirs}.attn.{txt}", f"{ours}.txt_attn.qkv", hidden, part)
        for norm, (img, txt) in (("query_norm", ("norm_q", "norm_added_q")), ("key_norm", ("norm_k", "norm_added_k"))):
            put(f"{theirs}.attn.{img}", f"{ours}.img_attn.norm.{norm}"), put(f"{theirs}.attn.{txt}", f"{ours}.txt_attn.norm.{norm}")
        put(f"{theirs}.attn.to_out.0", f"{ours}.img_attn.proj"), put(f"{theirs}.attn.to_add_out", f"{ours}.txt_attn.proj")
        put(f"{theirs}.ff.net.0.proj", f"{ours}.img_mlp.0"), put(f"{theirs}.ff.net.2", f"{ours}.img_mlp.2")
        put(f"{theirs}.ff_context.net.0.proj", f"{ours}.txt_mlp.0"), put(f"{theirs}.ff_context.net.2", f"{ours}.txt_mlp.2")
    singles = {int(name.split(".")[1]) for name in state if name.startswith("single_blocks.")}
    for i in singles:
        ours, theirs = f"single_blocks.{i}", f"single_transformer_blocks.{i}"
        mlp = state[f"{ours}.linear1.weight"].shape[0] - 3 * hidden
        for part, name in enumerate(("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")):
            put(f"{theirs}.{name}", f"{ours}.linear1", [hidden, hidden, hidden, mlp], part)
        put(f"{theirs}.norm.linear", f"{ours}.modulation.lin"), put(f"{theirs}.proj_out", f"{ours}.linear2")
        put(f"{theirs}.attn.norm_q", f"{ours}.norm.query_norm"), put(f"{theirs}.attn.norm_k", f"{ours}.norm.key_norm")
    return out


def test_the_flux_stand_in_computes_what_diffusers_flux_computes(neo):
    """The stand-in is the BFL architecture: its weights, under diffusers' names, give diffusers'
    FluxTransformer2DModel the same output."""
    from diffusers import FluxTransformer2DModel

    model = dit_model("flux")
    reference = FluxTransformer2DModel(in_channels=FLUX["in_channels"] * 4, num_layers=FLUX["depth"], num_single_layers=FLUX["depth_single_blocks"],
                                       attention_head_dim=FLUX["hidden_size"] // FLUX["num_heads"], num_attention_heads=FLUX["num_heads"],
                                       joint_attention_dim=FLUX["context_in_dim"], pooled_projection_dim=FLUX["vec_in_dim"], guidance_embeds=True,
                                       axes_dims_rope=tuple(FLUX["axes_dim"]))
    reference.load_state_dict(to_diffusers(model.state_dict(), FLUX["hidden_size"]), strict=True)
    x, cond, _ = dit_inputs("flux")
    t = torch.tensor([SIGMA])
    with torch.no_grad():
        ours = model(x, t, context=cond["crossattn"], y=cond["vector"], guidance=cond["guidance"])
        img, img_ids = model.process_img(x)
        theirs = reference(hidden_states=img, encoder_hidden_states=cond["crossattn"], pooled_projections=cond["vector"], timestep=t,
                           img_ids=img_ids[0], txt_ids=torch.zeros(cond["crossattn"].shape[1], 3), guidance=cond["guidance"]).sample
    theirs = rearrange(theirs, "b (h w) (c ph pw) -> b c (h ph) (w pw)", h=x.shape[2] // 2, ph=2, pw=2)
    assert ours.abs().max() > 0.1
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


def test_the_nextdit_stand_in_computes_what_diffusers_z_image_computes(neo):
    """The NextDiT stand-in with Z-Image's modulation, padding and rope (theta 256) is diffusers'
    ZImageTransformer2DModel: the same weights through diffusers' own single-file converter give
    the same output, negated (Neo's model negates; diffusers' pipeline does it outside). At Z-Image's
    own width of the timestep embedder (1024) and feed-forward ratio (8/3), one main layer."""
    from diffusers import ZImageTransformer2DModel
    from diffusers.loaders.single_file_utils import convert_z_image_transformer_checkpoint_to_diffusers

    config = dict(ZIMAGE, dim=1024, n_heads=8, axes_dims=[32, 48, 48], n_layers=1, multiple_of=1, ffn_dim_multiplier=8 / 3, rope_theta=256.0)
    torch.manual_seed(0)
    model = importlib.import_module("backend.nn.lumina").NextDiT(**config)
    reference = ZImageTransformer2DModel(in_channels=config["in_channels"], dim=1024, n_layers=1, n_refiner_layers=2, n_heads=8, n_kv_heads=8,
                                         cap_feat_dim=config["cap_feat_dim"], rope_theta=256.0, axes_dims=[32, 48, 48])
    reference.load_state_dict(convert_z_image_transformer_checkpoint_to_diffusers({k: v.clone() for k, v in model.state_dict().items()}))
    x, context, _ = dit_inputs("zimage")
    t = torch.tensor([SIGMA])
    with torch.no_grad():
        ours = model(x, t, context)
        theirs = torch.stack([out.squeeze(1) for out in reference([x[0].unsqueeze(1)], 1 - t, [context[0]]).sample])
    assert ours.abs().max() > 0.1
    torch.testing.assert_close(ours, -theirs, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_at_cfg_1_the_result_is_cond_plus_scale_times_cond_minus_perturbed(neo, family):
    """Distilled models run at CFG 1, where Neo skips the uncond rows: the extra pass still runs."""
    blocks = TWO_BLOCKS[family]
    p, (denoised, cond_pred, _) = step(neo, family, 1.0, scale=2.0, iterations=3, dit_layers=blocks)
    x, cond, _ = dit_inputs(family)
    selected = {(kind, int(index)) for kind, index in (item.split() for item in blocks.split(", "))}
    perturbed = perturbed_by_hand(dit_p(neo, family), family, x, cond, selected, iterations=3)
    assert (denoised - cond_pred).abs().max() > 1e-2 * cond_pred.abs().max()
    torch.testing.assert_close(denoised, cond_pred + 2.0 * (cond_pred - perturbed), rtol=0, atol=1e-4 * cond_pred.abs().max().item())
    assert p.extra_generation_params == {"ASAG scale": 2.0, "ASAG iterations": 3, "ASAG DiT blocks": blocks}


@pytest.mark.parametrize("family", FAMILIES)
def test_with_cfg_the_guidance_adds_to_the_cfg_result(neo, family):
    _, (plain, _, _) = step(neo, family, 3.5)
    _, (denoised, cond_pred, uncond_pred) = step(neo, family, 3.5, scale=2.0)  # auto: the family's default blocks
    cfg = uncond_pred + (cond_pred - uncond_pred) * 3.5
    torch.testing.assert_close(cfg, plain, rtol=0, atol=1e-5)
    assert (denoised - cfg).abs().max() > 1e-2 * cfg.abs().max()


@pytest.mark.parametrize("family", FAMILIES)
def test_scale_0_and_the_next_plain_generation_are_bit_identical(neo, family):
    """Plain, ASAG at scale 0, ASAG, plain again: one model and patcher, forge_objects reset before
    each generation as the host does, three Euler steps of the flow model."""
    host = neo
    p = dit_p(host, family)
    pristine = p.sd_model.forge_objects.unet
    callbacks = ScriptCallbacks()
    host.forge.register_callbacks(callbacks)
    x0, cond, uncond = dit_inputs(family)

    def generate(fields):
        reset_forge_objects(p, pristine)
        host.forge.start_job(p, host.job.start(p, [fields]))
        host.forge.before_sampling(p)
        x = euler(host, p, callbacks, x0, SIGMAS, cond, uncond, 1.0)
        assert_nothing_left(p)
        host.forge.end_job(p)
        return x

    before = generate({"enabled": False})
    assert torch.equal(generate({"enabled": True, "scale": 0.0}), before)
    guided = generate({"enabled": True, "scale": 3.0})
    assert (guided - before).abs().max() > 1e-2 * before.abs().max()
    assert torch.equal(generate({"enabled": False}), before)
    assert pristine.model_options.get("sampler_post_cfg_function", []) == []


@pytest.mark.parametrize("family, blocks", [("flux", "double 0, single 5-6"), ("qwen", "blocks 0, blocks 5-6")])
@pytest.mark.parametrize("reuse", [True, False])
def test_the_host_call_gives_the_operator_the_text_as_the_main_pass_ran_it(neo, monkeypatch, reuse, family, blocks):
    """At Neo's attention call: the image starts after the text, the text rows are the model's
    attention, and only the selected blocks go through ASAG's operator. The negative prompt has 12
    tokens, the prompt 8: Neo batches them by repeating each to 24, which changes joint attention,
    so the extra pass runs the prompt repeated as the main pass did, with reuse on or off."""
    forge_dit = importlib.import_module("asag.hosts.forge_dit")
    calls = []
    operator = forge_dit.joint.joint_adversarial_attention

    def spy(q, k, v, image, **kwargs):
        out = operator(q, k, v, image, **kwargs)
        calls.append((image, torch.nn.functional.scaled_dot_product_attention(q[:, :, : image.start], k, v), out))
        return out

    monkeypatch.setattr(forge_dit.joint, "joint_adversarial_attention", spy)
    step(neo, family, 3.5, scale=2.0, dit_layers=blocks, uncond_tokens=12, options=HostOptions(reuse=reuse))
    assert len(calls) == 3  # one extra pass, three selected blocks
    for image, text_rows, out in calls:
        assert image == slice(24, None)
        torch.testing.assert_close(out[:, :, :24], text_rows, rtol=1e-5, atol=1e-6)


def count_reuse(host, family, fields, reuse, cond_scale, uncond_tokens, config=None):
    """Three Euler steps of a fresh generation; returns (latent, block computations, reuse's reason, p)."""
    x0, cond, uncond = dit_inputs(family, uncond_tokens=uncond_tokens)
    p = dit_p(host, family, config=config)
    callbacks = start(host, p, options=HostOptions(reuse=reuse), **fields)
    family_of = host.forge.families.family_for(p.sd_model.forge_objects.unet.model.diffusion_model)
    counter = BlockCounter([p.sd_model.forge_objects.unet.model.diffusion_model], blocks=family_of.blocks, first_layer=lambda block: block)
    try:
        x = euler(host, p, callbacks, x0, SIGMAS, cond, uncond, cond_scale)
    finally:
        counter.close()
    assert_nothing_left(p)
    reason = None
    if reuse:  # why the extra pass ran in full, or why ASAG did not apply at all
        recorder = getattr(p, host.forge.STATE_ATTR).reuse
        reason = recorder.reason if recorder else p.extra_generation_params.get(NOTE_KEY, "not applied")
    host.forge.end_job(p)
    return x, counter.block_computations, reason, p


@pytest.mark.parametrize("family, blocks, reused, cond_scale, uncond_tokens", [
    ("flux", "double 7-9, single 7-9", 7, 1.0, 8),
    ("flux", "single 2", 12, 3.5, 16),  # the negative prompt twice as long: the text repeated to batch
    ("chroma", "double 3, single 0", 3, 3.5, 8),
    ("lumina", "layers 3", 7, 3.5, 8),  # both refiners of each kind come first
    ("zimage", "refiner 1, layers 0", 3, 1.0, 8),
    ("anima", "blocks 4-5", 4, 3.5, 12),
    ("qwen", "blocks 3", 3, 3.5, 12),  # the text repeated to batch, as for Flux
])
def test_reuse_gives_the_same_image_with_exactly_the_blocks_before_the_first_perturbed_skipped(neo, family, blocks, reused, cond_scale, uncond_tokens):
    fields = dict(scale=2.0, dit_layers=blocks)
    on, computed_on, reason, _ = count_reuse(neo, family, fields, True, cond_scale, uncond_tokens)
    off, computed_off, _, _ = count_reuse(neo, family, fields, False, cond_scale, uncond_tokens)
    assert reason is None
    assert computed_off - computed_on == reused * (len(SIGMAS) - 1)
    torch.testing.assert_close(on, off, rtol=0, atol=1e-5 * off.abs().max().item())


@pytest.mark.parametrize("family, blocks, kind", [("flux", "single 0", "double"), ("qwen", "blocks 4", "blocks")])
def test_another_extensions_block_replacement_makes_the_extra_pass_run_in_full(neo, family, blocks, kind):
    host = neo
    p = dit_p(host, family)
    unet = p.sd_model.forge_objects.unet
    unet.model_options.setdefault("transformer_options", {}).setdefault("patches_replace", {})["dit"] = {
        ("double_block", 1): lambda args, extra: extra["original_block"](args)}
    x, cond, uncond = dit_inputs(family)
    callbacks = start(host, p, scale=2.0, dit_layers=blocks)
    denoise_step(host, p, callbacks, x, SIGMA, cond, uncond, 1.0)
    assert getattr(p, host.forge.STATE_ATTR).reuse.reason == f"a dit replacement is set on {kind} block 1"
    host.forge.end_job(p)


def test_a_failure_in_the_extra_pass_leaves_the_host_as_it_was(neo):
    """An exception inside the extra pass (an interrupt, out of memory): the host's attention
    function and every forward are back, and the next plain generation is bit-identical."""
    host = neo
    x, cond, uncond = dit_inputs("flux")
    _, (before, _, _) = step(host, "flux", 1.0)
    p = dit_p(host, "flux")
    callbacks = start(host, p, scale=2.0, dit_layers="double 5")

    def interrupt_in_the_extra_pass(args, extra):
        if args["transformer_options"]["block_index"] == 8 and flux_module().attention_function is not \
                importlib.import_module("backend.attention").attention_function:
            raise KeyboardInterrupt
        return extra["original_block"](args)

    options = p.sd_model.forge_objects.unet.model_options
    options.setdefault("transformer_options", {})["patches_replace"] = {"dit": {("double_block", 8): interrupt_in_the_extra_pass}}
    with pytest.raises(KeyboardInterrupt):
        denoise_step(host, p, callbacks, x, SIGMA, cond, uncond, 1.0)
    assert_nothing_left(p)
    host.forge.end_job(p)
    _, (after, _, _) = step(host, "flux", 1.0)
    assert torch.equal(after, before)


@pytest.mark.parametrize("spec, message", [
    ("double 12", "'double 12' asks for a block this model lacks; this model has double 0-9, single 0-9"),
    ("triple 1", "cannot read 'triple 1'; use all, double, single"),
    ("single 4-2", "range 4-2 runs backwards"),
    ("layers 3", "cannot read 'layers 3'; use all, double, single"),
])
def test_a_bad_block_list_is_named_with_what_the_model_has_and_the_image_left_alone(neo, spec, message):
    _, (plain, _, _) = step(neo, "flux", 1.0)
    p, (denoised, _, _) = step(neo, "flux", 1.0, scale=2.0, dit_layers=spec)
    assert torch.equal(denoised, plain)
    note = p.extra_generation_params[NOTE_KEY]
    assert note.startswith("not applied: ASAG parameter 'dit_layers'") and message in note


def test_the_unet_layer_list_does_not_apply_to_a_transformer(neo):
    """``layers`` names UNet blocks; on Flux only ``dit_layers`` counts (here its default)."""
    _, (a, _, _) = step(neo, "flux", 1.0, scale=2.0, layers="u0-2")
    _, (b, _, _) = step(neo, "flux", 1.0, scale=2.0, layers="middle", dit_layers="auto")
    assert torch.equal(a, b)


def test_a_transformer_without_a_family_gets_the_note_and_the_image_untouched(neo):
    """A model class ASAG does not know (as Wan on Neo, or a Nunchaku build): said, with the class, not guided."""
    host = neo
    p = dit_p(host, "flux")
    model = p.sd_model.forge_objects.unet.model.diffusion_model
    model.__class__ = type("OtherTransformer", (type(model),), {})
    x, cond, uncond = dit_inputs("flux")
    plain = denoise_step(host, dit_p(host, "flux"), ScriptCallbacks(), x, SIGMA, cond, uncond, 1.0)[0]
    callbacks = start(host, p, scale=2.0)
    assert torch.equal(denoise_step(host, p, callbacks, x, SIGMA, cond, uncond, 1.0)[0], plain)
    assert p.extra_generation_params[NOTE_KEY] == ("not applied: this is not a UNet model (SD1, SD2, SDXL) nor a transformer ASAG "
                                                   "supports (Flux, Chroma, Lumina 2 / Z-Image, Anima, Qwen-Image on Forge Neo): "
                                                   "the model is OtherTransformer")
    host.forge.end_job(p)


def test_a_flux_whose_attention_is_not_told_the_block_gets_the_note(neo, monkeypatch):
    """lllyasviel's Forge has the same Flux class, but its ``attention(q, k, v, pe)`` is not told
    which block runs (backend/nn/flux.py at dfdcbab): said, not guided."""
    monkeypatch.setattr(flux_module(), "attention", lambda q, k, v, pe: None)
    p = dit_p(neo, "flux")
    before = p.sd_model.forge_objects.unet
    start(neo, p, scale=2.0)
    assert p.sd_model.forge_objects.unet is before
    assert p.extra_generation_params[NOTE_KEY] == ("not applied: this host's Flux code does not tell its attention which block "
                                                   "runs; ASAG on Flux needs Forge Neo")


def test_diagnostics_on_flux_see_the_image_plan_and_the_reused_blocks(neo, caplog):
    caplog.set_level("INFO", logger="asag")
    step(neo, "flux", 1.0, scale=2.0, options=HostOptions(diagnostics=True))
    line = next(line for line in caplog.text.splitlines() if "diagnostics on " in line)
    assert "diagnostics on Forge Neo (backend): 1 extra passes" in line and "NaN values 0" in line
    assert 0.0 < float(line.split("plan row entropy ")[1].split()[0]) <= 1.0
    assert "1 of 1 extra passes took 3 of the model's 20 blocks from the main pass" in line  # auto: double 3-4, single 2


def test_a_nextdits_text_only_refiner_cannot_be_selected(neo):
    p, _ = step(neo, "lumina", 1.0, scale=2.0, dit_layers="context 0")
    assert p.extra_generation_params[NOTE_KEY] == (
        "not applied: ASAG parameter 'dit_layers': cannot read 'context 0'; use all, refiner, layers, or a range such as "
        "'refiner 0-2' (comma separated); this model has refiner 0-1, layers 0-9")


def test_z_image_pads_its_caption_and_the_image_starts_after_the_padding(neo, monkeypatch):
    """Z-Image pads the caption (8 tokens here) and the image (144 tokens) to multiples of 32: the
    joint layers' image starts at 32; the image-only refiner's is the whole (padded) sequence."""
    forge_dit = importlib.import_module("asag.hosts.forge_dit")
    images = []
    operator = forge_dit.joint.joint_adversarial_attention
    monkeypatch.setattr(forge_dit.joint, "joint_adversarial_attention",
                        lambda q, k, v, image, **kwargs: images.append((image, q.shape[2])) or operator(q, k, v, image, **kwargs))
    step(neo, "zimage", 1.0, scale=2.0, dit_layers="refiner 0, layers 4")
    assert ZIMAGE["pad_tokens_multiple"] == 32
    assert images == [(slice(0, None), 160), (slice(32, None), 32 + 160)]


def test_only_the_outputs_later_blocks_read_are_recorded(neo):
    """A transformer's blocks form a chain: the extra pass needs the last replayed block's output
    alone (and, in a NextDiT, the caption refiners' last), so the recording does not grow with
    the number of replayed blocks."""
    def recorded_bytes(family, blocks):
        x, cond, uncond = dit_inputs(family)
        p = dit_p(neo, family)
        callbacks = start(neo, p, scale=2.0, dit_layers=blocks)
        denoise_step(neo, p, callbacks, x, SIGMA, cond, uncond, 1.0)
        peak = getattr(p, neo.forge.STATE_ATTR).reuse.peak_bytes
        neo.forge.end_job(p)
        return peak

    assert 0 < recorded_bytes("flux", "single 1") == recorded_bytes("flux", "single 9")
    assert 0 < recorded_bytes("lumina", "layers 1") == recorded_bytes("lumina", "layers 8")
    assert 0 < recorded_bytes("anima", "blocks 1") == recorded_bytes("anima", "blocks 8")
    assert 0 < recorded_bytes("qwen", "blocks 1") == recorded_bytes("qwen", "blocks 8")


def test_on_anima_only_the_self_attention_of_the_selected_blocks_is_perturbed(neo, monkeypatch):
    """Each Anima block attends twice through the same function, over the image and then to the
    text: ASAG's operator gets the selected blocks' self-attention alone (the image's 144 tokens
    as queries and keys, all of it image), once per block and extra pass."""
    forge_dit = importlib.import_module("asag.hosts.forge_dit")
    calls = []
    operator = forge_dit.joint.joint_adversarial_attention
    monkeypatch.setattr(forge_dit.joint, "joint_adversarial_attention",
                        lambda q, k, v, image, **kwargs: calls.append((image, q.shape[2], k.shape[2])) or operator(q, k, v, image, **kwargs))
    p, _ = step(neo, "anima", 3.5, scale=2.0, dit_layers="blocks 3, blocks 8")
    assert calls == [(slice(0, None), 144, 144)] * 2
    assert p.extra_generation_params["ASAG DiT blocks"] == "blocks 3, blocks 8"


def test_anima_blocks_are_named_as_the_model_has_them(neo):
    p, (denoised, _, _) = step(neo, "anima", 1.0, scale=2.0, dit_layers="blocks 10")
    assert p.extra_generation_params[NOTE_KEY] == ("not applied: ASAG parameter 'dit_layers': 'blocks 10' asks for a block this model "
                                                   "lacks; this model has blocks 0-9")
    assert torch.equal(denoised, step(neo, "anima", 1.0)[1][0])


# ---- auto: the family's default fitted to the loaded model's depth ----------------------------
# (family, blocks per list, what auto chooses, blocks before the first chosen one). The real depths
# (Flux.2 Klein's on the Flux.1 blocks of the stand-in: auto reads the depths alone), then 1 and 2
# blocks per list, where before auto was refused.
AUTO_AT_DEPTH = [
    ("flux", (19, 38), "double 7-9, single 7-9", 7),  # Flux.1 dev / schnell
    ("chroma", (19, 38), "double 7-9, single 7-9", 7),
    ("flux", (5, 20), "double 2, single 3-4", 2),  # Flux.2 Klein 4B
    ("flux", (8, 24), "double 3, single 4-5", 3),  # Flux.2 Klein 9B
    ("lumina", (2, 26), "layers 7-9", 2 + 2 + 7),  # Lumina 2: the caption's and the image's refiners come first
    ("zimage", (2, 30), "layers 7-9", 2 + 2 + 7),
    ("anima", (28,), "blocks 7-9", 7),
    ("qwen", (60,), "blocks 7-9", 7),
    ("flux", (1, 1), "double 0, single 0", 0),
    ("flux", (2, 2), "double 0, single 0", 0),
    ("chroma", (1, 1), "double 0, single 0", 0),
    ("chroma", (2, 2), "double 0, single 0", 0),
    ("lumina", (1, 1), "layers 0", 1 + 1),
    ("lumina", (2, 2), "layers 0", 2 + 2),
    ("zimage", (1, 1), "layers 0", 1 + 1),
    ("zimage", (2, 2), "layers 0", 2 + 2),
    ("anima", (1,), "blocks 0", 0),
    ("anima", (2,), "blocks 0", 0),
    ("qwen", (1,), "blocks 0", 0),
    ("qwen", (2,), "blocks 0", 0),
]


@pytest.mark.parametrize("family, depths, chosen, before", AUTO_AT_DEPTH, ids=[f"{case[0]}-{'-'.join(map(str, case[1]))}" for case in AUTO_AT_DEPTH])
def test_auto_guides_at_every_depth_with_the_blocks_it_names(neo, caplog, family, depths, chosen, before):
    """auto on a model of these depths: guided (no note), the chosen blocks in the infotext (the
    setting still auto, for a paste), the image that naming those blocks gives, with exactly the
    blocks before the first of them taken from the main pass; said in the console where they are
    not the family's default as stated."""
    caplog.set_level("INFO", logger="asag")
    config = with_depth(family, depths)
    auto, computed_auto, reason, p = count_reuse(neo, family, {"scale": 2.0}, True, 1.0, 8, config)
    named, computed_named, _, _ = count_reuse(neo, family, {"scale": 2.0, "dit_layers": chosen}, False, 1.0, 8, config)
    plain, _, _, _ = count_reuse(neo, family, {"enabled": False}, False, 1.0, 8, config)
    assert NOTE_KEY not in p.extra_generation_params and reason is None
    assert p.extra_generation_params[AUTO_BLOCKS_KEY] == chosen
    assert AsagParams.from_infotext({key: str(value) for key, value in p.extra_generation_params.items()}).dit_layers == "auto"
    assert computed_named - computed_auto == before * (len(SIGMAS) - 1)
    torch.testing.assert_close(auto, named, rtol=0, atol=1e-5 * named.abs().max().item())
    assert (auto - plain).abs().max() > 1e-3 * plain.abs().max()
    default = next(f for f in DIT_FAMILIES if f.matches(p.sd_model.forge_objects.unet.model.diffusion_model)).default_blocks
    said = [record.getMessage() for record in caplog.records if record.getMessage().startswith("auto chose")]
    if chosen == default:
        assert said == []
    else:  # once per sampling pass
        assert len(said) == 1 and said[0].startswith(f"auto chose {chosen} on this ") and f"its default {default} is stated for" in said[0]


@pytest.mark.parametrize("family", DIT_FAMILIES, ids=lambda family: family.name)
def test_the_auto_rule_keeps_the_defaults_relative_depth_and_share_at_every_depth(family):
    """For every block count up to past the reference depth (Flux's kinds independently): auto
    selects something the model has, at least one block of each kind of the default; at or past the
    reference, the default itself; below, each run of the default at the same relative depth
    (within one block) covering the same share of the list (within half a block, at least one)."""
    default = {(kind, first, last) for kind, first, last in block_runs(resolve_blocks(family.default_blocks, family.reference_depths))}
    kinds = list(family.reference_depths)
    ranges = [range(1, family.reference_depths[kind] + 4) for kind in kinds]
    for counts in (dict(zip(kinds, counts)) for counts in itertools.product(*ranges)):
        spec = family.auto_spec(counts)
        runs = block_runs(resolve_blocks(spec, counts))  # never refused
        for kind, first, last in default:
            count, reference = counts[kind], family.reference_depths[kind]
            (start, end), = [(a, b) for k, a, b in runs if k == kind]
            if count >= reference:
                assert (start, end) == (first, last), (counts, spec)
                continue
            width = end - start + 1
            assert abs((start + end + 1) / 2 / count - (first + last + 1) / 2 / reference) <= 1 / count, (counts, spec)
            assert width == 1 or abs(width - (last - first + 1) * count / reference) <= 0.5, (counts, spec)
            assert width >= 1


def test_the_auto_blocks_leave_the_infotext_with_the_next_generation(neo):
    """The X/Y/Z plot shares the infotext dict between cells: a cell with named blocks, or on a
    model where ASAG does not apply, carries no auto blocks of the cell before."""
    p = dit_p(neo, "flux")
    start(neo, p, scale=2.0)
    assert p.extra_generation_params[AUTO_BLOCKS_KEY] == "double 3-4, single 2"
    neo.forge.end_job(p)
    start(neo, p, scale=2.0, dit_layers="single 1")
    assert AUTO_BLOCKS_KEY not in p.extra_generation_params
    neo.forge.end_job(p)
    start(neo, p, scale=2.0, dit_layers="auto")
    assert AUTO_BLOCKS_KEY in p.extra_generation_params
    neo.forge.end_job(p)
    start(neo, p, scale=2.0, dit_layers="double 20")  # not applied: only the note
    assert AUTO_BLOCKS_KEY not in p.extra_generation_params and NOTE_KEY in p.extra_generation_params
    neo.forge.end_job(p)
