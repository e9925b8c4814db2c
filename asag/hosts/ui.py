"""The ASAG accordion, built from the parameter table.

Uses only gradio API that the WebUI's gradio 3.41.2, Forge Classic's 3.43.2 and Forge's 4.40 all
support.
"""
from __future__ import annotations

import contextlib
import functools

import gradio as gr
from gradio.context import Context

from ..log import logger
from ..params import ESSENTIAL, GROUPS, PARAM_BY_NAME, PARAMS, AsagParams, ParamSpec
from . import model_view
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
# Where the page's model decides which block control applies (Forge Neo runs UNets and transformer
# models from one page: ModelFollower), the transformer blocks sit in view beside the UNet layers,
# one of the two shown; elsewhere they wait in their group.
FOLLOWING_LAYOUT = tuple(row + ("dit_layers",) if "layers" in row else row for row in LAYOUT if row != ("dit_layers",))


def group_rows(group: str, layout=LAYOUT) -> list[tuple[str, ...]]:
    return [row for row in layout if PARAM_BY_NAME[row[0]].group == group]


def group_id(group: str) -> str:
    """The elem_id suffix of a group's accordion: "group_advanced", "group_hires_fix", ..."""
    return "group_" + "_".join("".join(c if c.isalnum() else " " for c in group.lower()).split())


def paste_key(spec: ParamSpec) -> str:
    return spec.infotext_key or PASTE_ENABLED_KEY


def control_for(spec: ParamSpec, gr_module=gr):
    """What makes ``spec``'s control, and the keyword arguments (less label, value and elem_id) to
    call it with; the Settings tab uses the same mapping.

    The WebUI's Settings tab also sends those arguments back as an update of its control on every
    page load (``get_value_for_setting``), and gradio 3's ``Component.update`` takes fewer keywords
    than the constructor: a keyword that only the constructor knows is bound into the maker instead.
    """
    if spec.kind is bool:
        return gr_module.Checkbox, {}
    if spec.choices:
        return gr_module.Radio, {"choices": list(spec.choices)}
    if spec.minimum is not None:
        return gr_module.Slider, {"minimum": spec.minimum, "maximum": spec.maximum, "step": spec.step}
    if spec.suggestions:  # a list of the common values that still takes any value typed
        return functools.partial(gr_module.Dropdown, allow_custom_value=True), {"choices": list(spec.suggestions)}
    return gr_module.Textbox, {"lines": 1, "max_lines": 1}


def _component(spec: ParamSpec, value, elem_id: str, **shown):
    make, args = control_for(spec)
    made = make(label=spec.label, value=value, elem_id=elem_id, **args, **shown)
    if spec.name in DEFAULT_KEYS:
        # The default comes from the Settings tab; the WebUI's ui-config.json would otherwise record
        # the first one it sees and override every later change of the setting.
        made.do_not_save_to_config = True
    return made


def build_ui(script, input_accordion_cls, defaults: AsagParams = AsagParams(), follower: ModelFollower | None = None):
    """Create the controls inside the current gradio context, with ``defaults`` as their values
    (``settings.current_defaults(shared.opts)`` in the Script). With a ``follower`` (Forge Neo),
    the block control in view is the one that applies to the page's model.

    Returns ``(components, infotext_fields, paste_field_names)``: components in ``PARAMS`` order
    (the API's positional order); the other two for the Script attributes of the same names.
    """
    layout = FOLLOWING_LAYOUT if follower else LAYOUT
    shown = follower.shown(follower.initial_view()) if follower else {}
    by_name = {}
    with input_accordion_cls(defaults.enabled, label=ACCORDION_LABEL, elem_id=script.elem_id("enabled")) as enabled:
        by_name["enabled"] = enabled
        for group in (ESSENTIAL, *GROUPS):
            holder = contextlib.nullcontext() if group == ESSENTIAL else gr.Accordion(group, open=False, elem_id=script.elem_id(group_id(group)))
            with holder:
                for row in group_rows(group, layout):
                    with gr.Row():
                        for name in row:
                            by_name[name] = _component(PARAM_BY_NAME[name], getattr(defaults, name), script.elem_id(name), **shown.get(name, {}))
    if follower:
        follower.add_controls(by_name["layers"], by_name["dit_layers"])
    components = [by_name[spec.name] for spec in PARAMS]
    infotext_fields = [(by_name[spec.name], paste_key(spec)) for spec in PARAMS]
    paste_field_names = [paste_key(spec) for spec in PARAMS]
    return components, infotext_fields, paste_field_names


