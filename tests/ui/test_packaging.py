"""metadata.ini, install.py, and gradio API that only one of the two hosts' gradio versions has."""
import ast
import configparser
import os
import re
import subprocess
import sys

from .runner import ROOT, venv_python


def test_metadata_ini_names_the_extension():
    ini = configparser.ConfigParser()
    with open(os.path.join(ROOT, "metadata.ini"), encoding="utf-8") as f:
        ini.read_file(f)
    assert ini["Extension"]["Name"] == "sd-webui-asag"
    # A1111 only reports a missing requirement; ASAG has none to declare
    assert "Requires" not in ini["Extension"]
    for section in ini.sections():
        assert section == "Extension" or section.startswith(("scripts/", "javascript/", "callbacks/sd-webui-asag/")), section


def _imports(path):
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            names.add((node.module or "").split(".")[0])
    return names


def test_install_py_only_checks():
    install = os.path.join(ROOT, "install.py")
    # nothing that installs, downloads or imports the (torch-importing) asag package
    assert _imports(install) <= {"importlib", "logging", "sys"}
    with open(install, encoding="utf-8") as f:
        assert not re.search(r"\b(pip|run_pip|launch)\b\s*[.(]", f.read())


def test_install_py_is_silent_when_torch_is_there():
    done = subprocess.run([sys.executable, "install.py"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")


def test_install_py_reports_a_missing_torch():
    # the gradio 4 venv has no torch
    done = subprocess.run([venv_python("forge"), os.path.join(ROOT, "install.py")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "torch is not importable" in done.stderr


def _extension_sources():
    for folder in ("asag", "scripts"):
        for base, _, files in os.walk(os.path.join(ROOT, folder)):
            for name in files:
                if name.endswith(".py"):
                    yield os.path.join(base, name)


def test_no_gradio_api_that_only_one_host_has():
    # gradio 4 removed Component.update (use gr.update) and renamed the events' _js to js.
    for path in _extension_sources():
        with open(path, encoding="utf-8") as f:
            text = f.read()
        rel = os.path.relpath(path, ROOT)
        assert not re.search(r"\bgr\.[A-Z]\w*\.update\s*\(", text), f"{rel}: use gr.update(), not Component.update()"
        assert "_js=" not in text and not re.search(r"\bjs=", text), f"{rel}: events' JS keyword differs between gradio 3 and 4"
