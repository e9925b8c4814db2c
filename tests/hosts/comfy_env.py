"""Test host for the ComfyUI node: the stand-in ComfyUI modules (tests/hosts/comfy_standin) on
sys.path for the duration of one test, a tiny real ldm UNet with ComfyUI's classes (or a tiny
random-weight transformer of ComfyUI's code: ``make_dit_model``) behind ComfyUI's model patcher,
and KSampler's path through ComfyUI's sampling code (CFGGuider, KSAMPLER, k-diffusion's Euler), as
the KSampler node calls it (nodes.py common_ksampler -> comfy/sample.py sample ->
comfy.samplers.KSampler.sample at a125cd84)."""
import contextlib
import importlib
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from tests.models import CONTEXT_DIM, tiny_unet

HERE = Path(__file__).parent
STANDIN = str(HERE / "comfy_standin")
STANDIN_MODULES = ("comfy", "comfy_extras", "nodes", "execution")
# ASAG's modules that import ComfyUI's: imported afresh with each stand-in
ADAPTER_MODULES = ("asag.hosts.comfyui", "asag.hosts.comfyui_dit")
LATENT = 16  # latent side: the middle block of the tiny UNets attends over 4 x 4 tokens


def _drop_modules():
    for name in list(sys.modules):
        if name.split(".")[0] in STANDIN_MODULES or name in ADAPTER_MODULES:
            del sys.modules[name]


@contextlib.contextmanager
def comfy_modules(threads: int | None = 1):
    """The stand-in ComfyUI, imported afresh; everything it put in sys.modules is removed
    afterwards. ``threads``: torch's threads for the duration (tiny tensors: one is fastest on a
    shared CPU; None keeps them)."""
    _drop_modules()
    sys.path.insert(0, STANDIN)
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield SimpleNamespace(
            comfyui=importlib.import_module("asag.hosts.comfyui"),
            node=importlib.import_module("asag.hosts.comfyui_node"),
            model_patcher=importlib.import_module("comfy.model_patcher"),
            model_base=importlib.import_module("comfy.model_base"),
            samplers=importlib.import_module("comfy.samplers"),
            controlnet=importlib.import_module("comfy.controlnet"),
            openaimodel=importlib.import_module("comfy.ldm.modules.diffusionmodules.openaimodel"),
            nodes_pag=importlib.import_module("comfy_extras.nodes_pag"),
            nodes_slg=importlib.import_module("comfy_extras.nodes_slg"),
            attention=importlib.import_module("comfy.ldm.modules.attention"),
            nodes=importlib.import_module("nodes"),
            execution=importlib.import_module("execution"),
        )
    finally:
        torch.set_num_threads(previous_threads)
        sys.path.remove(STANDIN)
        _drop_modules()


@pytest.fixture
def comfy_host():
    """The stand-in ComfyUI for one test."""
    with comfy_modules() as host:
        yield host


def make_model(host, layout="sd1", seed=0):
    """A checkpoint as CheckpointLoaderSimple gives it: the ModelPatcher of a BaseModel around the
    UNet (a tiny real ldm one, with ComfyUI's classes)."""
    unet = host.openaimodel.from_ldm(tiny_unet(layout, seed=seed))
    return host.model_patcher.ModelPatcher(host.model_base.BaseModel(unet), torch.device("cpu"), torch.device("cpu"))


def conditioning(seed, tokens=7):
    """CLIPTextEncode's output: ``[[context, {"pooled_output": ...}]]``."""
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(1, tokens, CONTEXT_DIM, generator=g), {"pooled_output": torch.randn(1, CONTEXT_DIM, generator=g)}]]


def node_inputs(host, **inputs):
    """The ASAG node's widget values: its declared defaults, with ``inputs`` instead."""
    declared = host.node.AsagNode.INPUT_TYPES()["required"]
    return {name: options["default"] for name, (_, options) in declared.items() if "default" in options} | inputs


def apply_node(host, model, **inputs):
    """What ComfyUI's executor does with the ASAG node: an instance, its FUNCTION called."""
    node = host.node.AsagNode()
    (patched,) = getattr(node, node.FUNCTION)(model=model, **node_inputs(host, **inputs))
    return patched


