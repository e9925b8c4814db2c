"""Builds the ASAG UI block under a given gradio, and shows it in headless Chromium.

Runs inside one of the gradio venvs that tests/run.sh makes (``.venv-gradio3``: the WebUI's
gradio 3.41.2 and Playwright; ``.venv-gradio4``: Forge's gradio 4.40.0; ``.venv-gradio3-classic``:
Forge Classic's gradio 3.43.2), which have no torch. The pytest tests in this folder start it as a
subprocess and read the JSON it prints:

    python tests/ui/harness.py describe --host HOST
    python tests/ui/harness.py browser --host HOST [--screenshot-dir DIR]

The page holds what the host's page holds where the extension meets it, from the stand-ins in
standin/: the Settings tab with the ASAG section (and a quicksetting), both tabs' ASAG blocks, the
X/Y/Z plot's axis row, a paste box and "Send to img2img"; on Forge Neo's page (``--host neo``)
also Neo's model selectors, checkpoint files and loaded model. ``describe`` runs the page's
events through gradio's own event processing (``Blocks.process_api``, what a browser's request
reaches) and reports any exception; ``browser`` loads it in Chromium.

``asag/__init__.py`` re-exports the torch core, so the package is entered without running it:
the UI chain (params, hosts.ui, hosts.hints, hosts.settings, layers) needs no torch, and as these
venvs have none, an import of torch anywhere in that chain fails here.
"""
from __future__ import annotations

import argparse
import asyncio
import functools
import inspect
import json
import os
import re
import socket
import sys
import tempfile
import traceback
import types
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
EXTENSION_DIR = os.path.join(ROOT, "asag") + os.sep

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
import gradio as gr  # noqa: E402

GRADIO_MAJOR = int(gr.__version__.split(".")[0])
sys.path.insert(0, os.path.join(HERE, "standin", f"gradio{GRADIO_MAJOR}"))
sys.path.insert(0, ROOT)
_package = types.ModuleType("asag")
_package.__path__ = [os.path.join(ROOT, "asag")]
sys.modules["asag"] = _package

from modules import scripts as host_scripts  # noqa: E402  (the stand-ins for this gradio)
from modules import shared, ui_settings  # noqa: E402
from modules.ui_components import InputAccordion  # noqa: E402

from asag.hosts import settings, ui  # noqa: E402
from asag.hosts import xyz as asag_xyz  # noqa: E402
from asag.params import PARAM_BY_NAME, PARAMS, AsagParams  # noqa: E402
from tests.ui.cases import (APPLIED_VALUES, HOST_SETTING, LOADED_BLOCKS, LOADED_CHECKPOINT, NEO_CHECKPOINTS,  # noqa: E402
                            NEO_START, PASTED_FIELDS, QUICKSETTING_VALUE, QUICKSETTINGS, REFRESHED_VALUES,
                            TYPED_DIT_LAYERS, TYPED_LAYERS, safetensors_bytes)

# Values the tests set in the Settings tab, different from the built-in defaults.
SETTINGS_VALUES = {"asag_default_scale": 3.25, "asag_default_layers": "u0-2, m0", "asag_diagnostics": True}


class Tab:
    """What ``build_ui`` needs of a Script: ``elem_id``, as the WebUI's ``Script.elem_id`` builds
    it for an AlwaysVisible script titled "ASAG" (shown on both tabs, so the tab is in the id)."""

    def __init__(self, tabname: str):
        self.tabname = tabname

    def elem_id(self, item_id: str) -> str:
        title = re.sub(r"[^a-z_0-9]", "", re.sub(r"\s", "_", "ASAG".lower()))
        return f"script_{self.tabname}_{title}_{item_id}"


def setup_options(settings_values: dict) -> None:
    """``shared.opts`` as the WebUI has it when the page is built: the host's options, then the
    extensions' (``on_ui_settings``, which imports gradio and ``modules.shared`` itself), then the
    values of the settings file."""
    key, default, label, section = HOST_SETTING
    shared.opts.add_option(key, shared.OptionInfo(default, label, gr.Slider, {"minimum": 1, "maximum": 12, "step": 1}, section=section))
    settings.on_ui_settings()
    for info in shared.opts.data_labels.values():
        if info.section == settings.SECTION:
            info.component = CALLS.recorded(info.component)
    shared.opts.data.update(settings_values)
    shared.config_filename = os.path.join(tempfile.mkdtemp(prefix="asag-ui-config-"), "config.json")


