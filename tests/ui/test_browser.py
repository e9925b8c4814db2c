"""The ASAG block in headless Chromium, on each host's page (tests/ui/runner.py PAGES): the WebUI's
gradio 3.41.2 (A1111), Forge's 4.40.0 (lllyasviel's Forge and reForge; Forge Neo with its model
selectors) and Forge Classic's 3.43.2, with javascript/ loaded the way they load it (after
script.js and the host's own hints.js and inputAccordion.js, here faithful stand-ins in
standin/js/; Forge's are the same files, Forge Classic has its own hints.js in
standin/js/classic/): the accordion, the essentials in view and the rest in closed groups, every
hint, the layer list, a paste, the Settings refresh on page load and a typed quicksetting, on Neo
the block control that follows the selected model, and a console free of errors.

Also writes the screenshots of the closed and the opened accordion (on Neo also with a
transformer model selected): to docs/images/ when ASAG_UPDATE_SCREENSHOT=1, else to a temporary
folder, so a test run leaves the repository as it was.
"""
import os

import pytest

from asag.params import ESSENTIAL, GROUPS, PARAMS, AsagParams

from .cases import PASTED_FIELDS, QUICKSETTING_VALUE, REFRESHED_VALUES, TYPED_DIT_LAYERS, TYPED_LAYERS
from .runner import PAGES, ROOT, run_harness, shown_at_start, shown_group

ACCORDION = "script_txt2img_asag_enabled"


def control_id(spec):
    return ACCORDION if spec.name == "enabled" else f"script_txt2img_asag_{spec.name}"


_FOLDERS = {}  # one screenshot folder per page and session, so that the harness runs once per page


@pytest.fixture(scope="module", params=sorted(PAGES))
def page(request, tmp_path_factory):
    if os.environ.get("ASAG_UPDATE_SCREENSHOT") == "1":
        folder = os.path.join(ROOT, "docs", "images")
    else:
        folder = _FOLDERS.setdefault(request.param, str(tmp_path_factory.mktemp("ui")))
    return request.param, run_harness(request.param, "browser", "--screenshot-dir", folder), folder


def test_page_came_up_under_the_hosts_gradio(page):
    host, out, _ = page
    assert out["gradio"] == PAGES[host]["gradio"]
    assert out["loaded"], "inputAccordion.js never set up the ASAG accordion (its visible checkbox is missing)"


def test_console_has_no_errors(page):
    host, out, _ = page
    assert out["page_errors"] == []
    assert [m for m in out["console"] if m["type"] == "error"] == []
    failed = out["failed_requests"]
    if PAGES[host]["gradio"].startswith("4."):
        # gradio 4's client ends its event stream with an abort once the events it waited for are
        # done (Client.close in its index-*.js): one per event, none of the page's doing.
        failed = [f for f in failed if not ("/queue/data?session_hash=" in f and f.endswith("net::ERR_ABORTED"))]
    assert failed == []
    # The page's only requests off this machine are gradio's own (iframe-resizer, fonts), answered empty.
    assert all("iframe-resizer" in url or "font" in url for url in out["external_requests"]), out["external_requests"]


def test_opening_shows_the_essentials_only(page):
    host, out, _ = page
    assert out["unhinted"] == [], "hints.js did not give these labels in view a title"
    for spec in PARAMS:
        control = out["controls"][control_id(spec)]
        if shown_group(spec, host) == ESSENTIAL and shown_at_start(spec, host):
            assert control["present"] and control["visible"] and control["labelFound"], spec.name
            assert control["titles"] == [spec.help] * len(control["titles"]) and control["titles"], spec.name
        else:
            assert not control.get("visible"), f"{spec.name} is in view before its group is opened"
    assert [s.name for s in PARAMS if s.group == ESSENTIAL] == ["enabled", "scale", "layers"]


@pytest.mark.parametrize("group", GROUPS)
def test_every_other_control_is_in_its_group_with_its_hint(page, group):
    host, out, _ = page
    entry = out["groups"][group]
    assert entry["present"] and entry["open_before"] is False and entry["open_after"] is True
    assert entry["unhinted"] == [], f"these controls of {group} got no hints"
    specs = [spec for spec in PARAMS if shown_group(spec, host) == group]
    assert specs
    for spec in specs:
        control = entry["controls"][control_id(spec)]
        assert control["present"] and control["visible"] and control["labelFound"], spec.name
        assert control["titles"] and control["titles"] == [spec.help] * len(control["titles"]), spec.name


