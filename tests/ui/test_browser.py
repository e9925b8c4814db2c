"""The ASAG block in headless Chromium, on each host's page (tests/ui/runner.py PAGES): the WebUI's
gradio 3.41.2 (A1111), Forge's 4.40.0 (lllyasviel's Forge, Forge Neo, reForge) and Forge Classic's
3.43.2, with javascript/ loaded the way they load it (after script.js and the host's own hints.js
and inputAccordion.js, here faithful stand-ins in standin/js/; Forge's are the same files, Forge
Classic has its own hints.js in standin/js/classic/): the
accordion, the essentials in view and the rest in closed groups, every hint, the layer list, a
paste, and a console free of errors.

Also writes the screenshots of the closed and the opened accordion: to docs/images/ when
ASAG_UPDATE_SCREENSHOT=1, else to a temporary folder, so a test run leaves the repository as it was.
"""
import os

import pytest

from asag.params import ESSENTIAL, GROUPS, PARAMS, AsagParams

from .cases import PASTED_FIELDS, TYPED_LAYERS
from .runner import PAGES, ROOT, run_harness

ACCORDION = "script_txt2img_asag_enabled"


def control_id(spec):
    return ACCORDION if spec.name == "enabled" else f"script_txt2img_asag_{spec.name}"


@pytest.fixture(scope="module", params=sorted(PAGES))
def page(request, tmp_path_factory):
    if os.environ.get("ASAG_UPDATE_SCREENSHOT") == "1":
        folder = os.path.join(ROOT, "docs", "images")
    else:
        folder = str(tmp_path_factory.mktemp("ui"))
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
    _, out, _ = page
    assert out["all_hinted"], "hints.js did not give every label in view a title"
    for spec in PARAMS:
        control = out["controls"][control_id(spec)]
        if spec.group == ESSENTIAL:
            assert control["present"] and control["visible"] and control["labelFound"], spec.name
            assert control["titles"] == [spec.help] * len(control["titles"]) and control["titles"], spec.name
        else:
            assert not control.get("visible"), f"{spec.name} is in view before its group is opened"
    assert [s.name for s in PARAMS if s.group == ESSENTIAL] == ["enabled", "scale", "layers"]


@pytest.mark.parametrize("group", GROUPS)
def test_every_other_control_is_in_its_group_with_its_hint(page, group):
    _, out, _ = page
    entry = out["groups"][group]
    assert entry["present"] and entry["open_before"] is False and entry["open_after"] is True
    assert entry["hinted"], f"the controls of {group} got no hints"
    specs = [spec for spec in PARAMS if spec.group == group]
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
    names = [os.path.join(folder, f"ui-{host}-{state}.png") for state in ("closed", "open")]
    assert out.get("screenshots") == names
    for name in names:
        with open(name, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
