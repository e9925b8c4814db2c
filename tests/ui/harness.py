"""Builds the ASAG UI block under a given gradio, and (gradio 3) shows it in headless Chromium.

Runs inside one of the gradio venvs that tests/run.sh makes (``.venv-gradio3``: the WebUI's
gradio 3.41.2 and Playwright; ``.venv-gradio4``: Forge's gradio 4.40.0; ``.venv-gradio3-classic``:
Forge Classic's gradio 3.43.2), which have no torch. The pytest tests in this folder start it as a
subprocess and read the JSON it prints:

    python tests/ui/harness.py describe --host HOST
    python tests/ui/harness.py browser --host HOST [--screenshot-dir DIR]

``asag/__init__.py`` re-exports the torch core, so the package is entered without running it:
the UI chain (params, hosts.ui, hosts.hints, hosts.settings, layers) needs no torch, and as these
venvs have none, an import of torch anywhere in that chain fails here.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import socket
import sys
import tempfile
import types
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
import gradio as gr  # noqa: E402

GRADIO_MAJOR = int(gr.__version__.split(".")[0])
sys.path.insert(0, os.path.join(HERE, "standin", f"gradio{GRADIO_MAJOR}"))
sys.path.insert(0, ROOT)
_package = types.ModuleType("asag")
_package.__path__ = [os.path.join(ROOT, "asag")]
sys.modules["asag"] = _package

from modules.ui_components import InputAccordion  # noqa: E402  (the stand-in for this gradio)

from asag.hosts import settings, ui  # noqa: E402
from asag.params import PARAMS  # noqa: E402

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


class OptionInfo:
    """The WebUI's ``shared.OptionInfo`` as far as settings.py uses it (A1111 v1.10.1 ``modules/options.py``)."""

    def __init__(self, default=None, label="", component=None, component_args=None, onchange=None, section=None, **_):
        self.default, self.label, self.component, self.component_args, self.section = default, label, component, component_args, section
        self.comment_after = ""

    def info(self, text):
        self.comment_after += f"<span class='info'>({text})</span>"
        return self

    def needs_reload_ui(self):
        self.comment_after += " <span class='info'>(requires Reload UI)</span>"
        return self


class Opts:
    def __init__(self, values=None):
        self.data, self.data_labels = dict(values or {}), {}

    def add_option(self, key, info):
        self.data_labels[key] = info

    def __getattr__(self, key):
        if key in ("data", "data_labels"):
            raise AttributeError(key)
        if key in self.data:
            return self.data[key]
        if key in self.data_labels:
            return self.data_labels[key].default
        raise AttributeError(key)


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