def ksampler(host, model, positive, negative, cfg, steps=4, seed=0, sigmas=None, latent=None):
    """The KSampler node with the euler sampler and the simple scheduler on an empty latent: the
    sampled latent. ``sigmas``: a schedule of one's own instead (``[s, 0]`` gives one step, whose
    result is the denoised prediction at ``x = noise * s``). ``latent``: its side (``LATENT``)."""
    side = latent or LATENT
    noise = torch.randn(1, 4, side, side, generator=torch.Generator().manual_seed(seed))
    if sigmas is None:
        sigmas = host.samplers.simple_scheduler(model.get_model_object("model_sampling"), steps)
    with torch.no_grad():
        return host.samplers.sample(model, noise, positive, negative, cfg, torch.device("cpu"), host.samplers.ksampler("euler"), sigmas,
                                    model_options=model.model_options, latent_image=torch.zeros_like(noise), seed=seed)


def step_noise(seed=0):
    """The noise ``ksampler`` draws for ``seed``: one step at sigma s denoises ``noise * s``."""
    return torch.randn(1, 4, LATENT, LATENT, generator=torch.Generator().manual_seed(seed))


# ---- transformer models ------------------------------------------------------------------------

DIT_LATENT = 8  # latent side: 4 x 4 image tokens after the 2 x 2 patches
TEXT_WIDTH, POOLED_WIDTH = 16, 8
# The tiny models: ComfyUI's classes (the stand-ins under comfy_standin/comfy/ldm) at toy size.
DIT_MODELS = {
    "flux": ("comfy.ldm.flux.model", "Flux", "Flux", dict(
        in_channels=4, out_channels=4, vec_in_dim=POOLED_WIDTH, context_in_dim=TEXT_WIDTH, hidden_size=32, mlp_ratio=2.0, num_heads=2,
        depth=3, depth_single_blocks=4, axes_dim=[4, 6, 6], theta=10000, patch_size=2, qkv_bias=True, guidance_embed=True)),
    "chroma": ("comfy.ldm.chroma.model", "Chroma", "Chroma", dict(
        in_channels=4, out_channels=4, vec_in_dim=POOLED_WIDTH, context_in_dim=TEXT_WIDTH, hidden_size=32, mlp_ratio=2.0, num_heads=2,
        depth=3, depth_single_blocks=4, axes_dim=[4, 6, 6], theta=10000, patch_size=2, qkv_bias=True, guidance_embed=False)),
    "sd3": ("comfy.ldm.modules.diffusionmodules.mmdit", "OpenAISignatureMMDITWrapper", "SD3", dict(  # MMDiT-X blocks first, as SD3.5 Medium
        input_size=DIT_LATENT, patch_size=2, in_channels=4, depth=4, adm_in_channels=POOLED_WIDTH, context_dim=TEXT_WIDTH,
        x_block_self_attn_layers=(0, 1), num_heads=2, hidden_size=32)),
    "qwen": ("comfy.ldm.qwen_image.model", "QwenImageTransformer2DModel", "QwenImage", dict(
        patch_size=2, in_channels=16, out_channels=4, num_layers=4, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=TEXT_WIDTH, axes_dims_rope=(4, 6, 6))),
    "lumina": ("comfy.ldm.lumina.model", "NextDiT", "Lumina2", dict(
        patch_size=2, in_channels=4, dim=32, n_layers=4, n_refiner_layers=2, n_heads=2, cap_feat_dim=TEXT_WIDTH, axes_dims=(4, 6, 6))),
    "zimage": ("comfy.ldm.lumina.model", "NextDiT", "Lumina2", dict(  # the caption padded to a multiple: newer ComfyUI's code
        patch_size=2, in_channels=4, dim=32, n_layers=4, n_refiner_layers=2, n_heads=2, cap_feat_dim=TEXT_WIDTH, axes_dims=(4, 6, 6),
        pad_tokens_multiple=8)),
}


def make_dit_model(host, family, seed=0):
    """A transformer checkpoint as ComfyUI loads it: the ModelPatcher of the family's model_base
    class around a tiny random-weight model of ComfyUI's code."""
    module, model_class, base_class, config = DIT_MODELS[family]
    torch.manual_seed(seed)
    diffusion_model = getattr(importlib.import_module(module), model_class)(**config)
    base = getattr(host.model_base, base_class)(diffusion_model)
    return host.model_patcher.ModelPatcher(base, torch.device("cpu"), torch.device("cpu"))


def dit_conditioning(seed, tokens=5):
    """A text encoder's CONDITIONING for the tiny transformers: context and pooled vector."""
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(1, tokens, TEXT_WIDTH, generator=g), {"pooled_output": torch.randn(1, POOLED_WIDTH, generator=g)}]]
