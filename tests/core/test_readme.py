"""The README documents what the code does: its parameter table comes from PARAMS, and its test
command is the one CI runs."""
import os

from asag.params import parameter_table_markdown
from tests.conftest import ROOT


def read(*path):
    with open(os.path.join(ROOT, *path), encoding="utf-8") as f:
        return f.read()


def test_parameter_table_is_the_generated_one():
    # Regenerate with: .venv/bin/python -c "from asag.params import parameter_table_markdown as t; print(t())"
    assert parameter_table_markdown() in read("README.md")


def test_readme_test_command_is_what_ci_runs():
    assert "    bash tests/run.sh\n" in read("README.md")
    assert read(".ci", "run").strip().endswith("bash tests/run.sh")
