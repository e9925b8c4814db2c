"""The ASAG block in headless Chromium under the WebUI's gradio 3.41.2, with javascript/ loaded
the way the WebUI loads it (after script.js and the WebUI's own hints.js and inputAccordion.js,
here faithful stand-ins in standin/js/): the accordion, every control and every hint are there,
and the console stays free of errors.

Also writes the screenshot: to docs/images/ui.png when ASAG_UPDATE_SCREENSHOT=1, else to a
temporary folder, so a test run leaves the repository as it was.
"""
import os

import pytest

from asag.params import PARAMS

from .runner import ROOT, run_harness

ACCORDION = "script_txt2img_asag_enabled"


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    if os.environ.get("ASAG_UPDATE_SCREENSHOT") == "1":
        shot = os.path.join(ROOT, "docs", "images", "ui.png")
        os.makedirs(os.path.dirname(shot), exist_ok=True)
    else:
        shot = str(tmp_path_factory.mktemp("ui") / "ui.png")
    return run_harness(3, "browser", "--screenshot", shot), shot


def test_page_came_up_under_the_webuis_gradio(page):
    out, _ = page
    assert out["gradio"] == "3.41.2"
    assert out["loaded"], "inputAccordion.js never set up the ASAG accordion (its visible checkbox is missing)"


def test_console_has_no_errors(page):
    out, _ = page
    assert out["page_errors"] == []
    assert [m for m in out["console"] if m["type"] == "error"] == []
    assert out["failed_requests"] == []
    # The page's only request off this machine is gradio 3's own iframe-resizer, answered empty.
    assert all("iframe-resizer" in url for url in out["external_requests"]), out["external_requests"]


def test_every_control_is_shown_with_its_hint(page):
    out, _ = page
    assert out["all_hinted"], "hints.js did not give every ASAG label a title"
    for spec in PARAMS:
        elem_id = ACCORDION if spec.name == "enabled" else f"script_txt2img_asag_{spec.name}"
        control = out["controls"][elem_id]
        assert control["present"] and control["visible"], spec.name
        assert control["labelFound"], f"{spec.name}: no element shows its label"
        assert control["titles"] == [spec.help] * len(control["titles"]), spec.name


def test_the_hints_reach_the_webuis_titles(page):
    out, _ = page
    titles = out["globals"]["titles"]
    assert titles["ASAG"] == PARAMS[0].help
    for spec in PARAMS[1:]:
        assert titles[spec.label] == spec.help


def test_the_accordion_is_the_enable_switch(page):
    out, _ = page
    closed, opened = out["closed"], out["opened"]
    assert closed["headerText"] == "ASAG" and "input-accordion" in closed["classes"]
    assert (closed["open"], closed["visibleCheckbox"], closed["hiddenCheckbox"]) == (False, False, False)
    # a click on the header opens it, ticks the header checkbox and the value the Script receives
    assert (opened["open"], opened["visibleCheckbox"], opened["hiddenCheckbox"]) == (True, True, True)
    assert "input-accordion-open" in opened["classes"]
    # the controls are hidden while it is closed, shown once it is open
    assert not any(c["visible"] for eid, c in out["controls_closed"].items() if eid != ACCORDION)


def test_screenshot_written(page):
    out, shot = page
    assert out.get("screenshot") == shot
    with open(shot, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
