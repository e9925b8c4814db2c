"""javascript/asag.js: the hover hints, one per control, equal to PARAMS' help texts."""
import json
import os
import re

from asag.hosts import hints
from asag.params import PARAMS

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
JS = os.path.join(ROOT, "javascript", "asag.js")


def _titles_in_committed_js() -> dict:
    with open(JS, encoding="utf-8") as f:
        text = f.read()
    match = re.search(r"var asagTitles = (\{.*?\n    \});", text, re.S)
    assert match, "javascript/asag.js no longer has the asagTitles object"
    return json.loads(match.group(1))


def test_committed_js_is_generated_from_params():
    with open(JS, encoding="utf-8") as f:
        committed = f.read()
    assert committed == hints.render_js(), "javascript/asag.js is stale: run `python -m asag.hosts.hints`"


def test_every_control_has_its_help_as_hint():
    # Built straight from PARAMS, not through hints.titles(), so a slip in either is caught.
    expected = {("ASAG" if spec.name == "enabled" else spec.label): spec.help for spec in PARAMS}
    assert _titles_in_committed_js() == expected


def test_hint_labels_cannot_catch_other_text():
    """hints.js gives a hint to any element whose whole text equals the key, anywhere in the page."""
    labels = list(hints.titles())
    assert len(labels) == len(set(labels)) == len(PARAMS)
    choices = {choice for spec in PARAMS for choice in (spec.choices or ())}
    for label in labels:
        assert label not in choices, f"label {label!r} equals a radio option's text"
        assert label == hints.ACCORDION_LABEL or len(label.split()) >= 2, (
            f"label {label!r} is a single word: other extensions' controls or text could show it and get ASAG's hint"
        )


def test_js_guards_against_a_page_without_titles():
    with open(JS, encoding="utf-8") as f:
        text = f.read()
    assert 'typeof titles !== "object"' in text
