"""The transformer block language (asag/dit_layers.py) against block counts as Flux and NextDiT have them."""
import subprocess
import sys

import pytest

from asag.dit_layers import DitBlock, block_runs, check_spec, describe_blocks, is_auto, resolve_blocks, spec_of
from tests.conftest import ROOT

FLUX = {"double": 19, "single": 38}
NEXTDIT = {"refiner": 2, "layers": 30}


def test_kinds_ranges_and_all_in_execution_order():
    assert resolve_blocks("single 20, double 7-9", FLUX) == [DitBlock("double", 7), DitBlock("double", 8), DitBlock("double", 9),
                                                             DitBlock("single", 20)]
    assert resolve_blocks("layers 3 , Refiner", NEXTDIT) == [DitBlock("refiner", 0), DitBlock("refiner", 1), DitBlock("layers", 3)]
    assert len(resolve_blocks("all", FLUX)) == 57 and len(resolve_blocks("double", FLUX)) == 19
    assert resolve_blocks("single  3 - 4", FLUX) == [DitBlock("single", 3), DitBlock("single", 4)]  # spaces as typed
    assert resolve_blocks("double 7-9, double 8", FLUX) == resolve_blocks("double 7-9", FLUX)


@pytest.mark.parametrize("spec, message", [
    ("double 19", "'double 19' asks for a block this model lacks; this model has double 0-18, single 0-37"),
    ("triple", "cannot read 'triple'; use all, double, single, or a range such as 'double 0-2'"),
    ("double 9-7", "in 'double 9-7', range 9-7 runs backwards"),
    ("u0-2", "cannot read 'u0-2'"),
    (" , ", "empty selection; this model has double 0-18, single 0-37"),
])
def test_bad_specs_name_the_field_the_item_and_what_the_model_has(spec, message):
    with pytest.raises(ValueError, match="ASAG parameter 'dit_layers'") as err:
        resolve_blocks(spec, FLUX, "dit_layers")
    assert message in str(err.value)


@pytest.mark.parametrize("spec", ["auto", " Auto ", "all", "double 7-9, single 20", "layers", "refiner 1, layers 7-9", "double 0-99"])
def test_a_spelling_is_checked_against_the_kinds_alone(spec):
    check_spec(spec, ["double", "single", "refiner", "layers"])  # any model's block counts


@pytest.mark.parametrize("spec, message", [
    ("dubble 3", "cannot read 'dubble 3'; use auto, all, a kind (double, single) or ranges such as 'double 7-9'"),
    ("layers 3", "cannot read 'layers 3'"),  # a kind none of the given models has
    ("double 9-7", "in 'double 9-7', range 9-7 runs backwards"),
    ("auto, double 3", "auto stands alone"),
    (" , ", "empty selection"),
])
def test_a_misspelling_is_an_error_naming_the_field(spec, message):
    with pytest.raises(ValueError, match="ASAG parameter 'dit_layers'") as err:
        check_spec(spec, ["double", "single"])
    assert message in str(err.value)


def test_descriptions():
    assert describe_blocks({"refiner": 2, "layers": 1}) == "this model has refiner 0-1, layers 0"
    assert str(DitBlock("single", 4)) == "single 4" and DitBlock("single", 4).block_address == ("single", 4)


@pytest.mark.parametrize("spec", ["double 2, single 3-4", "single 0", "double 0-18, single 0-37", "refiner 1, layers 7-9"])
def test_a_selection_is_written_back_as_the_spec_that_selects_it(spec):
    kinds = {**FLUX, **NEXTDIT}
    assert spec_of(resolve_blocks(spec, kinds)) == spec
    assert spec_of(resolve_blocks("single 5, single 3-4, double 9, double 7", FLUX)) == "double 7, double 9, single 3-5"
    assert block_runs(resolve_blocks("double 2, double 4-5", FLUX)) == [("double", 2, 2), ("double", 4, 5)]
    assert is_auto(" Auto ") and not is_auto("auto, double 1")


def test_the_block_language_and_the_families_need_no_torch():
    """The UI venvs have no torch: the UI reads the families (block names, counts, what auto
    chooses) through them."""
    script = ("import sys, types\n"
              "class Block:\n"
              "    def find_spec(self, name, path=None, target=None):\n"
              "        if name.split('.')[0] == 'torch': raise ImportError(name)\n"
              "sys.meta_path.insert(0, Block())\n"
              "package = types.ModuleType('asag'); package.__path__ = ['asag']; sys.modules['asag'] = package\n"
              "from asag.hosts.families import FAMILIES\n"
              "print(FAMILIES[0].auto_spec({'double': 5, 'single': 20}))\n")
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "double 2, single 3-4"