def test_the_layer_list_offers_the_choices_and_takes_a_typed_spec(page):
    _, out, _ = page
    layers = next(spec for spec in PARAMS if spec.name == "layers")
    assert out["layer_choices"] == list(layers.suggestions)
    assert TYPED_LAYERS not in layers.suggestions
    expected = AsagParams(enabled=True, layers=TYPED_LAYERS).to_args()  # opened, then typed
    assert out["typed_args"] == expected


def test_a_paste_restores_every_control_even_in_closed_groups(page):
    _, out, _ = page
    assert out["paste_loaded"]
    assert out["groups_after_paste"] == {group: False for group in GROUPS}  # never opened on this page
    assert out["pasted_args"] == AsagParams(**PASTED_FIELDS).to_args()
    assert out["pasted_accordion"]["open"] and out["pasted_accordion"]["hiddenCheckbox"]


def test_the_hints_reach_the_hosts_titles(page):
    _, out, _ = page
    titles = out["globals"]["titles"]
    assert titles["ASAG"] == PARAMS[0].help
    for spec in PARAMS[1:]:
        assert titles[spec.label] == spec.help


def test_the_accordion_is_the_enable_switch(page):
    _, out, _ = page
    closed, opened = out["closed"], out["opened"]
    assert closed["headerText"] == "ASAG" and "input-accordion" in closed["classes"]
    assert (closed["open"], closed["visibleCheckbox"], closed["hiddenCheckbox"]) == (False, False, False)
    # a click on the header opens it, ticks the header checkbox and the value the Script receives
    assert (opened["open"], opened["visibleCheckbox"], opened["hiddenCheckbox"]) == (True, True, True)
    assert "input-accordion-open" in opened["classes"]
    # the controls are hidden while it is closed, shown once it is open
    assert not any(c.get("visible") for eid, c in out["controls_closed"].items() if eid != ACCORDION)


def test_screenshots_written(page):
    host, out, folder = page
    states = ("closed", "open", "transformer") if PAGES[host]["follows_model"] else ("closed", "open")
    names = [os.path.join(folder, f"ui-{host}-{state}.png") for state in states]
    assert out.get("screenshots") == names
    for name in names:
        with open(name, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_the_settings_refresh_on_page_load_reaches_the_page(page):
    # changed after the page was built: the refresh on load (one event for every Settings control,
    # the host's own as well) must show the current values; it fails whole if one update is refused
    _, out, _ = page
    assert out["settings_shown"] == {f"setting_{key}": str(value) for key, value in REFRESHED_VALUES.items()}


def test_a_layer_list_typed_into_the_settings_is_stored(page):
    _, out, _ = page
    assert QUICKSETTING_VALUE not in next(spec for spec in PARAMS if spec.name == "layers").suggestions
    assert out["quicksetting_stored"] == QUICKSETTING_VALUE


FOLLOWING = [host for host, entry in PAGES.items() if entry["follows_model"]]


@pytest.mark.parametrize("page", FOLLOWING, indirect=True)
def test_on_neo_the_block_control_follows_the_model_without_a_reload(page):
    neo_steps = page[1]["neo"]
    layers, blocks = "script_txt2img_asag_layers", "script_txt2img_asag_dit_layers"
    shown = {step: (controls[layers]["visible"], controls[blocks]["visible"]) for step, controls in neo_steps.items() if step != "args"}
    assert shown == {"loaded": (True, False), "preset klein": (False, True), "checkpoint sdxl": (True, False),
                     "checkpoint z-image": (False, True)}
    # what the transformer control says: the model, its blocks, what auto selects on it
    klein, z_image = neo_steps["preset klein"][blocks]["text"], neo_steps["checkpoint z-image"][blocks]["text"]
    assert "Flux (flux2_klein_4b.safetensors): this model has double 0-4, single 0-19; auto selects " in klein
    assert "Lumina 2 / Z-Image (z_image_turbo.safetensors): this model has refiner 0-1, layers 0-29; auto selects layers 7-9" in z_image


@pytest.mark.parametrize("page", FOLLOWING, indirect=True)
def test_on_neo_the_hidden_control_keeps_its_value_and_reaches_the_script(page):
    neo_steps = page[1]["neo"]
    assert neo_steps["args"] == AsagParams(enabled=True, dit_layers=TYPED_DIT_LAYERS).to_args()  # typed, then hidden
    assert neo_steps["checkpoint z-image"]["script_txt2img_asag_dit_layers"]["value"] == TYPED_DIT_LAYERS  # shown again
