"""Reuse of the main pass in the extra pass on Forge (stand-in of Forge dfdcbab over a real tiny ldm
UNet) and on the ldm_patched backend of old Forge and Forge Classic (blocks called through
``forward_timestep_embed``): Forge's batch helper may put cond and uncond rows in one UNet call or
split them by memory, repeats the shorter of two contexts to a common length, and ControlNet,
T2I-Adapter, block modifiers and block patches act around the blocks; the images must be those
without reuse, with exactly the reused blocks fewer in every extra pass. Where a patch acts
inside the blocks (and may keep state), the extra pass must run in full."""
import pytest
import torch

from asag.hosts.settings import HostOptions
from asag.layers import resolve_layers, self_attention_modules
from asag.reuse import WRAPPER_ATTR, blocks_before
from tests.hosts.block_counter import BlockCounter
from tests.hosts.control_network import ControlNetwork
from tests.hosts.forge_env import ScriptCallbacks, denoise_step, euler, forge_host, forge_line_host, inputs, make_p  # noqa: F401

SPECS = ["middle", "u0-2", "u6-8", "d1,m0", "all"]
SIGMAS = [6.0, 3.0, 1.5, 0.7, 0.0]  # four Euler steps
CFG = 5.0


def with_control(host, p):
    unet = p.sd_model.forge_objects.unet
    controlnet = host.import_module("backend.patcher.controlnet")
    network = ControlNetwork(unet.model.diffusion_model).eval()
    hint = torch.randn((1, 4, 16, 16), generator=torch.Generator().manual_seed(11))
    unet.add_patched_controlnet(controlnet.ControlNet(network, hint, strength=0.8))
    unet.add_patched_controlnet(controlnet.T2IAdapter(network, hint, blocks={2, 5, 8}, strength=0.5))


def with_modifiers_and_patches(host, p):
    unet = p.sd_model.forge_objects.unet

    def adain_like(h, flag, transformer_options):  # reference-only's block modifier changes h after blocks
        if flag == "after" and transformer_options["block"][0] == "output":
            return h * 0.9 + h.mean(dim=(2, 3), keepdim=True) * 0.1
        return h

    unet.add_block_modifier(adain_like)
    unet.set_model_input_block_patch(lambda h, transformer_options: h * 1.05)
    unet.set_model_output_block_patch(lambda h, hsp, transformer_options: (h, hsp * 0.95))  # FreeU-like


def with_reference_recording(host, p):
    sampling = host.sampling

    def recording_modifier(model, x, timestep, uncond, cond, cond_scale, model_options, seed):
        xt = torch.ones_like(x) + torch.randn(x.shape, generator=torch.Generator().manual_seed(9)) * timestep[0]
        sampling.sampling_function_inner(model, xt, timestep, uncond, cond, 1, model_options, seed)
        return model, x, timestep, uncond, cond, cond_scale, model_options, seed

    p.sd_model.forge_objects.unet.add_conditioning_modifier(recording_modifier)


def plain_attention(q, k, v, extra_options):
    heads = extra_options["n_heads"]
    split = lambda t: t.reshape(t.shape[0], t.shape[1], heads, -1).transpose(1, 2)  # noqa: E731
    out = torch.nn.functional.scaled_dot_product_attention(split(q), split(k), split(v))
    return out.transpose(1, 2).reshape(q.shape)


def with_a_patch_reading_transformer_index(host, p):
    # Like IP-Adapter's weight types: an attn2 replacement (on a block never replayed) whose effect
    # depends on transformer_index, which every block call before it advances.
    def indexed(q, k, v, extra_options):
        return plain_attention(q, k, v, extra_options) * (1.0 + 0.1 * extra_options["transformer_index"])
    p.sd_model.forge_objects.unet.set_model_attn2_replace(indexed, "output", 8)


def with_a_counting_attn1_patch(host, p):
    # Like ControlLLLite: an attn1_patch in every transformer block that counts its calls and acts
    # by the count; replaying blocks would skip calls and shift its state.
    calls = p.patch_calls = [0]

    def counting(n, context, value, extra_options):
        calls[0] += 1
        return n * (1.0 + 0.01 * (calls[0] % 5)), context, value
    p.sd_model.forge_objects.unet.set_model_attn1_patch(counting)


