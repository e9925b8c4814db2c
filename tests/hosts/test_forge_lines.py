"""The Forge lines side by side: what Forge Neo and Forge Classic do differently from lllyasviel's
Forge (the CFG++ samplers, whose post-CFG function Neo joins after ASAG's and whose option list
replaces the patcher's on Classic; Neo's engine flags and flow SDXL), and what every line must do
alike (each sampler family, AND prompts, inpainting models, the next plain image untouched). The
adapter and reuse tests run on the lines through the fixtures of forge_env."""
import itertools

import pytest
import torch
from k_diffusion import sampling as k_sampling

from asag.hosts.settings import HostOptions
from asag.params import NOTE_KEY
from tests.hosts.cfgpp_samplers import SAMPLERS
from tests.hosts.forge_env import ScriptCallbacks, denoise_step, forge_line_host, haoming_line_host, inputs, make_p, reset_forge_objects  # noqa: F401
from tests.hosts.test_forge_adapter import start

SIGMAS = torch.tensor([6.0, 3.0, 1.5, 0.0])


def sample(host, p, callbacks, sampler, cond_scale, seed=1):
    """A sampler (a CFG++ one by name, or a k-diffusion function) over the CFGDenoiser of ``host``'s
    line; the step counter as the host keeps it; the sampler's noise seeded."""
    x, cond, uncond = inputs(seed)
    steps = itertools.count()  # the CFGDenoiser counts its calls (Heun makes two per step)

    def model(x, sigma, model_options=None):
        return denoise_step(host, p, callbacks, x, sigma[0], cond, uncond, cond_scale, step=next(steps),
                            total=len(SIGMAS) - 1, model_options=model_options)[0]

    torch.manual_seed(seed)
    return SAMPLERS.get(sampler, sampler)(model, x * SIGMAS[0] / 3.0, SIGMAS)


def generate(host, cond_scale, sampler, **fields):
    p = make_p(host)
    callbacks = start(host, p, **fields) if fields else ScriptCallbacks()
    result = sample(host, p, callbacks, sampler, cond_scale)
    host.forge.end_job(p)
    return result


# CFG++ is run near CFG 1 (its samplers keep the uncond rows there), and at higher scales.
@pytest.mark.parametrize("sampler, cond_scale", [("Euler CFG++", 1.0), ("DPM++ 2M CFG++", 1.0), ("Euler CFG++", 4.0)])
def test_cfgpp_samplers_are_guided(haoming_line_host, sampler, cond_scale):
    host = haoming_line_host
    plain = generate(host, cond_scale, sampler)
    assert torch.equal(generate(host, cond_scale, sampler, scale=0.0, layers="u0-2"), plain)
    guided = generate(host, cond_scale, sampler, scale=3.0, layers="u0-2")
    change = (guided - plain).abs().max() / plain.abs().max()
    assert change > 1e-3, f"ASAG changed a {sampler} image by {change:.2e} of its range on {host.name}"


def test_cfgpp_step_moves_from_the_guided_result_along_the_uncond_direction(haoming_line_host):
    """One Euler CFG++ step with ASAG is ASAG's denoised result plus the step along the uncond
    prediction: ASAG's post-CFG function ran, and before the sampler's."""
    host = haoming_line_host
    sigmas = SIGMAS[:2]
    x, cond, uncond = inputs(1)
    x = x * sigmas[0] / 3.0
    p = make_p(host)
    callbacks = start(host, p, scale=3.0, layers="u0-2")
    model = lambda x, sigma, model_options=None: denoise_step(  # noqa: E731
        host, p, callbacks, x, sigma[0], cond, uncond, 4.0, step=0, total=1, model_options=model_options)[0]
    stepped = SAMPLERS["Euler CFG++"](model, x, sigmas)
    host.forge.end_job(p)

    reference = make_p(host)
    reference_callbacks = start(host, reference, scale=3.0, layers="u0-2")
    denoised, cond_pred, uncond_pred = denoise_step(host, reference, reference_callbacks, x, sigmas[0], cond, uncond, 4.0, step=0, total=1)
    host.forge.end_job(reference)
    plain_denoised = uncond_pred + (cond_pred - uncond_pred) * 4.0
    assert (denoised - plain_denoised).abs().max() > 1e-3  # the reference itself is guided
    expected = denoised + (x - uncond_pred) / sigmas[0] * sigmas[1]
    torch.testing.assert_close(stepped, expected, rtol=1e-5, atol=1e-5)


def test_the_patcher_keeps_asag_after_a_samplers_options_are_merged(haoming_line_host):
    """The CFG++ sampler's options leave the UNet patcher's own lists as they were (ASAG first, once)."""
    host = haoming_line_host
    p = make_p(host)
    callbacks = start(host, p, scale=3.0, layers="u0-2")
    sample(host, p, callbacks, "Euler CFG++", 1.0)
    options = p.sd_model.forge_objects.unet.model_options
    owned = [f for f in options["sampler_post_cfg_function"] if getattr(f, host.forge.OWNED_ATTR, False)]
    assert len(owned) == 1 and options["sampler_post_cfg_function"][0] is owned[0]
    assert "disable_cfg1_optimization" not in options
    host.forge.end_job(p)


