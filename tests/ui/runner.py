"""Starts tests/ui/harness.py in one of the gradio venvs that tests/run.sh makes, and returns its JSON."""
from __future__ import annotations

import functools
import json
import os
import subprocess

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
PREFIX = "ASAG-HARNESS-JSON "

# The hosts' pages the UI tests build: the gradio each host ships, and the venv tests/run.sh
# installs it into (from tests/requirements-ui-<venv suffix>.txt). lllyasviel's Forge, reForge and
# Forge Neo share gradio 4.40.0 and the WebUI's page scripts; Neo's page also has its model
# selectors, which decide the ASAG block control in view (``follows_model``).
PAGES = {
    "a1111": dict(gradio="3.41.2", venv=".venv-gradio3", follows_model=False),
    "forge": dict(gradio="4.40.0", venv=".venv-gradio4", follows_model=False),  # lllyasviel's Forge, reForge
    "classic": dict(gradio="3.43.2", venv=".venv-gradio3-classic", follows_model=False),  # Forge Classic
    "neo": dict(gradio="4.40.0", venv=".venv-gradio4", follows_model=True),  # Forge Neo
}


def venv_python(page: str) -> str:
    python = os.path.join(ROOT, PAGES[page]["venv"], "bin", "python")
    # Not a skip: CI must not go green without the UI tests. tests/run.sh installs the venv.
    assert os.path.exists(python), f"{python} is missing: run `bash tests/run.sh`, which installs it"
    return python


@functools.lru_cache(maxsize=None)
def run_harness(page: str, *args: str, timeout: float = 300) -> dict:
    """The harness's JSON for ``page``; run once per page and arguments in a test session, however
    many test files read it."""
    done = subprocess.run([venv_python(page), os.path.join(HERE, "harness.py"), *args, "--host", page], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)
    lines = [line for line in done.stdout.splitlines() if line.startswith(PREFIX)]
    assert done.returncode == 0 and lines, (
        f"harness {' '.join(args)} for the {page} page (gradio {PAGES[page]['gradio']}) failed (exit {done.returncode}):\n"
        f"{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
    )
    return json.loads(lines[-1][len(PREFIX):])


def shown_group(spec, page: str) -> str:
    """Where ``spec``'s control sits on ``page``: on Forge Neo's page, whose model decides which block
    control applies, the transformer blocks sit in view beside the UNet layers; elsewhere in their group."""
    from asag.params import ESSENTIAL

    return ESSENTIAL if PAGES[page]["follows_model"] and spec.name == "dit_layers" else spec.group


def shown_at_start(spec, page: str) -> bool:
    """Whether ``spec``'s control is shown when the page is built: on Neo's page, built on an SDXL
    checkpoint (cases.NEO_START), the transformer blocks are hidden."""
    return not (PAGES[page]["follows_model"] and spec.name == "dit_layers")