def with_a_block_inner_modifier(host, p):
    def damp(x, flag, layer, layer_index, block, transformer_options):
        return x * 0.98 if flag == "after" else x
    p.sd_model.forge_objects.unet.add_block_inner_modifier(damp)


def split_by_memory(host, p):
    # room for one chunk of rows per UNet call: cond and uncond run separately
    host.import_module("backend.memory_management").FREE_MEMORY = 1.5 * 1024 * 4 * 16 * 16 * p.batch


# name -> (batch, CFG scale, setups, negative prompt tokens)
LAYOUTS = {
    "cond and uncond in one call": (1, CFG, [], 7),
    "batch 2": (2, CFG, [], 7),
    "split by memory": (2, CFG, [split_by_memory], 7),
    "CFG 1 (no uncond rows)": (2, 1.0, [], 7),
    "ControlNet and T2I-Adapter": (2, CFG, [with_control], 7),
    "block modifiers and block patches": (1, CFG, [with_modifiers_and_patches], 7),
    "reference-only recording call": (1, CFG, [with_reference_recording], 7),
    "two-chunk negative prompt": (1, CFG, [], 14),
    "two-chunk negative prompt, batch 2": (2, CFG, [], 14),
    "a patch reading transformer_index": (1, CFG, [with_a_patch_reading_transformer_index], 7),
    "an attn1_patch counting its calls": (1, CFG, [with_a_counting_attn1_patch], 7),
    "a block inner modifier": (1, CFG, [with_a_block_inner_modifier], 7),
}
# Code inside every block: the extra pass runs in full, and says why.
COMPUTED_IN_FULL = {"an attn1_patch counting its calls": "attn1_patch runs inside the blocks",
                    "a block inner modifier": "block_inner_modifiers runs inside the blocks"}


def sample(host, layout, spec=None, reuse=True):
    """Euler over SIGMAS as Forge's sampler drives the CFG denoiser; returns (final x, counters, p)."""
    batch, cond_scale, setups, uncond_tokens = LAYOUTS[layout]
    p = make_p(host)
    p.batch = batch
    for setup in setups:
        setup(host, p)
    callbacks = ScriptCallbacks()
    if spec is not None:
        host.forge.register_callbacks(callbacks)
        host.forge.start_job(p, host.job.start(p, [{"enabled": True, "scale": 2.0, "layers": spec}]), HostOptions(reuse=reuse))
        host.forge.before_sampling(p)
    x, cond, uncond = inputs(batch=batch, uncond_tokens=uncond_tokens)
    counters = BlockCounter([p.sd_model.forge_objects.unet.model.diffusion_model])
    try:
        x = euler(host, p, callbacks, x, SIGMAS, cond, uncond, cond_scale)
    finally:
        counters.close()
        host.import_module("backend.memory_management").FREE_MEMORY = float("inf")
    if spec is not None:
        assert_nothing_left(host, p)
        state = getattr(p, host.forge.STATE_ATTR)
        p.reuse_reason = state.reuse.reason if state.reuse is not None else None
        host.forge.end_job(p)
    return x, counters, p


def assert_nothing_left(host, p):
    unet = p.sd_model.forge_objects.unet.model.diffusion_model
    assert not any(hasattr(m.__dict__.get("forward"), WRAPPER_ATTR) for m in unet.modules())
    if host.legacy:
        openaimodel = host.import_module("ldm_patched.ldm.modules.diffusionmodules.openaimodel")
        assert not hasattr(openaimodel.forward_timestep_embed, WRAPPER_ATTR)
    state = getattr(p, host.forge.STATE_ATTR)
    assert state.reuse is None or not state.reuse._records


@pytest.fixture
def host(forge_host):
    import importlib

    forge_host.import_module = importlib.import_module
    return forge_host


