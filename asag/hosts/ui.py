"""The ASAG accordion, built from the parameter table.

Uses only gradio API that both the WebUI's gradio 3.41.2 and Forge's gradio 4.40 support.
"""
from __future__ import annotations

import contextlib

import gradio as gr

from ..params import ESSENTIAL, GROUPS, PARAM_BY_NAME, PARAMS, AsagParams, ParamSpec
from .hints import ACCORDION_LABEL
from .settings import DEFAULT_KEYS
from .infotext import PASTE_ENABLED_KEY


# How the controls are arranged in rows. Which group a row belongs to comes from PARAMS: the
# essentials in view when the accordion opens, every other group a closed accordion inside it.
# Every parameter except the enable flag appears exactly once.
LAYOUT: tuple[tuple[str, ...], ...] = (
    ("scale", "layers"),
    ("iterations", "strength"),
    ("start", "end"),
    ("progress_by", "schedule"),
    ("rescale",),
    ("dit_layers",),
    ("hires",),
    ("hires_scale", "hires_iterations"),
    ("full_batch",),
)
assert sorted(n for row in LAYOUT for n in row) == sorted(s.name for s in PARAMS if s.name != "enabled")
assert all(len({PARAM_BY_NAME[n].group for n in row}) == 1 for row in LAYOUT), "a row must not span groups"


def group_rows(group: str) -> list[tuple[str, ...]]:
    return [row for row in LAYOUT if PARAM_BY_NAME[row[0]].group == group]


def group_id(group: str) -> str:
    """The elem_id suffix of a group's accordion: "group_advanced", "group_hires_fix", ..."""
    return "group_" + "_".join("".join(c if c.isalnum() else " " for c in group.lower()).split())


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
    if spec.suggestions:  # a list of the common values that still takes any value typed
        return gr_module.Dropdown, {"choices": list(spec.suggestions), "allow_custom_value": True}
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
        for group in (ESSENTIAL, *GROUPS):
            holder = contextlib.nullcontext() if group == ESSENTIAL else gr.Accordion(group, open=False, elem_id=script.elem_id(group_id(group)))
            with holder:
                for row in group_rows(group):
                    with gr.Row():
                        for name in row:
                            by_name[name] = _component(PARAM_BY_NAME[name], getattr(defaults, name), script.elem_id(name))
    components = [by_name[spec.name] for spec in PARAMS]
    infotext_fields = [(by_name[spec.name], paste_key(spec)) for spec in PARAMS]
    paste_field_names = [paste_key(spec) for spec in PARAMS]
    return components, infotext_fields, paste_field_names