class GradioCalls:
    """The keywords the extension passes to gradio: to each constructor it calls (and to the makers
    it gives the Settings tab), and in each update returned to a control it made. Recorded by class,
    the gradio class a host class derives from (InputAccordion's is Checkbox)."""

    def __init__(self):
        self.constructed: dict[str, set] = {}
        self.updated: dict[str, set] = {}
        self.ours: set[int] = set()  # id() of every block the extension made

    @staticmethod
    def gradio_class(block) -> str:
        return next(c.__name__ for c in type(block).__mro__ if c.__module__.startswith("gradio."))

    def add(self, table, name, keywords):
        table.setdefault(name, set()).update(keywords)

    def watch_constructors(self):
        """Wrap the constructor of every gradio block class: a call from the extension's code is recorded."""
        for cls in {obj for obj in vars(gr).values() if isinstance(obj, type) and issubclass(obj, gr.blocks.Block)}:
            if "__init__" in vars(cls):
                cls.__init__ = self._watched(cls.__init__)

    def _watched(self, init):
        names = _parameter_names(init)

        @functools.wraps(init)
        def watched(block, *args, **kwargs):
            caller = sys._getframe(1).f_code.co_filename
            if caller.startswith(EXTENSION_DIR):
                self.ours.add(id(block))
                self.add(self.constructed, type(block).__name__, names[1:1 + len(args)] + list(kwargs))
            return init(block, *args, **kwargs)
        return watched

    def recorded(self, make, name=None):
        """``make`` with its calls recorded: a maker the extension hands to the host (each call's
        keywords, a partial's bound ones included), or a host class the extension calls (``name``)."""
        bound = getattr(make, "keywords", {}) or {}

        @functools.wraps(make)
        def maker(*args, **kwargs):
            made = make(*args, **kwargs)
            self.ours.add(id(made))
            self.add(self.constructed, name or type(made).__name__,
                     _parameter_names(make)[:len(args)] + list(kwargs) + list(bound))
            return made
        return maker

    def returned(self, outputs, values):
        for block, value in zip(outputs, values):
            if id(block) in self.ours and isinstance(value, dict) and "__type__" in value:
                self.add(self.updated, self.gradio_class(block), set(value) - {"__type__"})

    def report(self):
        return {"constructed": {k: sorted(v) for k, v in self.constructed.items()},
                "updated": {k: sorted(v) for k, v in self.updated.items()}}


