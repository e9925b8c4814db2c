"""Starts tests/ui/harness.py in one of the gradio venvs that tests/run.sh makes, and returns its JSON."""
from __future__ import annotations

import json
import os
import subprocess

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
PREFIX = "ASAG-HARNESS-JSON "

# The hosts' pages the UI tests build: the gradio each host ships, and the venv tests/run.sh
# installs it into (from tests/requirements-ui-<venv suffix>.txt). Forge Neo, reForge and
# lllyasviel's Forge share gradio 4.40.0 and the WebUI's page scripts.
PAGES = {
    "a1111": dict(gradio="3.41.2", venv=".venv-gradio3"),
    "forge": dict(gradio="4.40.0", venv=".venv-gradio4"),
    "classic": dict(gradio="3.43.2", venv=".venv-gradio3-classic"),  # Forge Classic
}


def venv_python(page: str) -> str:
    python = os.path.join(ROOT, PAGES[page]["venv"], "bin", "python")
    # Not a skip: CI must not go green without the UI tests. tests/run.sh installs the venv.
    assert os.path.exists(python), f"{python} is missing: run `bash tests/run.sh`, which installs it"
    return python


def run_harness(page: str, *args: str, timeout: float = 300) -> dict:
    done = subprocess.run([venv_python(page), os.path.join(HERE, "harness.py"), *args, "--host", page], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)
    lines = [line for line in done.stdout.splitlines() if line.startswith(PREFIX)]
    assert done.returncode == 0 and lines, (
        f"harness {' '.join(args)} for the {page} page (gradio {PAGES[page]['gradio']}) failed (exit {done.returncode}):\n"
        f"{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
    )
    return json.loads(lines[-1][len(PREFIX):])
