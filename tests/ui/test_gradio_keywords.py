"""Every keyword the extension passes to gradio, checked against the signatures of each gradio the
hosts pin (3.41.2: A1111; 3.43.2: Forge Classic; 4.40.0: Forge, Forge Neo, reForge).

The tables below list, by gradio class, the keywords the extension passes to a constructor (its
own calls, and the makers it hands the Settings tab) and those of the updates returned to a
control it made (the Settings refresh, a paste, its own events). The harness records both on each
host's page (``gradio_calls``): what it records must be in the tables, and every keyword in the
tables must be a named parameter of the class's constructor in every version, and of an update:
gradio 3 applies ``gr.update(...)`` through ``<Component>.update(**...)``, gradio 4 re-creates the
component from its constructor's arguments and the update's. A keyword only the constructor takes
is bound into the maker (``asag.hosts.ui.control_for``). The event listeners the extension calls
(found in its source) and their keywords are checked the same way.
"""
import ast
import os

from .runner import PAGES, ROOT

CONSTRUCTOR_KEYWORDS = {
    "InputAccordion": {"value", "label", "elem_id"},  # the host's; label and elem_id go on to Checkbox and Accordion
    "Accordion": {"label", "open", "elem_id"},
    "Row": set(),
    "Checkbox": {"label", "value", "elem_id"},
    "Radio": {"label", "value", "elem_id", "choices"},
    "Slider": {"label", "value", "elem_id", "minimum", "maximum", "step"},
    "Dropdown": {"label", "value", "elem_id", "choices", "allow_custom_value", "visible", "info"},
    "Textbox": {"label", "value", "elem_id", "lines", "max_lines"},
}
UPDATE_KEYWORDS = {
    "Checkbox": {"value"},
    "Radio": {"value"},
    "Slider": {"value", "minimum", "maximum", "step"},
    "Dropdown": {"value", "choices", "visible", "info"},
    "Textbox": {"value"},
}


def test_the_tables_hold_every_keyword_the_extension_passes(described):
    host, out = described
    calls = out["gradio_calls"]
    assert calls["constructed"] and calls["updated"], "the harness recorded nothing"
    for table, recorded in ((CONSTRUCTOR_KEYWORDS, calls["constructed"]), (UPDATE_KEYWORDS, calls["updated"])):
        for name, keywords in recorded.items():
            assert set(keywords) <= table.get(name, set()), f"{host}: {name} gets {sorted(set(keywords) - table.get(name, set()))}, not in the table"


def test_every_keyword_is_in_each_gradios_signatures(described):
    host, out = described
    signatures = out["signatures"]
    gradio3 = out["gradio"].startswith("3.")
    wrong = []
    for name, keywords in CONSTRUCTOR_KEYWORDS.items():
        if name == "InputAccordion":
            targets, keywords = ("Checkbox", "Accordion"), keywords - {"value"}
        else:
            targets = (name,)
        for target in targets:
            wrong += [f"{target}({k}=)" for k in sorted(keywords - set(signatures[target]["init"]))]
    for name, keywords in UPDATE_KEYWORDS.items():
        accepted = signatures[name]["update"] if gradio3 else signatures[name]["init"]
        wrong += [f"update of {name}: {k}" for k in sorted(keywords - set(accepted))]
    assert wrong == [], f"gradio {PAGES[host]['gradio']} ({host}) lacks: {', '.join(wrong)}"


EVENT_KEYWORDS = {
    "change": {"fn", "inputs", "outputs", "queue", "show_progress"},
    "load": {"fn", "inputs", "outputs", "queue", "show_progress"},
}
EVENT_NAMES = {"change", "input", "click", "select", "submit", "blur", "release", "load", "then", "success"}


def _event_calls():
    """(listener, keywords) of every event listener call in the extension's gradio code."""
    for base, _, files in os.walk(os.path.join(ROOT, "asag")):
        for name in files:
            with open(os.path.join(base, name), encoding="utf-8") as f:
                source = f.read() if name.endswith(".py") else ""
            if "import gradio" not in source:
                continue
            for node in ast.walk(ast.parse(source)):
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in EVENT_NAMES:
                    yield node.func.attr, {keyword.arg for keyword in node.keywords}


def test_the_event_table_holds_every_listener_the_extension_calls():
    calls = list(_event_calls())
    assert calls, "no event listener found: the scan is broken"
    for listener, keywords in calls:
        assert keywords <= EVENT_KEYWORDS.get(listener, set()), f"{listener}({', '.join(sorted(keywords))}) is not in the table"


def test_every_event_keyword_is_in_each_gradios_listeners(described):
    host, out = described
    wrong = [f"{listener}({k}=)" for listener, keywords in EVENT_KEYWORDS.items()
             for k in sorted(keywords - set(out["event_signatures"][listener]))]
    assert wrong == [], f"gradio {PAGES[host]['gradio']} ({host}) lacks: {', '.join(wrong)}"
