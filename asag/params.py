"""Every ASAG parameter, declared once.

``PARAMS`` is the single source of truth: the UI controls, their order (which is the frozen
positional order of the API's ``args``), the named API fields, the infotext keys, the XYZ axes,
the validation and the README table are all derived from it. Per-job values travel as a frozen
``AsagParams``; code replaces it (``dataclasses.replace``), never mutates it, because the WebUI's
X/Y/Z plot shallow-copies the processing object.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

INFOTEXT_PREFIX = "ASAG"
# Always written while ASAG is on, so its presence is what "enabled" means in pasted infotext.
ENABLED_MARKER_KEY = "ASAG scale"
NOTE_KEY = "ASAG note"  # why ASAG was not applied, when it was not

# Where a control sits in the accordion: the essentials in view, the rest in closed groups, in
# this order.
ESSENTIAL = ""
GROUPS = ("Advanced", "Hires. fix", "Compatibility")


@dataclass(frozen=True)
class ParamSpec:
    name: str  # python / API name
    label: str  # UI label
    kind: type  # bool, int, float or str
    default: Any
    help: str  # hover hint and README text
    minimum: float | None = None
    maximum: float | None = None
    step: float | None = None
    choices: tuple[str, ...] | None = None
    infotext_key: str | None = None  # None: not written (the enable flag is implied by the marker)
    xyz: bool = True  # offered as an X/Y/Z plot axis
    group: str = ESSENTIAL  # ESSENTIAL, or one of GROUPS
    suggestions: tuple[str, ...] | None = None  # common values of free text, offered in a list

    def describe_allowed(self) -> str:
        if self.choices:
            return "one of " + ", ".join(repr(c) for c in self.choices)
        if self.kind is bool:
            return "true or false"
        if self.minimum is not None:
            what = "a whole number" if self.kind is int else "a number"
            return f"{what} from {_fmt(self.minimum)} to {_fmt(self.maximum)}"
        return "text"

    def coerce(self, value: Any) -> Any:
        """Convert ``value`` (from the UI, JSON or infotext text) to this parameter's type, or raise
        ``ValueError`` naming the field and the allowed values."""
        try:
            converted = _convert(self.kind, value)
        except (TypeError, ValueError):
            converted = None
        if converted is None or (self.choices and converted not in self.choices) or (
            self.minimum is not None and not (self.minimum <= converted <= self.maximum)
        ):
            raise ValueError(f"ASAG parameter '{self.name}' ({self.label}): got {value!r}, expected {self.describe_allowed()}")
        return converted


def _fmt(x: float | None) -> str:
    return f"{x:g}"


def _convert(kind: type, value: Any) -> Any:
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, (int, float)) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true"
        return None
    if isinstance(value, bool):
        return None  # True is not a scale
    if kind is int:
        number = float(value)
        return int(number) if number.is_integer() else None
    if kind is float:
        number = float(value)
        return number if math.isfinite(number) else None
    return value.strip() if isinstance(value, str) else None


# Order is the API's positional order: append new parameters at the end, never reorder.
PARAMS: tuple[ParamSpec, ...] = (
    ParamSpec("enabled", "Enable ASAG", bool, False,
              "Turn Adversarial Sinkhorn Attention Guidance on for this generation.", xyz=False),
    ParamSpec("scale", "ASAG scale", float, 1.5,
              "Guidance strength w: the result moves by w * (cond - perturbed). 0 turns the extra pass off. "
              "1 to 3 with CFG; 3 to 5 without CFG.",
              minimum=0.0, maximum=20.0, step=0.05, infotext_key="ASAG scale"),
    ParamSpec("iterations", "Sinkhorn iterations", int, 2,
              "Sinkhorn balancing steps for the adversarial plan. 0 is plain (negated) softmax; "
              "2-3 are nearly balanced; more costs a little time and changes little.",
              minimum=0, maximum=50, step=1, infotext_key="ASAG iterations", group="Advanced"),
    ParamSpec("strength", "Adversarial strength", float, 1.0,
              "lambda: how hard the plan pushes queries away from similar keys. 0 gives uniform attention; "
              "negative values give ordinary balanced attention (an ablation).",
              minimum=-5.0, maximum=5.0, step=0.05, infotext_key="ASAG strength", group="Advanced"),
    ParamSpec("layers", "ASAG layers", str, "middle",
              "Self-attention layers to perturb: auto (the default, middle), all, input, middle, output, or blocks such as m0, d1, d1.0, u0-2 "
              "(d = input, m = middle, u = output; numbered among the blocks that have attention; .N picks a "
              "transformer block), comma separated.",
              infotext_key="ASAG layers", suggestions=("middle", "m0.0-4", "u0-2", "output", "input", "d1.0,m0", "all")),
    ParamSpec("start", "Active from", float, 0.0,
              "Start of the active window, as a fraction of sampling progress (0 = first step).",
              minimum=0.0, maximum=1.0, step=0.01, infotext_key="ASAG start", group="Advanced"),
    ParamSpec("end", "Active until", float, 1.0,
              "End of the active window, as a fraction of sampling progress (1 = last step).",
              minimum=0.0, maximum=1.0, step=0.01, infotext_key="ASAG end", group="Advanced"),
    ParamSpec("progress_by", "Progress measured by", str, "steps",
              "steps: the window counts sampler steps. sigma: the window follows the noise level "
              "(log-sigma between the model's largest and smallest), the same for every sampler and denoise strength.",
              choices=("steps", "sigma"), infotext_key="ASAG progress by", group="Advanced"),
    ParamSpec("schedule", "Scale schedule", str, "constant",
              "How the scale changes over the active window: constant, or a linear or cosine decay "
              "from the full scale at its start to 0 at its end (strong on layout, light on detail).",
              choices=("constant", "linear", "cosine"), infotext_key="ASAG schedule", group="Advanced"),
    ParamSpec("rescale", "ASAG rescale", float, 0.0,
              "Blend towards the guided prediction rescaled to the conditional prediction's standard deviation "
              "(as CFG rescale). Tames over-saturation at high scales. 0 = off.",
              minimum=0.0, maximum=1.0, step=0.05, infotext_key="ASAG rescale", group="Advanced"),
    ParamSpec("hires", "Hires. fix pass", str, "same",
              "What ASAG does in the hires. fix second pass: same settings, override (the two values below), "
              "off, or only (skip the first pass).",
              choices=("same", "override", "off", "only"), infotext_key="ASAG hires", group="Hires. fix"),
    ParamSpec("hires_scale", "Hires. fix scale", float, 1.5,
              "ASAG scale in the hires. fix pass when the hires mode is override.",
              minimum=0.0, maximum=20.0, step=0.05, infotext_key="ASAG hires scale", group="Hires. fix"),
    ParamSpec("hires_iterations", "Hires. fix iterations", int, 2,
              "Sinkhorn iterations in the hires. fix pass when the hires mode is override.",
              minimum=0, maximum=50, step=1, infotext_key="ASAG hires iterations", group="Hires. fix"),
    ParamSpec("full_batch", "Full-batch compatibility", bool, False,
              "Run the extra pass on the whole cond + uncond batch instead of the cond rows only. Slower; "
              "chosen automatically when a ControlNet unit needs it (IP-Adapter, reference, inpaint_only, ...). "
              "A1111 only: Forge batches the extra pass itself.",
              infotext_key="ASAG full batch", xyz=False, group="Compatibility"),
    ParamSpec("dit_layers", "Transformer-model blocks", str, "auto",
              "Blocks to perturb on the transformer models of Forge Neo, where 'ASAG layers' does not apply: auto (the "
              "model's default: double 7-9, single 7-9 on Flux and Chroma; layers 7-9 on Lumina 2 and Z-Image; blocks 7-9 "
              "on Anima and Qwen-Image; on a model with fewer blocks, such as Flux.2 Klein, the same relative depth; the "
              "infotext's ASAG auto blocks names them), all, a kind (double, single; refiner, layers; blocks), or ranges such as double 7-9, single 20 "
              "(the model's own block numbers), comma separated.",
              infotext_key="ASAG DiT blocks", group="Advanced",
              suggestions=("auto", "double 7-9, single 7-9", "single 7-9", "double 7-9", "layers 7-9", "refiner", "blocks 7-9", "all")),
)
assert all(spec.group in (ESSENTIAL, *GROUPS) for spec in PARAMS)

PARAM_BY_NAME: dict[str, ParamSpec] = {spec.name: spec for spec in PARAMS}
PARAM_BY_INFOTEXT_KEY: dict[str, ParamSpec] = {spec.infotext_key: spec for spec in PARAMS if spec.infotext_key}


class _AsagParamsMethods:
    """Behaviour of ``AsagParams``, whose fields are generated from ``PARAMS`` below."""

    def __post_init__(self):
        for spec in PARAMS:
            object.__setattr__(self, spec.name, spec.coerce(getattr(self, spec.name)))
        if self.start > self.end:
            raise ValueError(f"ASAG parameters 'start' and 'end': the window start ({self.start:g}) must not be after its end ({self.end:g})")
        if not self.layers:
            raise ValueError("ASAG parameter 'layers' (ASAG layers): empty, expected a layer list such as 'middle'")
        if not self.dit_layers:
            raise ValueError("ASAG parameter 'dit_layers' (Transformer-model blocks): empty, expected 'auto' or blocks such as 'single 7-9'")

    # ---- readers ---------------------------------------------------------------------------
    @classmethod
    def from_named(cls, fields: Mapping[str, Any], defaults: "AsagParams | None" = None) -> "AsagParams":
        """From a dict of named fields (the API's named form); missing fields take ``defaults``
        (the built-in defaults unless given, e.g. those of the Settings tab)."""
        if not isinstance(fields, Mapping):
            raise ValueError(f"ASAG named arguments must be an object of fields, got {type(fields).__name__}")
        unknown = sorted(set(fields) - set(PARAM_BY_NAME))
        if unknown:
            raise ValueError(f"ASAG: unknown field(s) {', '.join(map(repr, unknown))}; known fields: {', '.join(PARAM_BY_NAME)}")
        return (defaults or cls()).replace(**dict(fields))

    @classmethod
    def from_args(cls, args: Sequence[Any], defaults: "AsagParams | None" = None) -> "AsagParams":
        """From a script's argument list: the positional values in ``PARAMS`` order, or a dict of
        named fields as the first element (the API's named form; its missing fields take
        ``defaults``). The WebUI's API fills the slots after the dict with the UI defaults, so
        those are ignored then."""
        args = list(args)
        if args and isinstance(args[0], Mapping):
            return cls.from_named(args[0], defaults)
        if len(args) > len(PARAMS):
            raise ValueError(f"ASAG: got {len(args)} positional args, at most {len(PARAMS)}: {', '.join(PARAM_BY_NAME)}")
        return cls(**{spec.name: value for spec, value in zip(PARAMS, args)})

    @classmethod
    def from_infotext(cls, params: Mapping[str, str]) -> "AsagParams":
        """From parsed infotext (``key -> text``). No marker key means ASAG was off."""
        if ENABLED_MARKER_KEY not in params:
            return cls(enabled=False)
        values = {spec.name: _unquote(params[key]) for key, spec in PARAM_BY_INFOTEXT_KEY.items() if key in params}
        return cls(enabled=True, **values)

    # ---- writers ---------------------------------------------------------------------------
    def to_args(self) -> list[Any]:
        return [getattr(self, spec.name) for spec in PARAMS]

    def to_infotext(self) -> dict[str, Any]:
        """Infotext entries: the marker always, other values only where they differ from the default."""
        if not self.enabled:
            return {}
        out = {}
        for spec in PARAMS:
            value = getattr(self, spec.name)
            if spec.infotext_key and (spec.infotext_key == ENABLED_MARKER_KEY or value != spec.default):
                out[spec.infotext_key] = round(value, 4) if isinstance(value, float) else value
        return out

    def replace(self, **changes) -> "AsagParams":
        return dataclasses.replace(self, **changes)

    def for_hires_pass(self) -> "AsagParams | None":
        """Settings for the hires. fix second pass, or None when ASAG is off there."""
        if self.hires == "off":
            return None
        if self.hires == "override":
            return self.replace(scale=self.hires_scale, iterations=self.hires_iterations)
        return self

    def runs_first_pass(self) -> bool:
        return self.hires != "only"


def _unquote(text: Any) -> Any:
    # The WebUI JSON-quotes infotext values that contain ',', ':' or a newline (layer lists).
    if isinstance(text, str) and len(text) >= 2 and text[0] == text[-1] == '"':
        try:
            return json.loads(text)
        except ValueError:
            return text
    return text


# One generation's ASAG settings, validated on construction; fields and defaults come from PARAMS.
AsagParams = dataclasses.make_dataclass(
    "AsagParams",
    [(spec.name, spec.kind, dataclasses.field(default=spec.default)) for spec in PARAMS],
    bases=(_AsagParamsMethods,),
    frozen=True,
)
AsagParams.__module__ = __name__  # make_dataclass names the dataclasses module otherwise


def parameter_table_markdown() -> str:
    """The README's parameter table, from ``PARAMS`` (tests/core/test_readme.py keeps them equal)."""
    rows = ["| # | API name | control | default | allowed | infotext key | what it does |", "|---|---|---|---|---|---|---|"]
    for position, spec in enumerate(PARAMS):
        control = spec.label if spec.group == ESSENTIAL else f"{spec.label} (in {spec.group})"
        rows.append(f"| {position} | `{spec.name}` | {control} | `{_shown_default(spec.default)}` | {spec.describe_allowed()} | "
                    f"{spec.infotext_key or '(presence of ASAG scale)'} | {spec.help} |")
    return "\n".join(rows)


def _shown_default(value: Any) -> str:
    """A default as the README's table shows it: true/false, numbers short, text quoted."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, str) else _fmt(value)
