"""The ASAG accordion, built from the parameter table.

Uses only gradio API that both the WebUI's gradio 3.41.2 and Forge's gradio 4.40 support.
"""
from __future__ import annotations

import gradio as gr

from ..params import PARAMS, AsagParams, ParamSpec
from .hints import ACCORDION_LABEL
from .settings import DEFAULT_KEYS
from .infotext import PASTE_ENABLED_KEY


# How the controls are arranged; every parameter except the enable flag appears exactly once.
LAYOUT: tuple[tuple[str, ...], ...] = (
    ("scale", "iterations"),
    ("strength", "rescale"),
    ("layers",),
    ("start", "end", "progress_by"),
    ("schedule",),
    ("hires", "hires_scale", "hires_iterations"),
    ("full_batch",),
)
assert sorted(n for row in LAYOUT for n in row) == sorted(s.name for s in PARAMS if s.name != "enabled")


def paste_key(spec: ParamSpec) -> str:
    return spec.infotext_key or PASTE_ENABLED_KEY


def control_for(spec: ParamSpec, gr_module=gr):
    """The gradio class and keyword arguments (less label, value and elem_id) for ``spec``'s control;
    the Settings tab uses the same mapping."""
    if spec.kind is bool:
        return gr_module.Checkbox, {}
    if spec.choices:
        return gr_module.Radio, {"choices": list(spec.choices)}
    if spec.minimum is not None:
        return gr_module.Slider, {"minimum": spec.minimum, "maximum": spec.maximum, "step": spec.step}
    return gr_module.Textbox, {"lines": 1, "max_lines": 1}


def _component(spec: ParamSpec, value, elem_id: str):
    component, args = control_for(spec)
    made = component(label=spec.label, value=value, elem_id=elem_id, **args)
    if spec.name in DEFAULT_KEYS:
        # The default comes from the Settings tab; the WebUI's ui-config.json would otherwise record
        # the first one it sees and override every later change of the setting.
        made.do_not_save_to_config = True
    return made


def build_ui(script, input_accordion_cls, defaults: AsagParams = AsagParams()):
    """Create the controls inside the current gradio context, with ``defaults`` as their values
    (``settings.current_defaults(shared.opts)`` in the Script).

    Returns ``(components, infotext_fields, paste_field_names)``: components in ``PARAMS`` order
    (the API's positional order); the other two for the Script attributes of the same names.
    """
    by_name = {}
    with input_accordion_cls(defaults.enabled, label=ACCORDION_LABEL, elem_id=script.elem_id("enabled")) as enabled:
        by_name["enabled"] = enabled
        for row in LAYOUT:
            with gr.Row():
                for name in row:
                    spec = next(s for s in PARAMS if s.name == name)
                    by_name[name] = _component(spec, getattr(defaults, name), script.elem_id(name))
    components = [by_name[spec.name] for spec in PARAMS]
    infotext_fields = [(by_name[spec.name], paste_key(spec)) for spec in PARAMS]
    paste_field_names = [paste_key(spec) for spec in PARAMS]
    return components, infotext_fields, paste_field_names