def test_inpainting_models_get_their_image_condition_in_the_extra_pass(forge_line_host):
    """A 9-channel inpainting UNet: the extra pass gets the mask and masked latent as the main pass
    does (Neo attaches them only for models it flags ``is_inpaint``); reuse on equals reuse off."""
    host = forge_line_host
    x, cond, uncond = inputs()
    g = torch.Generator().manual_seed(5)
    image_cond = torch.cat([torch.ones(1, 1, 16, 16), torch.randn(1, 4, 16, 16, generator=g)], dim=1)
    image_cond[:, :, :, 8:] = 0.0  # the right half to inpaint

    def run(**fields):
        p = make_p(host, inpaint=True)
        callbacks = start(host, p, options=HostOptions(reuse=fields.pop("reuse", True)), **fields) if fields else ScriptCallbacks()
        result = denoise_step(host, p, callbacks, x, 2.0, cond, uncond, 5.0, image_cond=image_cond)[0]
        host.forge.end_job(p)
        return result

    plain = run()
    guided = run(scale=3.0, layers="u0-2")
    assert (guided - plain).abs().max() > 1e-3 * plain.abs().max()
    torch.testing.assert_close(run(scale=3.0, layers="u0-2", reuse=False), guided, rtol=0, atol=1e-4 * plain.abs().max().item())


def flow_sdxl_p(host):
    """Neo's Mugen (flow-matching SDXL): flagged ``is_sdxl`` on an engine without ``is_sd2``, its
    predictor's sigmas from time_snr_shift(shift, 1/1000) to 1 (k_prediction.py:185-208)."""
    p = make_p(host, layout_flags=("is_sdxl",))
    p.sd_model.forge_objects.unet.model.predictor.sigmas = torch.tensor([0.0029, 1.0])  # shift 3
    return p


@pytest.mark.parametrize("forge_line_host", ["neo"], indirect=True)
@pytest.mark.parametrize("sigma, runs", [(0.9, False), (0.01, True)])
def test_neo_flow_sdxl_models_are_guided_within_their_own_noise_range(forge_line_host, sigma, runs):
    """The active window by sigma (here its second half) follows the flow model's own range."""
    host = forge_line_host
    p = flow_sdxl_p(host)
    callbacks = start(host, p, scale=3.0, layers="u0-2", start=0.5, end=1.0, progress_by="sigma")
    x, cond, uncond = inputs()
    guided = denoise_step(host, p, callbacks, x, sigma, cond, uncond, 4.0)[0]
    host.forge.end_job(p)
    plain = denoise_step(host, flow_sdxl_p(host), ScriptCallbacks(), x, sigma, cond, uncond, 4.0)[0]
    assert torch.equal(guided, plain) != runs
    assert NOTE_KEY not in p.extra_generation_params


# One of each k-diffusion family the hosts list: ancestral, multistep, SDE (Brownian tree noise), second order.
K_SAMPLERS = {"Euler a": k_sampling.sample_euler_ancestral, "DPM++ 2M": k_sampling.sample_dpmpp_2m,
              "DPM++ 2M SDE": k_sampling.sample_dpmpp_2m_sde, "Heun": k_sampling.sample_heun}


@pytest.mark.parametrize("sampler", sorted(K_SAMPLERS))
def test_every_sampler_family_is_guided_and_the_next_plain_image_is_untouched(forge_line_host, sampler):
    """Three generations on one model and patcher, as in the host (forge_objects reset before each):
    plain, with ASAG (measurably different), plain again (bit-identical to the first)."""
    host = forge_line_host
    p = make_p(host)
    pristine = p.sd_model.forge_objects.unet
    callbacks = ScriptCallbacks()
    host.forge.register_callbacks(callbacks)

    def generate(fields):
        reset_forge_objects(p, pristine)
        host.forge.start_job(p, host.job.start(p, [fields]))
        host.forge.before_sampling(p)
        result = sample(host, p, callbacks, K_SAMPLERS[sampler], 5.0)
        host.forge.end_job(p)
        return result

    before = generate({"enabled": False})
    guided = generate({"enabled": True, "scale": 3.0, "layers": "u0-2"})
    after = generate({"enabled": False})
    assert (guided - before).abs().max() > 1e-3 * before.abs().max()
    assert torch.equal(after, before)


def test_and_prompts_are_guided_with_their_weights_and_reuse_engages(forge_line_host, caplog):
    """"a cat AND a hat :0.3" for one image: Forge makes one condition per sub-prompt with its weight
    as strength; the extra pass gets the same two, and takes its first blocks from the main pass."""
    caplog.set_level("INFO", logger="asag")
    host = forge_line_host
    x, cond, uncond = inputs()
    cond = torch.cat([cond, torch.randn(cond.shape, generator=torch.Generator().manual_seed(9))])
    composition = [[(0, 0.7), (1, 0.3)]]

    def run(composition=composition, reuse=True, **fields):
        p = make_p(host)
        options = HostOptions(reuse=reuse, diagnostics=True)
        callbacks = start(host, p, options=options, **fields) if fields else ScriptCallbacks()
        result = denoise_step(host, p, callbacks, x, 2.0, cond, uncond, 5.0, composition=composition)[0]
        host.forge.end_job(p)
        return result

    plain = run()
    assert (plain - run(composition=[[(0, 1.0)]])).abs().max() > 1e-3 * plain.abs().max()  # the second prompt counts
    guided = run(scale=3.0, layers="u0-2")
    assert (guided - plain).abs().max() > 1e-3 * plain.abs().max()
    assert "1 of 1 extra passes took 10 of the model's 19 blocks" in caplog.text  # the input blocks and the middle
    torch.testing.assert_close(run(scale=3.0, layers="u0-2", reuse=False), guided, rtol=0, atol=1e-4 * plain.abs().max().item())
