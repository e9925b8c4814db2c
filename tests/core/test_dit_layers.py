"""The transformer block language (asag/dit_layers.py) against block counts as Flux and NextDiT have them."""
import pytest

from asag.dit_layers import DitBlock, describe_blocks, resolve_blocks

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


def test_descriptions():
    assert describe_blocks({"refiner": 2, "layers": 1}) == "this model has refiner 0-1, layers 0"
    assert str(DitBlock("single", 4)) == "single 4" and DitBlock("single", 4).block_address == ("single", 4)
