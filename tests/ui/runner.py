"""Starts tests/ui/harness.py in one of the gradio venvs that tests/run.sh makes, and returns its JSON."""
from __future__ import annotations

import json
import os
import subprocess

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
PREFIX = "ASAG-HARNESS-JSON "


def venv_python(gradio_major: int) -> str:
    python = os.path.join(ROOT, f".venv-gradio{gradio_major}", "bin", "python")
    # Not a skip: CI must not go green without the UI tests. tests/run.sh installs the venv.
    assert os.path.exists(python), f"{python} is missing: run `bash tests/run.sh`, which installs it"
    return python


def run_harness(gradio_major: int, *args: str, timeout: float = 300) -> dict:
    done = subprocess.run([venv_python(gradio_major), os.path.join(HERE, "harness.py"), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)
    lines = [line for line in done.stdout.splitlines() if line.startswith(PREFIX)]
    assert done.returncode == 0 and lines, (
        f"harness {' '.join(args)} under gradio {gradio_major} failed (exit {done.returncode}):\n"
        f"{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
    )
    return json.loads(lines[-1][len(PREFIX):])