def check_reuse(host, layout, spec):
    base, plain, p = sample(host, layout)
    off, counted_off, p_off = sample(host, layout, spec, reuse=False)
    on, counted_on, p_on = sample(host, layout, spec, reuse=True)
    assert (off - base).abs().max() > 1e-3 * base.abs().max()  # ASAG changes the result measurably
    assert (on - off).abs().max() <= 1e-4 * off.abs().max()
    extra_calls = counted_on.unet_calls - plain.unet_calls
    assert extra_calls > 0 and counted_off.unet_calls == counted_on.unet_calls
    unet = p.sd_model.forge_objects.unet.model.diffusion_model
    reused = len(blocks_before(unet, resolve_layers(spec, self_attention_modules(unet))))
    if layout in COMPUTED_IN_FULL:
        assert counted_off.block_computations == counted_on.block_computations
        assert p_on.reuse_reason == COMPUTED_IN_FULL[layout]
        if hasattr(p_on, "patch_calls"):
            assert p_on.patch_calls == p_off.patch_calls  # the patch saw every call it sees without reuse
    else:
        assert counted_off.block_computations - counted_on.block_computations == reused * extra_calls
        assert p_on.reuse_reason is None


# lllyasviel's Forge over every spec; the other lines over the default and an output-side one: they
# reach the same reuse code, through Neo's joined options and clone, or through the ldm_patched
# UNet's forward_timestep_embed (old Forge, Forge Classic).
RUNS = [("forge", spec) for spec in SPECS] + [(line, spec) for line in ("neo", "forge-legacy", "classic") for spec in ("middle", "u6-8")]


@pytest.mark.parametrize("forge_line_host, spec", RUNS, indirect=["forge_line_host"])
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_reuse_gives_the_same_result_and_skips_exactly_the_reused_blocks(forge_line_host, layout, spec):
    import importlib

    forge_line_host.import_module = importlib.import_module
    if forge_line_host.legacy:
        assert forge_line_host.detect.detect_host() == forge_line_host.detect.FORGE_LEGACY
    check_reuse(forge_line_host, layout, spec)


def test_split_batches_are_really_split(host):
    _, plain, _ = sample(host, "cond and uncond in one call")
    _, split, _ = sample(host, "split by memory")
    assert split.unet_calls == 2 * plain.unet_calls


def test_a_failure_inside_the_unet_drops_the_recording_at_once(host):
    p = make_p(host)
    callbacks = ScriptCallbacks()
    host.forge.register_callbacks(callbacks)
    host.forge.start_job(p, host.job.start(p, [{"enabled": True, "scale": 2.0, "layers": "u0-2"}]))
    host.forge.before_sampling(p)
    unet = p.sd_model.forge_objects.unet.model.diffusion_model

    def out_of_memory(*_):
        raise RuntimeError("CUDA out of memory (simulated)")

    handle = unet.output_blocks[1].register_forward_pre_hook(out_of_memory)
    x, cond, uncond = inputs()
    try:
        with pytest.raises(RuntimeError, match="simulated"):
            denoise_step(host, p, callbacks, x, SIGMAS[0], cond, uncond, CFG)
    finally:
        handle.remove()
    assert_nothing_left(host, p)


def test_a_failure_outside_the_unet_is_swept_by_the_next_generation_even_without_asag(host):
    p = make_p(host)
    callbacks = ScriptCallbacks()
    host.forge.register_callbacks(callbacks)
    host.forge.start_job(p, host.job.start(p, [{"enabled": True, "layers": "middle"}]))
    host.forge.before_sampling(p)
    unet = p.sd_model.forge_objects.unet.model.diffusion_model
    x, cond, uncond = inputs()
    params = type("Params", (), {})()
    params.x, params.sigma, params.sampling_step, params.total_sampling_steps = x, torch.full((1,), SIGMAS[0]), 0, 4
    params.denoiser = type("Denoiser", (), {"p": p})()
    host.forge.remember_step(params)  # on_cfg_denoiser armed the recording; then the step failed
    assert any(hasattr(m.__dict__.get("forward"), WRAPPER_ATTR) for m in unet.modules())
    q = make_p(host)
    q.sd_model = p.sd_model  # the next generation, same model
    host.forge.start_job(q, host.job.start(q, [{"enabled": False}]))
    host.forge.before_sampling(q)  # Forge calls it for every AlwaysOn script, ASAG off or on
    assert not any(hasattr(m.__dict__.get("forward"), WRAPPER_ATTR) for m in unet.modules())