class ModelFollower:
    """Keeps in view the block control that applies to the model selected on Forge Neo's page:
    "ASAG layers" for a UNet, "Transformer-model blocks" for a transformer model, with the model's
    blocks and what ``auto`` selects on it under it (asag/hosts/model_view.py; both where the
    model cannot be told). The hidden control keeps its value, which still reaches the script.

    ``capture`` (``script_callbacks.on_after_component``) keeps Neo's preset and checkpoint
    selectors. Neo makes them after the tabs' scripts (modules/ui.py: in the quicksettings of the
    page that then renders the tabs), so once both exist, the controls of every ASAG block built
    so far are wired to them: on a change of either, and on page load."""

    SELECTORS = ("forge_ui_preset", "setting_sd_model_checkpoint")

    def __init__(self):
        self.controls: dict[str, tuple] = {}  # per tab (the layer control's elem_id): (layers, dit_layers)
        self.selectors: dict[str, object] = {}

    @staticmethod
    def initial_view() -> model_view.ModelView:
        return _safe_view(model_view.current_view)

    @staticmethod
    def shown(view: model_view.ModelView) -> dict[str, dict]:
        """The two controls' visibility (and the transformer one's info) for ``view``."""
        return {"layers": {"visible": view.unet}, "dit_layers": {"visible": view.transformer, "info": view.info}}

    def add_controls(self, layers, dit_layers) -> None:
        self.controls[layers.elem_id] = (layers, dit_layers)  # a tab built again replaces its own

    def capture(self, component, **_kwargs) -> None:
        elem_id = getattr(component, "elem_id", None)
        if elem_id in self.SELECTORS:
            self.selectors[elem_id] = component
            if len(self.selectors) == len(self.SELECTORS):
                self._wire(*(self.selectors.pop(name) for name in self.SELECTORS))

    def _wire(self, preset, checkpoint) -> None:
        pairs = list(self.controls.values())
        if not pairs:
            return

        def updates(view):
            shown = self.shown(view)
            return [gr.update(**shown["layers"]), gr.update(**shown["dit_layers"])] * len(pairs)

        def on_checkpoint(preset_value, checkpoint_value):
            return updates(_safe_view(model_view.view_for, preset_value, checkpoint_value))

        def on_preset(preset_value, checkpoint_value):  # the checkpoint Neo selects with the preset, not yet shown
            return updates(_safe_view(lambda: model_view.view_for(preset_value, model_view.checkpoint_for_preset(preset_value, checkpoint_value))))

        outputs = [control for pair in pairs for control in pair]
        preset.change(fn=on_preset, inputs=[preset, checkpoint], outputs=outputs, queue=False, show_progress="hidden")
        checkpoint.change(fn=on_checkpoint, inputs=[preset, checkpoint], outputs=outputs, queue=False, show_progress="hidden")
        Context.root_block.load(fn=lambda: updates(self.initial_view()), inputs=[], outputs=outputs, queue=False, show_progress="hidden")


def _safe_view(view_function, *args) -> model_view.ModelView:
    # One unreadable checkpoint must not break the page: both controls shown, and why.
    try:
        return view_function(*args)
    except Exception as err:  # noqa: BLE001
        logger.warning("could not tell the selected model (%s: %s); both block controls shown", type(err).__name__, err)
        return model_view.unknown_view("the selected checkpoint", f"{type(err).__name__}: {err}")
