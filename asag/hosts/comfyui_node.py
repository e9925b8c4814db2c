"""The ComfyUI node ``ASAG`` (a V1 node: ComfyUI checks V1 mappings first, and V1's
``VALIDATE_INPUTS`` runs before the prompt executes and is shown on the node).

Its inputs are the parameters of asag/params.py that a ComfyUI graph has a use for, in their
order, with their defaults, ranges, steps and help; where ComfyUI names or measures a value
differently, ``COMFYUI_WORDING`` says so, in one place. What the node does to the model is
asag/hosts/comfyui.py (imported when the node runs: declaring the node needs no ComfyUI).
"""
from __future__ import annotations

from typing import Any, Mapping, NamedTuple

from .. import dit_layers as _dit_layers  # the node's inputs take these names
from .. import layers as _layers
from ..params import PARAMS, AsagParams, ParamSpec
from .families import COMFYUI_FAMILIES

NODE_ID = "ASAG"
DISPLAY_NAME = "Adversarial Sinkhorn Attention Guidance (ASAG)"
CATEGORY = "model_patches/unet"  # beside ComfyUI's own PAG node

# Parameters a ComfyUI graph expresses otherwise, and how (README, "ComfyUI").
_HIRES = "a hires. fix pass is a second KSampler in ComfyUI: give it its own ASAG node, or none"
NOT_INPUTS = {
    "enabled": "the node itself turns ASAG on; bypass or remove it to turn ASAG off",
    "progress_by": "the window is in percent of the model's timestep range, as in ComfyUI's own guidance nodes",
    "hires": _HIRES, "hires_scale": _HIRES, "hires_iterations": _HIRES,
    "full_batch": "A1111 only: ComfyUI runs the extra pass through its own batching, with every patch",
}


class Wording(NamedTuple):
    input: str  # the node's input name
    tooltip: str


# Where the node names or explains a parameter differently from the WebUI.
COMFYUI_WORDING = {
    "start": Wording("start_percent", "Start of the active window, in percent of the model's timestep range, as "
                                      "ComfyUI's guidance nodes and ControlNet count it (0 = the noisiest step)."),
    "end": Wording("end_percent", "End of the active window, in percent of the model's timestep range "
                                  "(1 = the last step)."),
    "layers": Wording("layers", "Self-attention layers to perturb on SD1.x, SD2.x and SDXL: auto (= middle, the middle block, "
                                "PAG's default), all, input, middle, output, or blocks such as m0, d1, d1.0, u0-2 (d = input, m = "
                                "middle, u = output; numbered among the blocks that have attention; .N picks a transformer block), "
                                "comma separated."),
    "dit_layers": Wording("dit_layers", "Blocks to perturb on transformer models (Flux, Flux.2, Chroma, SD3, Qwen-Image, Lumina 2, "
                                        "Z-Image), where 'layers' does not apply: auto (the model's default: double 7-9, single 7-9 "
                                        "on Flux and Chroma, double 7-9 on SD3, blocks 7-9 on Qwen-Image, layers 7-9 on Lumina 2 and "
                                        "Z-Image; the same relative depth on a model with fewer blocks, such as Flux.2 Klein), all, a "
                                        "kind of block (double, single, blocks, refiner, layers), or ranges such as "
                                        "'double 7-9, single 20' (the model's own block numbers), comma separated."),
}
# The block kinds a transformer ComfyUI runs may have (what a dit_layers list may name).
DIT_KINDS = tuple(dict.fromkeys(kind for family in COMFYUI_FAMILIES for kind, _ in family.block_lists if kind not in family.text_only))
NODE_PARAMS: tuple[ParamSpec, ...] = tuple(spec for spec in PARAMS if spec.name not in NOT_INPUTS)
NODE_SPEC = {spec.name: spec for spec in NODE_PARAMS}
assert set(NOT_INPUTS) | set(COMFYUI_WORDING) <= {spec.name for spec in PARAMS}


def input_name(spec: ParamSpec) -> str:
    return COMFYUI_WORDING[spec.name].input if spec.name in COMFYUI_WORDING else spec.name


