"""The ASAG block built by asag.hosts.ui.build_ui under the WebUI's gradio (3.41.2), Forge's
(4.40.0) and Forge Classic's (3.43.2), each in its own venv, with the matching InputAccordion stand-in; and the Settings
options' controls built the way the Settings tab builds them (``described``: tests/ui/conftest.py)."""
import pytest

from asag.hosts import settings
from asag.params import ESSENTIAL, GROUPS, PARAMS

from .runner import PAGES, shown_at_start, shown_group

TYPE_BY_KIND = {"bool": "Checkbox", "choices": "Radio", "range": "Slider", "suggestions": "Dropdown", "text": "Textbox"}


def _kind(spec):
    if spec.kind is bool:
        return "bool"
    if spec.choices:
        return "choices"
    if spec.minimum is not None:
        return "range"
    return "suggestions" if spec.suggestions else "text"


def test_runs_the_gradio_the_host_pins(described):
    host, out = described
    assert out["gradio"] == PAGES[host]["gradio"]


def test_builds_without_warnings(described):
    # A removed or renamed keyword is a TypeError in gradio 4 and a warning in gradio 3. The one
    # warning allowed comes from fastapi inside gradio's own app setup, whatever the UI is.
    _, out = described
    ours = [w for w in out["warnings"] if "on_event is deprecated" not in w["message"]]
    assert ours == []


@pytest.mark.parametrize("tab", ["txt2img", "img2img"])
def test_every_control_in_params_order_with_its_id_label_and_range(described, tab):
    host, out = described
    values = out["settings_values"]
    components = out["tabs"][tab]["components"]
    assert len(components) == len(PARAMS)
    for spec, c in zip(PARAMS, components):
        assert c["elem_id"] == f"script_{tab}_asag_{spec.name}" + ("-checkbox" if spec.name == "enabled" else "")
        if spec.name == "enabled":
            assert (c["type"], c["label"], c["visible"]) == ("InputAccordionImpl" if out["gradio"].startswith("4") else "InputAccordion", "ASAG", False)
            assert c["value"] is False
            continue
        assert c["type"] == TYPE_BY_KIND[_kind(spec)], spec.name
        assert c["label"] == spec.label and c["visible"] is shown_at_start(spec, host)
        if spec.minimum is not None:
            assert (c["minimum"], c["maximum"], c["step"]) == (spec.minimum, spec.maximum, spec.step), spec.name
        if spec.choices or spec.suggestions:
            assert c["choices"] == list(spec.choices or spec.suggestions), spec.name
        key = settings.DEFAULT_KEYS.get(spec.name)
        assert c["value"] == (values[key] if key else spec.default), spec.name
        # defaults that Settings owns must not be frozen by the WebUI's ui-config.json
        assert c["do_not_save_to_config"] is (key is not None), spec.name


@pytest.mark.parametrize("tab", ["txt2img", "img2img"])
def test_essentials_in_view_and_the_rest_in_closed_groups_from_params(described, tab):
    host, out = described
    structure = out["tabs"][tab]
    assert structure["in_view"] == [f"script_{tab}_asag_{s.name}" for s in PARAMS if shown_group(s, host) == ESSENTIAL and s.name != "enabled"]
    assert [g["label"] for g in structure["groups"]] == list(GROUPS)
    for group in structure["groups"]:
        assert group["open"] is False
        assert group["elem_id"] == f"script_{tab}_asag_group_" + {"Advanced": "advanced", "Hires. fix": "hires_fix",
                                                                   "Compatibility": "compatibility"}[group["label"]]
        assert group["controls"] == [f"script_{tab}_asag_{s.name}" for s in PARAMS if shown_group(s, host) == group["label"]]


@pytest.mark.parametrize("tab", ["txt2img", "img2img"])
def test_the_accordion_is_the_enable_switch(described, tab):
    _, out = described
    accordion = out["tabs"][tab]["accordion"]
    assert accordion == {"type": "Accordion", "elem_id": f"script_{tab}_asag_enabled", "label": "ASAG", "open": False,
                         "elem_classes": ["input-accordion"]}


@pytest.mark.parametrize("tab", ["txt2img", "img2img"])
def test_the_page_config_carries_every_element(described, tab):
    """What gradio sends to the browser (its config), where ids and visibility must survive."""
    host, out = described
    config = out["config"]
    hidden = config[f"script_{tab}_asag_enabled-checkbox"]
    assert (hidden["type"], hidden["visible"], hidden["value"]) == ("checkbox", False, False)
    accordion = config[f"script_{tab}_asag_enabled"]
    assert (accordion["type"], accordion["open"], accordion["label"]) == ("accordion", False, "ASAG")
    assert "input-accordion" in accordion["elem_classes"]
    for spec in PARAMS[1:]:
        entry = config[f"script_{tab}_asag_{spec.name}"]
        assert (entry["type"], entry["label"], entry["visible"]) == (TYPE_BY_KIND[_kind(spec)].lower(), spec.label, shown_at_start(spec, host))


def test_infotext_and_paste_fields_cover_every_control(described):
    _, out = described
    tab = out["tabs"]["txt2img"]
    assert [index for index, _ in tab["infotext_fields"]] == list(range(len(PARAMS)))
    assert [key for _, key in tab["infotext_fields"]] == tab["paste_field_names"]


def test_settings_section_is_derived_from_params(described):
    _, out = described
    opts = out["settings"]
    assert list(opts) == [*settings.DEFAULT_KEYS.values(), *(option.key for option in settings.HOST_OPTIONS)]
    for name, key in settings.DEFAULT_KEYS.items():
        spec = next(s for s in PARAMS if s.name == name)
        entry = opts[key]
        assert entry["section"] == ["asag", "ASAG"]
        assert entry["label"] == f"Default {spec.label}" and entry["default"] == spec.default
        assert spec.help in entry["comment"] and "Reload UI" in entry["comment"]
        made = entry["component"]
        assert made["type"] == TYPE_BY_KIND[_kind(spec)] and made["value"] == out["settings_values"][key]
        if spec.suggestions:  # offers the common values, takes any typed one
            assert made["choices"] == list(spec.suggestions) and made["allow_custom_value"] is True
        if spec.minimum is not None:
            assert (made["minimum"], made["maximum"], made["step"]) == (spec.minimum, spec.maximum, spec.step)
    for option in settings.HOST_OPTIONS:
        entry = opts[option.key]
        assert entry["section"] == ["asag", "ASAG"] and entry["default"] == option.default and option.info in entry["comment"]
        assert "Reload UI" not in entry["comment"]  # read at every generation
        made = entry["component"]
        if isinstance(option.default, bool):
            assert made["type"] == "Checkbox"
        else:
            assert made["type"] == "Slider" and (made["minimum"], made["maximum"], made["step"]) == (option.minimum, option.maximum, option.step)