def build_page(settings_values: dict, with_prompt: bool = False):
    """The two tabs' ASAG blocks as the WebUI builds them, with defaults from the Settings tab.
    ``with_prompt``: also the WebUI's prompt box, and under the txt2img block a paste box wired as
    the WebUI wires its paste button, and a button that shows what the Script would receive."""
    opts = Opts(settings_values)
    built = {}
    theme_args = {}
    if GRADIO_MAJOR == 3:
        # The WebUI's theme names its fonts without fetching them (modules/shared_gradio_themes.py).
        theme_args["theme"] = gr.themes.Default(font=["Source Sans Pro", "ui-sans-serif", "system-ui", "sans-serif"],
                                                font_mono=["IBM Plex Mono", "ui-monospace", "Consolas", "monospace"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with gr.Blocks(analytics_enabled=False, title="ASAG UI test", **theme_args) as demo:
            if with_prompt:
                gr.Textbox(label="Prompt", elem_id="txt2img_prompt")  # the WebUI's "page is built" signal
            for tabname in ("txt2img", "img2img"):
                with gr.Group():
                    built[tabname] = ui.build_ui(Tab(tabname), InputAccordion, defaults=settings.current_defaults(opts))
            if with_prompt:
                components, infotext_fields, _ = built["txt2img"]
                infotext = gr.Textbox(label="Infotext to paste", elem_id="asag_test_infotext", interactive=True)
                paste = gr.Button("Paste", elem_id="asag_test_paste")
                paste.click(fn=paste_function(infotext_fields), inputs=[infotext], outputs=[c for c, _ in infotext_fields])
                values = gr.Textbox(label="Script args", elem_id="asag_test_values", interactive=True)
                read = gr.Button("Read args", elem_id="asag_test_read")
                read.click(fn=lambda *args: json.dumps(args), inputs=components, outputs=[values])
    return demo, built, _warnings(caught)


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


def describe() -> dict:
    demo, built, build_warnings = build_page(SETTINGS_VALUES)
    config = demo.get_config_file()
    config_by_id = {c["props"].get("elem_id"): c for c in config["components"] if c.get("props", {}).get("elem_id")}
    tabs = {}
    for tabname, (components, infotext_fields, paste_field_names) in built.items():
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

    shared = types.SimpleNamespace(OptionInfo=OptionInfo, opts=Opts())
    settings.add_options(shared, gr)
    settings_out = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with gr.Blocks(analytics_enabled=False):
            for key, info in shared.opts.data_labels.items():
                # as the WebUI's Settings tab makes each control (modules/ui_settings.py create_setting_component)
                made = info.component(label=info.label, value=info.default, elem_id=f"setting_{key}", **(info.component_args or {}))
                settings_out[key] = {"label": info.label, "default": info.default, "section": list(info.section),
                                     "comment": info.comment_after, "component": _describe_component(made)}
    build_warnings += _warnings(caught)
    return {"gradio": gr.__version__, "warnings": build_warnings, "tabs": tabs, "config": config,
            "settings": settings_out, "settings_values": SETTINGS_VALUES}


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

    from asag.params import ESSENTIAL, GROUPS, AsagParams
    from tests.ui.cases import PASTED_FIELDS, TYPED_LAYERS

    _inject_head(page_scripts(host))
    demo, built, build_warnings = build_page({}, with_prompt=True)  # the built-in defaults
    port = _free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, show_api=False)
    result = {"gradio": gr.__version__, "warnings": build_warnings, "console": [], "page_errors": [], "failed_requests": []}
    tab = Tab("txt2img")
    accordion_id = tab.elem_id("enabled")
    # (elem_id, label) of every control on the txt2img tab, by group; the accordion's label is in its header
    probes = {group: [[tab.elem_id(spec.name), spec.label] for spec in PARAMS[1:] if spec.group == group] for group in (ESSENTIAL, *GROUPS)}
    probe = [[accordion_id, ui.ACCORDION_LABEL]] + [entry for entries in probes.values() for entry in entries]
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

            def hinted(entries) -> bool:
                # hints.js applies titles 1 s after the page settles; wait (bounded) for every label
                try:
                    page.wait_for_function(ALL_HINTED_JS, arg=entries, timeout=30000)
                    return True
                except PlaywrightTimeout:
                    return False

            def shot(name):
                if screenshot_dir:
                    path = os.path.join(screenshot_dir, f"ui-{host}-{name}.png")
                    page.mouse.move(0, 0)
                    page.locator(f"#{accordion_id}").screenshot(path=path)
                    result.setdefault("screenshots", []).append(path)

            def script_args():
                page.fill("#asag_test_values textarea", "")
                page.click("#asag_test_read")
                page.wait_for_function("() => document.querySelector('#asag_test_values textarea').value !== ''", timeout=30000)
                return json.loads(page.input_value("#asag_test_values textarea"))

            result["loaded"] = load()
            result["all_hinted"] = hinted([[accordion_id, ui.ACCORDION_LABEL]] + probes[ESSENTIAL])
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
                entry = {"present": before is not None, "open_before": before, "hinted": hinted(probes[group])}
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
            context.close()
    finally:
        demo.close()
    return result


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
    parser.add_argument("--host", required=True, help="whose page: a1111, forge or classic (tests/ui/runner.py PAGES)")
    args = parser.parse_args()
    out = describe() if args.mode == "describe" else browser(args.screenshot_dir, args.host)
    sys.stdout.write("ASAG-HARNESS-JSON " + json.dumps(out) + "\n")


if __name__ == "__main__":
    main()