def input_type(spec: ParamSpec) -> tuple:
    """The ``INPUT_TYPES`` entry of one parameter."""
    options: dict[str, Any] = {"default": spec.default,
                               "tooltip": COMFYUI_WORDING[spec.name].tooltip if spec.name in COMFYUI_WORDING else spec.help}
    if spec.choices:
        return list(spec.choices), options
    if spec.kind is str:
        return "STRING", {**options, "multiline": False}
    if spec.kind is bool:
        return "BOOLEAN", options
    options.update(min=spec.minimum, max=spec.maximum, step=spec.step)
    return ("INT" if spec.kind is int else "FLOAT"), options


def node_params(values: Mapping[str, Any]) -> AsagParams:
    """The settings from the node's input values (by input name; missing ones take the
    defaults). Raises ``ValueError`` naming the input and what it allows."""
    fields = {}
    for spec in NODE_PARAMS:
        name = input_name(spec)
        if name in values:
            try:
                fields[spec.name] = spec.coerce(values[name])
            except ValueError:
                raise ValueError(f"ASAG input '{name}': got {values[name]!r}, expected {spec.describe_allowed()}") from None
    start, end = fields.get("start", 0.0), fields.get("end", 1.0)
    if start > end:
        raise ValueError(f"ASAG inputs '{input_name(NODE_SPEC['start'])}' and '{input_name(NODE_SPEC['end'])}': "
                         f"the window starts ({start:g}) after it ends ({end:g})")
    return AsagParams(enabled=True, **fields)


class AsagNode:
    """Adversarial Sinkhorn Attention Guidance for ComfyUI."""

    CATEGORY = CATEGORY
    DESCRIPTION = ("Adversarial Sinkhorn Attention Guidance (arXiv 2511.07499): adds scale * (cond - perturbed) to the "
                   "sampler's result, where the perturbed prediction has the selected self-attention layers (UNets) or "
                   "blocks (transformer models) attend through an adversarial Sinkhorn transport plan. Like PAG, one extra "
                   "model pass per step, on the positive prompt only, the blocks before the first perturbed one taken from "
                   "the main pass where that gives the same result; chains with PAG, SkipLayerGuidance, ControlNet, "
                   "IP-Adapter and LoRA.")
    RETURN_TYPES = ("MODEL",)
    OUTPUT_TOOLTIPS = ("The model with ASAG's extra pass added to its sampling.",)
    FUNCTION = "apply"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        inputs = {"model": ("MODEL", {"tooltip": "The model to guide: SD1.x, SD2.x, SDXL (layers), or Flux, Flux.2, Chroma, SD3, "
                                                 "Qwen-Image, Lumina 2, Z-Image (dit_layers)."})}
        inputs.update((input_name(spec), input_type(spec)) for spec in NODE_PARAMS)
        return {"required": inputs}

    @classmethod
    def VALIDATE_INPUTS(cls, layers, dit_layers, start_percent, end_percent):
        """Run by ComfyUI before the prompt executes, for the checks its own (ranges, lists) do not
        make: the window, and the spelling of the layer and block lists. Inputs fed by a link arrive
        as None: they are checked when the node runs. Where the layers fit the model is known only
        then too."""
        given = {name: value for name, value in
                 dict(layers=layers, dit_layers=dit_layers, start_percent=start_percent, end_percent=end_percent).items()
                 if value is not None}
        try:
            params = node_params(given)
            if "layers" in given:
                _layers.check_spec(params.layers)
            if "dit_layers" in given:
                _dit_layers.check_spec(params.dit_layers, DIT_KINDS)
        except ValueError as err:
            return str(err)
        return True

    def apply(self, model, **values):
        from . import comfyui  # ComfyUI's modules, imported where the node runs

        return (comfyui.patch(model, node_params(values)),)


NODE_CLASS_MAPPINGS = {NODE_ID: AsagNode}
NODE_DISPLAY_NAME_MAPPINGS = {NODE_ID: DISPLAY_NAME}
