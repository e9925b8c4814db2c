"""Hover hints for the ASAG controls, generated from ``PARAMS`` into ``javascript/asag.js``.

The WebUI (A1111 ``javascript/hints.js``, the same in Forge and reForge) keeps a global ``titles``
object, label text -> hint, and on every UI update sets ``title`` on each span, button, p and
input whose *exact* text content is a key. ``javascript/asag.js`` only adds our entries to that
object, so the hint of a control is keyed by the label it shows, and a label must be specific
enough not to match text elsewhere in the page (hence "ASAG layers", not "Layers").

Regenerate after editing ``PARAMS``: ``python -m asag.hosts.hints`` (a test fails while the
committed file is stale). No gradio here: the generator and its test run without it.
"""
from __future__ import annotations

import json
import os
import sys

from ..params import PARAMS, ParamSpec

# The accordion shows this, not the enable flag's label: the enable switch *is* the accordion.
ACCORDION_LABEL = "ASAG"

JS_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "javascript", "asag.js")


def shown_label(spec: ParamSpec) -> str:
    """The text the UI shows for this parameter's control."""
    return ACCORDION_LABEL if spec.name == "enabled" else spec.label


def titles() -> dict[str, str]:
    """Label text -> hint, for every control, in ``PARAMS`` order."""
    out = {}
    for spec in PARAMS:
        label = shown_label(spec)
        if label in out:
            raise ValueError(f"two ASAG controls show the label {label!r}; their hints would clobber each other")
        out[label] = spec.help
    return out


def render_js() -> str:
    body = json.dumps(titles(), indent=4, ensure_ascii=False)
    body = body.replace("\n", "\n    ")
    return (
        "// Hover hints for the ASAG controls, added to the WebUI's `titles` (javascript/hints.js).\n"
        "// GENERATED from asag/params.py by `python -m asag.hosts.hints`: do not edit by hand.\n"
        "(function() {\n"
        "    if (typeof titles !== \"object\" || titles === null) {\n"
        "        return; // a host without the WebUI's hints.js: nothing to add to\n"
        "    }\n"
        f"    var asagTitles = {body};\n"
        "    for (var label in asagTitles) {\n"
        "        titles[label] = asagTitles[label];\n"
        "    }\n"
        "})();\n"
    )


def main(argv: list[str]) -> int:
    wanted = render_js()
    if argv[1:] == ["--check"]:
        with open(JS_PATH, encoding="utf-8") as f:
            stale = f.read() != wanted
        if stale:
            sys.stderr.write(f"{JS_PATH} is stale: run python -m asag.hosts.hints\n")
        return int(stale)
    os.makedirs(os.path.dirname(JS_PATH), exist_ok=True)
    with open(JS_PATH, "w", encoding="utf-8", newline="\n") as f:
        f.write(wanted)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