def _parameter_names(fn) -> list:
    try:
        return [p.name for p in inspect.signature(fn).parameters.values() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    except (TypeError, ValueError):
        return []


def gradio_signatures() -> dict:
    """The named parameters of every gradio block class's constructor, and (gradio 3) of its
    ``update``, which is what a returned ``gr.update(...)`` goes through there."""
    out = {}
    for name, cls in vars(gr).items():
        if isinstance(cls, type) and issubclass(cls, gr.blocks.Block):
            update = getattr(cls, "update", None) if GRADIO_MAJOR == 3 else None
            out[name] = {"init": _parameter_names(cls.__init__)[1:], "update": _parameter_names(update) if update else None}
    return out


def event_signatures() -> dict:
    """The named parameters of the event listeners the extension calls: a component's ``change``
    and ``input``, and the page's ``load``."""
    with gr.Blocks() as blocks:
        dropdown = gr.Dropdown()
        return {"change": _parameter_names(dropdown.change), "input": _parameter_names(dropdown.input), "load": _parameter_names(blocks.load)}


CALLS = GradioCalls()
CALLS.watch_constructors()


def _plain(value):
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _choices(component):
    choices = getattr(component, "choices", None)
    if choices is None:
        return None
    # gradio 4 stores (display, value) pairs
    return [c[1] if isinstance(c, (list, tuple)) else c for c in choices]


def _describe_component(component):
    return {
        "type": type(component).__name__,
        "elem_id": component.elem_id,
        "label": component.label,
        "value": _plain(component.value),
        "visible": component.visible,
        "minimum": getattr(component, "minimum", None),
        "maximum": getattr(component, "maximum", None),
        "step": getattr(component, "step", None),
        "choices": _choices(component),
        "do_not_save_to_config": bool(getattr(component, "do_not_save_to_config", False)),
    }


def build_page(settings_values: dict, host: str) -> types.SimpleNamespace:
    """The page of ``host`` as the WebUI builds it where the extension meets it, with
    ``settings_values`` in the settings file (modules/ui.py ``create_ui``: each tab is built as a
    Blocks of its own, its scripts' UI in it; then the page: the Settings tab's controls, the
    quicksettings (on Forge Neo, first its model selectors), the tabs rendered, the Settings tab's
    events, Neo's preset events). Under the txt2img block: a paste box wired as the WebUI wires
    its paste button, and a button that shows what the Script would receive. Returns the demo and
    its parts."""
    setup_options(settings_values)
    page = types.SimpleNamespace(built={}, settings=ui_settings.UiSettings(), follower=None)
    if host == "neo":
        page.follower = setup_neo()
    xyz_path = os.path.join(HERE, "standin", "scripts", "xyz_grid.py")
    xyz_module = host_scripts.load_module(xyz_path)
    host_scripts.scripts_data.append(host_scripts.ScriptClassData(xyz_module.Script, xyz_path, HERE, xyz_module))
    asag_xyz.add_axes()  # on_before_ui
    page.xyz = xyz_module.Script()
    accordion = CALLS.recorded(InputAccordion, name="InputAccordion")
    theme_args = {}
    if GRADIO_MAJOR == 3:
        # The WebUI's theme names its fonts without fetching them (modules/shared_gradio_themes.py).
        theme_args["theme"] = gr.themes.Default(font=["Source Sans Pro", "ui-sans-serif", "system-ui", "sans-serif"],
                                                font_mono=["IBM Plex Mono", "ui-monospace", "Consolas", "monospace"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with gr.Blocks(analytics_enabled=False) as tabs_interface:
            gr.Textbox(label="Prompt", elem_id="txt2img_prompt")  # the WebUI's "page is built" signal
            for tabname in ("txt2img", "img2img"):
                with gr.Group():
                    defaults = settings.current_defaults(shared.opts)
                    follows = {"follower": page.follower} if page.follower else {}  # as scripts/asag.py: on Forge Neo
                    page.built[tabname] = ui.build_ui(Tab(tabname), accordion, defaults, **follows)
            with gr.Group():
                page.xyz_controls = page.xyz.ui(is_img2img=False)
            components, infotext_fields, paste_field_names = page.built["txt2img"]
            page.infotext = gr.Textbox(label="Infotext to paste", elem_id="asag_test_infotext", interactive=True)
            page.paste = gr.Button("Paste", elem_id="asag_test_paste")
            page.paste.click(fn=paste_function(infotext_fields), inputs=[page.infotext], outputs=[c for c, _ in infotext_fields])
            page.send_to_img2img = gr.Button("Send to img2img", elem_id="asag_test_send_to_img2img")
            send_to_img2img(page.send_to_img2img, infotext_fields, page.built["img2img"][1], paste_field_names)
            values = gr.Textbox(label="Script args", elem_id="asag_test_values", interactive=True)
            read = gr.Button("Read args", elem_id="asag_test_read")
            read.click(fn=lambda *args: json.dumps(args), inputs=components, outputs=[values])
        with gr.Blocks(analytics_enabled=False, title="ASAG UI test", **theme_args) as demo:
            dummy_component = gr.Label(visible=False)
            page.settings.create_ui(dummy_component, QUICKSETTINGS)
            if host == "neo":
                from modules_forge import main_entry

                with gr.Row(elem_id="quicksettings_models"):  # Neo: first in the quicksettings row
                    main_entry.make_checkpoint_manager_ui()
                page.preset, page.checkpoint = main_entry.ui_forge_preset, main_entry.ui_checkpoint
            page.settings.add_quicksettings()
            tabs_interface.render()
            page.settings.add_functionality(demo)
            if host == "neo":
                main_entry.forge_main_entry()
    page.demo, page.warnings = demo, _warnings(caught)
    return page


def setup_neo():
    """Forge Neo as the page meets it: its component callbacks (modules/gradio_extensions.py,
    imported at startup), its options for the preset and the checkpoints, the checkpoint files
    (tests/ui/cases.py NEO_CHECKPOINTS, in a temporary folder), the loaded model; and ASAG's
    follower registered as scripts/asag.py registers it where ``model_view.follows_model``."""
    from modules import gradio_extensions  # noqa: F401
    from modules import script_callbacks, sd_models
    from modules_forge.presets import PresetArch

    folder = tempfile.mkdtemp(prefix="asag-ui-checkpoints-")
    for name, (_, keys) in NEO_CHECKPOINTS.items():
        with open(os.path.join(folder, name), "wb") as f:
            f.write(safetensors_bytes(keys) if keys is not None else b"GGUF\x03\x00\x00\x00" + bytes(64))
        sd_models.CheckpointInfo(os.path.join(folder, name)).register()
    hidden = (None, "Forge Hidden options")  # Neo's modules/shared_options.py, modules_forge/presets.py register
    shared.opts.add_option("sd_model_checkpoint", shared.OptionInfo(None, "Stable Diffusion checkpoint", section=hidden))
    shared.opts.add_option("forge_preset", shared.OptionInfo("sd", "UI Preset", section=hidden))
    for preset in PresetArch:
        shared.opts.add_option(f"forge_checkpoint_{preset.name}", shared.OptionInfo(None, "Checkpoint", section=hidden))
    shared.opts.data.update({f"forge_checkpoint_{preset}": name for name, (preset, _) in NEO_CHECKPOINTS.items()})
    shared.opts.data.update(forge_preset=NEO_START[0], sd_model_checkpoint=NEO_START[1])
    sd_models.model_data.sd_model = loaded_model(sd_models.get_closet_checkpoint_match(LOADED_CHECKPOINT))
    follower = ui.ModelFollower()
    script_callbacks.on_after_component(follower.capture)
    return follower


def loaded_model(checkpoint_info):
    """Neo's loaded model as far as the page reads it (backend/diffusion_engine: a
    ForgeDiffusionEngine; modules/sd_models.py forge_model_reload sets its checkpoint info): a
    Chroma transformer, of the class Neo's backend/nn/chroma.py defines, with its block lists."""
    diffusion_model = type("IntegratedChromaTransformer2DModel", (), {"__module__": "backend.nn.chroma"})()
    for attribute, count in LOADED_BLOCKS.items():
        setattr(diffusion_model, attribute, [None] * count)
    unet = types.SimpleNamespace(model=types.SimpleNamespace(diffusion_model=diffusion_model))
    return types.SimpleNamespace(sd_checkpoint_info=checkpoint_info, is_sd1=False, is_sdxl=False,
                                 forge_objects=types.SimpleNamespace(unet=unet))


def send_to_img2img(button, source_fields, destination_fields, paste_field_names):
    """modules/infotext_utils.py (v1.10.1) ``connect_paste_params_buttons``, a binding with a
    source tab: the fields named in the binding's ``paste_field_names`` (the scripts' among them)
    are copied from the source tab's fields to the destination's as they are."""
    button.click(
        fn=lambda *x: x,
        inputs=[field for field, name in source_fields if name in paste_field_names],
        outputs=[field for field, name in destination_fields if name in paste_field_names],
        show_progress=False,
    )


# modules/infotext_utils.py of v1.10.1 (Forge dfdcbab: the same), as far as the paste button goes:
# parse_generation_parameters' last line, the on_infotext_pasted callbacks, then paste_func's
# value per field (None: no change; else cast to the type of the component's value).
RE_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
RE_IMAGESIZE = re.compile(r"^(\d+)x(\d+)$")


def parse_generation_parameters(line: str) -> dict:
    params = {}
    for key, value in RE_PARAM.findall(line.strip()):
        if value[:1] == '"' and value[-1:] == '"':
            value = json.loads(value)
        size = RE_IMAGESIZE.match(value)
        if size:
            params[key + "-1"], params[key + "-2"] = size.group(1), size.group(2)
        else:
            params[key] = value
    return params


def paste_function(infotext_fields):
    from asag.hosts import infotext as asag_infotext

    def paste(text):
        params = parse_generation_parameters(text)
        asag_infotext.fill_pasted_params(text, params)  # on_infotext_pasted
        updates = []
        for output, key in infotext_fields:
            value = key(params) if callable(key) else params.get(key, None)
            if value is None:
                updates.append(gr.update())
                continue
            kind = type(output.value)
            if kind == bool and value == "False":
                value = False
            elif kind == int:
                value = float(value)
            else:
                value = kind(value)
            updates.append(gr.update(value=value))
        return updates
    return paste


def _descendants(block, stop_at=None) -> list:
    """Every block inside ``block`` in order, not entering blocks of type ``stop_at``."""
    found = []
    for child in getattr(block, "children", []):
        found.append(child)
        if type(child).__name__ != stop_at:
            found += _descendants(child, stop_at)
    return found


def _warnings(caught) -> list[dict]:
    return [{"category": w.category.__name__, "message": str(w.message).strip(), "filename": w.filename} for w in caught]


def describe(host: str) -> dict:
    page = build_page(SETTINGS_VALUES, host)
    config = page.demo.get_config_file()
    config_by_id = {c["props"].get("elem_id"): c for c in config["components"] if c.get("props", {}).get("elem_id")}
    tabs = {}
    for tabname, (components, infotext_fields, paste_field_names) in page.built.items():
        enabled = components[0]
        accordion = getattr(enabled, "accordion", None)
        tabs[tabname] = {
            "components": [_describe_component(c) for c in components],
            "accordion": None if accordion is None else {
                "type": type(accordion).__name__,
                "elem_id": accordion.elem_id,
                "label": accordion.label,
                "open": accordion.open,
                "elem_classes": list(accordion.elem_classes or []),
            },
            "infotext_fields": [[components.index(c) if c in components else None, key] for c, key in infotext_fields],
            "paste_field_names": list(paste_field_names),
            # the blocks nested in the accordion: each group's label, state and the controls inside
            "groups": [{"elem_id": block.elem_id, "label": block.label, "open": block.open,
                        "controls": [c.elem_id for c in _descendants(block) if c in components]}
                       for block in _descendants(accordion) if type(block).__name__ == "Accordion"],
            "in_view": [c.elem_id for c in _descendants(accordion, stop_at="Accordion") if c in components],
        }
    # what the page receives for each element with an id
    config = {elem_id: dict({k: c["props"].get(k) for k in ("label", "value", "visible", "open", "elem_classes")}, type=c.get("type"))
              for elem_id, c in config_by_id.items()}
    settings_out = {}
    for key, info in shared.opts.data_labels.items():
        if info.section == settings.SECTION:
            made = page.settings.component_dict[key]  # as the Settings tab made it (create_setting_component)
            settings_out[key] = {"label": info.label, "default": info.default, "section": list(info.section),
                                 "comment": info.comment_after, "quicksetting": key in QUICKSETTINGS,
                                 "component": dict(_describe_component(made), allow_custom_value=getattr(made, "allow_custom_value", None))}
    return {"gradio": gr.__version__, "warnings": page.warnings, "tabs": tabs, "config": config,
            "settings": settings_out, "settings_values": SETTINGS_VALUES, "events": run_events(page),
            "gradio_calls": CALLS.report(), "signatures": gradio_signatures(), "event_signatures": event_signatures()}


# ---- the page's events, through gradio's own processing -------------------------------------

def _handler(demo, trigger=None, event=None, outputs=None):
    """What ``Blocks.process_api`` takes for the one event handler on ``trigger``'s ``event`` (the
    demo's "load": ``trigger`` None) whose outputs are ``outputs`` (when given): gradio 3 the
    handler's index, gradio 4 its BlockFunction; with the BlockFunction and its output blocks."""
    if GRADIO_MAJOR == 3:
        handlers = [([(t, dep["trigger"]) for t in dep["targets"]] or [(None, dep["trigger"])], [demo.blocks[i] for i in dep["outputs"]], fn, index)
                    for index, (dep, fn) in enumerate(zip(demo.dependencies, demo.fns))]
    else:
        handlers = [([(None if t == demo._id else t, e) for t, e in fn.targets], list(fn.outputs), fn, fn) for fn in demo.fns.values()]
    found = [(key, fn, outs) for targets, outs, fn, key in handlers
             if fn.fn is not None and (None if trigger is None else trigger._id, event) in targets
             and (outputs is None or [o._id for o in outs] == [o._id for o in outputs])]
    assert len(found) == 1, f"{len(found)} handlers for {event} of {trigger}"
    return found[0]


def run_event(page, name: str, handler, inputs: list) -> dict:
    """Run one event as a browser request does (inputs preprocessed, the handler, outputs
    postprocessed, updates applied), in the page's session. An exception is the result."""
    key, block_fn, outputs = handler
    original = block_fn.fn

    @functools.wraps(original)
    def watched(*args, **kwargs):
        out = original(*args, **kwargs)
        CALLS.returned(outputs, [out] if len(outputs) == 1 else list(out))  # before gradio takes the updates apart
        return out

    block_fn.fn = watched
    try:
        if GRADIO_MAJOR == 3:
            result = asyncio.run(page.demo.process_api(fn_index=key, inputs=inputs, state=page.session))
        else:
            result = asyncio.run(page.demo.process_api(block_fn=key, inputs=inputs, state=page.session))
        outcome = {"event": name, "error": None, "data": json.loads(json.dumps(result["data"], default=repr))}
    except Exception:  # whatever the page would have shown as an error
        outcome = {"event": name, "error": traceback.format_exc(), "data": None}
    finally:
        block_fn.fn = original
    return outcome


def run_events(page) -> list[dict]:
    """Every event of the page where the extension's controls, options or axes take part, in the
    order a user meets them in one session."""
    if GRADIO_MAJOR == 3:
        page.session = {}
    else:
        from gradio.state_holder import SessionState
        page.session = SessionState(page.demo)
    demo, settings_ui = page.demo, page.settings
    events = []
    # Settings changed since the page was built: the page load shows them (ui_settings add_functionality).
    shared.opts.data.update(REFRESHED_VALUES)
    refreshed = [settings_ui.component_dict[k] for k in shared.opts.data_labels if k in settings_ui.component_dict]
    events.append(dict(run_event(page, "settings refresh on page load", _handler(demo, None, "load", refreshed), []),
                       outputs=[c.elem_id for c in refreshed]))
    # A quicksetting changed: stored, and the control updated as on load (run_settings_single).
    quick = settings_ui.component_dict[QUICKSETTINGS[0]]
    events.append(run_event(page, "quicksetting change", _handler(demo, quick, "change"), [QUICKSETTING_VALUE]))
    # "Apply settings": every control's value as the page holds it (the quicksetting's place: the dummy).
    applied = [None if c is settings_ui.dummy_component else APPLIED_VALUES.get(key, getattr(shared.opts, key))
               for key, c in zip(shared.opts.data_labels, settings_ui.components)]
    events.append(run_event(page, "apply settings", _handler(demo, settings_ui.submit, "click"), applied))
    # The values stored, to compare: what the Settings tab saved, and the defaults read from it now.
    events[-1]["stored"] = {k: shared.opts.data.get(k) for k in shared.opts.data_labels}
    events[-1]["defaults_now"] = settings.current_defaults(shared.opts).to_args()
    # A paste of a generation's infotext, and "Send to img2img" of what it filled in.
    pasted = AsagParams(**PASTED_FIELDS)
    events.append(run_event(page, "paste", _handler(demo, page.paste, "click"), [infotext_line(pasted)]))
    events.append(run_event(page, "send to img2img", _handler(demo, page.send_to_img2img, "click"), pasted.to_args()))
    # The X/Y/Z plot: each ASAG axis chosen as X, and the fill button of those with choices.
    x_type, x_values, x_values_dropdown, csv_mode = page.xyz_controls
    for option in page.xyz.current_axis_options:
        if option.label.startswith(asag_xyz.AXIS_PREFIX):
            events.append(dict(run_event(page, f"xyz select {option.label}", _handler(demo, x_type, "change"), [option.label, "", [], False]),
                               label=option.label))
            if option.choices:
                events.append(dict(run_event(page, f"xyz fill {option.label}", _handler(demo, page.xyz.fill_button, "click"), [option.label, False]),
                                   label=option.label))
    if page.follower is not None:
        events += model_events(page)
    return events


def model_events(page) -> list[dict]:
    """Forge Neo: ASAG's events on the model selectors, for each checkpoint chosen in the checkpoint
    selector, and each preset chosen while the selector still shows the first checkpoint (Neo then
    selects the preset's own); each with the view it should show (``view_of``: preset, checkpoint)."""
    outputs = [control for pair in page.follower.controls.values() for control in pair]
    described = dict(outputs=[c.elem_id for c in outputs])
    out = [dict(run_event(page, "model view on page load", _handler(page.demo, None, "load", outputs), []), view_of=list(NEO_START), **described)]
    for name, (preset, _) in NEO_CHECKPOINTS.items():
        out.append(dict(run_event(page, f"checkpoint {name}", _handler(page.demo, page.checkpoint, "change", outputs), [preset, name]),
                        view_of=[preset, name], **described))
    for name, (preset, _) in NEO_CHECKPOINTS.items():
        out.append(dict(run_event(page, f"preset {preset}", _handler(page.demo, page.preset, "change", outputs), [preset, NEO_START[1]]),
                        view_of=[preset, name], **described))
    # a selector value the host's lookup cannot take (sd_models.get_closet_checkpoint_match raises)
    out.append(dict(run_event(page, "checkpoint lookup fails", _handler(page.demo, page.checkpoint, "change", outputs), ["flux", ["a", "b"]]),
                    view_of=["flux", None], **described))
    return out


# ---- browser --------------------------------------------------------------------------------

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
JS_STANDIN = os.path.join(HERE, "standin", "js")


def page_scripts(host: str) -> str:
    """The <script> tags the WebUI puts into <head> (modules/ui_gradio_extensions.py
    javascript_html): the localization table, script.js, then every javascript/*.js, the host's
    own first and then each extension's, sorted by file name, as classic scripts. They are
    inlined here; the order and the global scope are the same. A host whose own file differs in
    what the extension meets has its stand-in in standin/js/<host>/ (Forge Classic's hints.js)."""
    own = os.path.join(JS_STANDIN, host)
    standin = lambda name: os.path.join(own, name) if os.path.exists(os.path.join(own, name)) else os.path.join(JS_STANDIN, name)  # noqa: E731
    files = [standin("script.js")]
    files += [standin(f) for f in sorted(os.listdir(JS_STANDIN)) if f.endswith(".js") and f != "script.js"]
    ext_js = os.path.join(ROOT, "javascript")
    files += sorted(os.path.join(ext_js, f) for f in os.listdir(ext_js) if f.endswith(".js"))
    head = '<script type="text/javascript">var localization = {};</script>\n'
    for path in files:
        with open(path, encoding="utf-8") as f:
            head += f'<script type="text/javascript">\n// {os.path.relpath(path, ROOT)}\n{f.read()}\n</script>\n'
    return head


def _inject_head(head: str):
    original = gr.routes.templates.TemplateResponse

    def template_response(*args, **kwargs):
        response = original(*args, **kwargs)
        response.body = response.body.replace(b"</head>", head.encode("utf-8") + b"</head>")
        response.init_headers()
        return response

    gr.routes.templates.TemplateResponse = template_response


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


BROWSER_REPORT_JS = """
(probe) => {
    const out = {};
    for (const [elemId, label] of probe) {
        const root = document.getElementById(elemId);
        if (!root) { out[elemId] = {present: false}; continue; }
        const holders = [...root.querySelectorAll('span, p, button')].filter(el => el.textContent === label);
        out[elemId] = {
            present: true,
            visible: root.offsetParent !== null,
            labelFound: holders.length > 0,
            titles: holders.map(el => el.getAttribute('title')),
        };
    }
    return out;
}
"""

SETTINGS_VALUES_JS = """
(ids) => Object.fromEntries(ids.map(id => {
    const input = document.querySelector('#' + id + ' input:not([type=range])');
    return [id, input ? input.value : null];
}))
"""

SETTINGS_SHOWN_JS = """
(expected) => expected.every(([id, value]) => {
    const input = document.querySelector('#' + id + ' input:not([type=range])');
    return input && input.value === value;
})
"""

ALL_HINTED_JS = """
(probe) => probe.every(([elemId, label]) => {
    const root = document.getElementById(elemId);
    return root && [...root.querySelectorAll('span, p, button')].some(el => el.textContent === label && el.title);
})
"""


def infotext_line(params) -> str:
    """The last line of an infotext as the WebUI writes it (processing.create_infotext): values
    with ',', ':' or a newline JSON-quoted."""
    entries = {"Steps": 20, "Sampler": "Euler", **params.to_infotext()}
    quote = lambda v: json.dumps(v) if any(c in str(v) for c in ",:\n") else str(v)  # noqa: E731
    return ", ".join(f"{key}: {quote(value)}" for key, value in entries.items())


def browser(screenshot_dir: str | None, host: str) -> dict:
    """The page of ``host`` (a key of tests/ui/runner.py PAGES; it names the screenshots)."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import sync_playwright

    from asag.params import ESSENTIAL, GROUPS

    _inject_head(page_scripts(host))
    built_page = build_page({}, host)  # the built-in defaults
    demo = built_page.demo
    shared.opts.data.update(REFRESHED_VALUES)  # changed after the page was built: the load shows them
    port = _free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, show_api=False)
    result = {"gradio": gr.__version__, "warnings": built_page.warnings, "console": [], "page_errors": [], "failed_requests": []}
    tab = Tab("txt2img")
    accordion_id = tab.elem_id("enabled")
    # (elem_id, label) of every control on the txt2img tab, by group; the accordion's label is in its header
    # (elem_id, label) of every control in view when its group is open, by group, as built (on Neo's
    # page the transformer blocks sit hidden beside the UNet layers: they have a flow of their own)
    rows = functools.partial(ui.group_rows, layout=ui.FOLLOWING_LAYOUT) if built_page.follower else ui.group_rows
    built = {c.elem_id: c for c in built_page.built["txt2img"][0]}
    probes = {group: [[tab.elem_id(name), PARAM_BY_NAME[name].label] for row in rows(group) for name in row
                      if built[tab.elem_id(name)].visible] for group in (ESSENTIAL, *GROUPS)}
    probe = [[accordion_id, ui.ACCORDION_LABEL]] + [[tab.elem_id(spec.name), spec.label] for spec in PARAMS[1:]]
    try:
        with sync_playwright() as pw, tempfile.TemporaryDirectory(prefix="asag-chromium-") as profile:
            context = pw.chromium.launch_persistent_context(
                profile, executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS,
                viewport={"width": 720, "height": 1100}, device_scale_factor=1)
            page = context.pages[0] if context.pages else context.new_page()
            page.on("console", lambda m: result["console"].append({"type": m.type, "text": m.text}))
            page.on("pageerror", lambda e: result["page_errors"].append(str(e)))
            page.on("requestfailed", lambda r: result["failed_requests"].append(f"{r.url} {r.failure}"))
            # The machine is offline. gradio's own page asks CDNs for iframe-resizer and fonts, which
            # would fail with console errors that are none of the extension's doing: every request
            # that leaves 127.0.0.1 is answered empty and listed, for the test to judge.
            result["external_requests"] = []

            def answer_empty(route):
                result["external_requests"].append(route.request.url)
                route.fulfill(status=200, body="", content_type="application/javascript")

            page.route(re.compile(r"^(?!http://127\.0\.0\.1[:/]).*"), answer_empty)

            def load():
                page.goto(f"http://127.0.0.1:{port}/", wait_until="load")
                return _wait(page, "#" + accordion_id + "-visible-checkbox", PlaywrightTimeout)

            def unhinted(entries) -> list:
                """The labels of ``entries`` still without a title. hints.js applies titles 1 s after
                the page's last update, so on a loaded machine (pending events redraw their timers)
                this waits, bounded, for every label."""
                try:
                    page.wait_for_function(ALL_HINTED_JS, arg=entries, timeout=60000)
                    return []
                except PlaywrightTimeout:
                    return [entry for entry in entries if not page.evaluate(ALL_HINTED_JS, [entry])]

            def shot(name):
                if screenshot_dir:
                    path = os.path.join(screenshot_dir, f"ui-{host}-{name}.png")
                    page.mouse.move(0, 0)
                    page.locator(f"#{accordion_id}").screenshot(path=path, animations="disabled")  # transitions finished
                    result.setdefault("screenshots", []).append(path)

            def script_args():
                page.fill("#asag_test_values textarea", "")
                page.click("#asag_test_read")
                page.wait_for_function("() => document.querySelector('#asag_test_values textarea').value !== ''", timeout=30000)
                return json.loads(page.input_value("#asag_test_values textarea"))

            result["loaded"] = load()
            # The Settings refresh on page load: every Settings control shows the current value.
            try:
                page.wait_for_function(SETTINGS_SHOWN_JS, arg=[[f"setting_{k}", str(v)] for k, v in REFRESHED_VALUES.items()], timeout=15000)
            except PlaywrightTimeout:
                pass
            result["settings_shown"] = page.evaluate(SETTINGS_VALUES_JS, [f"setting_{k}" for k in REFRESHED_VALUES])
            # A layer list typed into the quicksetting: stored as typed (run_settings_single).
            quick_input = f"#setting_{QUICKSETTINGS[0]} input"
            page.fill(quick_input, QUICKSETTING_VALUE)
            page.press(quick_input, "Enter")
            page.click("#asag_test_infotext textarea")  # away from the list, as a user does
            for _ in range(100):
                if shared.opts.data.get(QUICKSETTINGS[0]) == QUICKSETTING_VALUE:
                    break
                page.wait_for_timeout(100)
            result["quicksetting_stored"] = shared.opts.data.get(QUICKSETTINGS[0])
            result["unhinted"] = unhinted([[accordion_id, ui.ACCORDION_LABEL]] + probes[ESSENTIAL])
            result["globals"] = page.evaluate("() => ({titles: typeof titles === 'object' ? titles : null})")
            result["closed"] = _accordion_state(page, accordion_id)
            result["controls_closed"] = page.evaluate(BROWSER_REPORT_JS, probe)
            shot("closed")
            # Open it as a user does: a click on the header; inputAccordion.js ticks the checkbox.
            page.click(f"#{accordion_id} .label-wrap")
            try:
                page.wait_for_function(f"() => document.getElementById('{accordion_id}-visible-checkbox').checked", timeout=10000)
            except PlaywrightTimeout:
                pass
            result["opened"] = _accordion_state(page, accordion_id)
            result["controls"] = page.evaluate(BROWSER_REPORT_JS, probe)
            shot("open")
            # Each closed group, opened by a click on its header: its controls shown, with their hints.
            result["groups"] = {}
            for group in GROUPS:
                group_elem = tab.elem_id(ui.group_id(group))
                before = _header_open(page, group_elem)
                page.click(f"#{group_elem} .label-wrap")
                entry = {"present": before is not None, "open_before": before, "unhinted": unhinted(probes[group])}
                entry["open_after"] = _header_open(page, group_elem)
                entry["controls"] = page.evaluate(BROWSER_REPORT_JS, probes[group])
                result["groups"][group] = entry
            # The layer list: its suggestions, and a spec typed by hand.
            layers_input = f"#{tab.elem_id('layers')} input"
            page.click(layers_input)
            try:
                page.wait_for_selector(f"#{tab.elem_id('layers')} ul.options li", timeout=10000)
            except PlaywrightTimeout:
                pass
            result["layer_choices"] = page.evaluate(
                "(id) => [...document.querySelectorAll('#' + id + ' ul.options li')].map(li => li.dataset.value ?? li.getAttribute('aria-label'))",
                tab.elem_id("layers"))
            page.fill(layers_input, TYPED_LAYERS)
            page.press(layers_input, "Enter")
            page.click("#asag_test_infotext textarea")  # away from the list, as a user does
            result["typed_args"] = script_args()
            # A paste into a fresh page, whose groups are all closed: every control follows.
            result["paste_loaded"] = load()
            pasted = AsagParams(**PASTED_FIELDS)
            result["paste_text"] = infotext_line(pasted)
            page.fill("#asag_test_infotext textarea", result["paste_text"])
            page.click("#asag_test_paste")
            try:
                page.wait_for_function(f"() => document.getElementById('{accordion_id}-visible-checkbox').checked", timeout=30000)
            except PlaywrightTimeout:
                pass
            result["pasted_args"] = script_args()
            result["pasted_accordion"] = _accordion_state(page, accordion_id)
            result["groups_after_paste"] = {group: _header_open(page, tab.elem_id(ui.group_id(group))) for group in GROUPS}
            if built_page.follower:
                load()
                result["neo"] = neo_flow(page, tab, PlaywrightTimeout, shot, script_args)
            context.close()
    finally:
        demo.close()
    return result


BLOCK_CONTROLS_JS = """
(ids) => Object.fromEntries(ids.map(id => {
    const root = document.getElementById(id);
    const input = root && root.querySelector('input');
    return [id, root ? {visible: root.offsetParent !== null, text: root.textContent, value: input ? input.value : null} : null];
}))
"""


def neo_flow(page, tab, timeout_error, shot, script_args) -> dict:
    """Forge Neo's page, loaded afresh on its SDXL checkpoint: the accordion opened, then the UI
    preset "klein" chosen (Neo selects its Flux.2 Klein checkpoint), a block list typed into the
    transformer control, the SDXL checkpoint chosen again, the script's arguments read, and the
    Z-Image checkpoint chosen; the two block controls recorded at each step."""
    ids = [tab.elem_id("layers"), tab.elem_id("dit_layers")]
    accordion_id = tab.elem_id("enabled")
    steps = {}

    def record(name, layers_shown):
        try:  # the page follows at once, without a reload: wait (bounded) for the control to switch
            page.wait_for_function("([l, d, shown]) => (document.getElementById(l).offsetParent !== null) === shown"
                                   " && (document.getElementById(d).offsetParent !== null) === !shown", arg=[*ids, layers_shown], timeout=15000)
        except timeout_error:
            pass
        steps[name] = page.evaluate(BLOCK_CONTROLS_JS, ids)

    def choose(selector_id, value):
        page.click(f"#{selector_id} input")
        page.click(f"#{selector_id} ul.options li[aria-label={json.dumps(value)}]")

    page.click(f"#{accordion_id} .label-wrap")
    record("loaded", True)
    choose("forge_ui_preset", "klein")
    record("preset klein", False)
    shot("transformer")
    dit_input = f"#{ids[1]} input"
    page.fill(dit_input, TYPED_DIT_LAYERS)
    page.press(dit_input, "Enter")
    page.click("#asag_test_infotext textarea")
    choose("setting_sd_model_checkpoint", NEO_START[1])
    record("checkpoint sdxl", True)
    steps["args"] = script_args()
    choose("setting_sd_model_checkpoint", "z_image_turbo.safetensors")
    record("checkpoint z-image", False)
    return steps


def _header_open(page, elem_id):
    """Whether the accordion ``elem_id`` is open (its header has the class "open"), None if absent."""
    return page.evaluate("""(id) => {
        const header = document.querySelector('#' + id + ' .label-wrap');
        return header ? header.classList.contains('open') : null;
    }""", elem_id)


def _wait(page, selector, timeout_error) -> bool:
    try:
        page.wait_for_selector(selector, state="attached", timeout=60000)
        return True
    except timeout_error:
        return False


def _accordion_state(page, accordion_id):
    return page.evaluate("""(id) => {
        const acc = document.getElementById(id);
        if (!acc) return null;
        const visible = document.getElementById(id + '-visible-checkbox');
        const hidden = document.querySelector('#' + id + '-checkbox input');
        const header = acc.querySelector('.label-wrap');
        return {
            classes: [...acc.classList],
            open: header ? header.classList.contains('open') : null,
            headerText: header ? header.querySelector('span').textContent : null,
            visibleCheckbox: visible ? visible.checked : null,
            hiddenCheckbox: hidden ? hidden.checked : null,
        };
    }""", accordion_id)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=("describe", "browser"))
    parser.add_argument("--screenshot-dir")
    parser.add_argument("--host", required=True, help="whose page: a key of tests/ui/runner.py PAGES")
    args = parser.parse_args()
    out = describe(args.host) if args.mode == "describe" else browser(args.screenshot_dir, args.host)
    sys.stdout.write("ASAG-HARNESS-JSON " + json.dumps(out) + "\n")


if __name__ == "__main__":
    main()
