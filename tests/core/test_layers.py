"""Layer selection against real ldm UNets (module names are the same in sgm for SDXL)."""
import pytest

from asag.layers import LayerAddress, address_of, check_spec, describe_available, resolve_layers, self_attention_modules
from tests.models import tiny_unet


@pytest.fixture(scope="module")
def sd1():
    return self_attention_modules(tiny_unet("sd1"))


@pytest.fixture(scope="module")
def sdxl():
    return self_attention_modules(tiny_unet("sdxl"))


def names(unet_layers, selected, model):
    by_module = {id(m): n for n, m in model.named_modules()}
    return sorted(by_module[id(unet_layers[a])] for a in selected)


def test_finds_exactly_the_self_attention_modules():
    model = tiny_unet("sd1")
    found = self_attention_modules(model)
    attn1_names = sorted(n for n, _ in model.named_modules() if n.endswith(".attn1"))
    assert names(found, found, model) == attn1_names
    assert len(found) == 16  # as SD1.5: 6 input, 1 middle, 9 output
    assert all(type(m).__name__ == "CrossAttention" for m in found.values())
    assert not any(n.endswith("attn2") for n in names(found, found, model))


def test_addresses_are_structural():
    assert address_of("input_blocks.7.1.transformer_blocks.0.attn1") == LayerAddress("input", 7, 0)
    assert address_of("middle_block.1.transformer_blocks.3.attn1") == LayerAddress("middle", 0, 3)
    assert address_of("output_blocks.11.1.transformer_blocks.0.attn1") == LayerAddress("output", 11, 0)
    assert address_of("output_blocks.11.1.transformer_blocks.0.attn2") is None
    assert address_of("output_blocks.1.1.transformer_blocks.0.attn1.to_q") is None
    assert LayerAddress("input", 4, 1).patch_key == ("input", 4, 1)


def test_middle_is_the_default_and_resolves_to_the_middle_block(sd1):
    assert resolve_layers("middle", sd1) == [LayerAddress("middle", 0, 0)]
    assert resolve_layers("m0", sd1) == resolve_layers("middle", sd1)


def test_auto_is_the_documented_default_middle(sd1, sdxl):
    assert resolve_layers("auto", sd1) == resolve_layers("middle", sd1)
    assert resolve_layers(" AUTO , u0", sdxl) == resolve_layers("middle, u0", sdxl)
    with pytest.raises(ValueError, match="'auto' selects no layer"):  # SSD-1B: no middle attention
        resolve_layers("auto", [LayerAddress("input", 4, 0)])


@pytest.mark.parametrize("spec", ["auto", "middle", "all, u0-2.1-3", "d1.0, m0", "output", "d11, u11.9"])
def test_a_spelling_is_checked_without_a_model(spec):
    check_spec(spec)  # any UNet's blocks: SDXL's deepest stacks included


@pytest.mark.parametrize("spec", ["midle", "x1", "", "d2-1", "u0.3-1", "d12"])
def test_a_misspelling_is_an_error_naming_the_field_without_listing_a_model(spec):
    with pytest.raises(ValueError, match=r"ASAG parameter 'layers': cannot read .*; use auto, all, input, middle, output") as err:
        check_spec(spec)
    assert "this model has" not in str(err.value)


def test_block_ordinals_count_blocks_with_attention(sd1, sdxl):
    # d0 is the first input block that has attention: input_blocks.1 in SD1, input_blocks.4 in SDXL.
    assert resolve_layers("d0", sd1) == [LayerAddress("input", 1, 0)]
    assert resolve_layers("d0", sdxl) == [LayerAddress("input", 4, 0), LayerAddress("input", 4, 1)]
    assert resolve_layers("d1.0", sdxl) == [LayerAddress("input", 5, 0)]
    assert resolve_layers("u0-2", sd1) == [LayerAddress("output", i, 0) for i in (0, 1, 2)]
    assert resolve_layers("u0-1.1", sdxl) == [LayerAddress("output", 0, 1), LayerAddress("output", 1, 1)]


def test_parts_lists_and_all(sd1, sdxl):
    assert len(resolve_layers("input", sd1)) == 6
    assert len(resolve_layers("output", sd1)) == 9
    assert resolve_layers("all", sdxl) == sorted(sdxl)
    assert resolve_layers(" M0 , d1.0,m0", sd1) == [LayerAddress("input", 2, 0), LayerAddress("middle", 0, 0)]


def test_no_substring_overmatching(sd1):
    # diffusers' regex selection lets "blocks.1" hit blocks 10-19; structured addresses cannot.
    assert resolve_layers("u1", sd1) == [LayerAddress("output", 1, 0)]


@pytest.mark.parametrize("spec,message", [
    ("", "empty selection"),
    (" , ", "empty selection"),
    ("d9", "lacks"),
    ("m1", "lacks"),
    ("u0.3", "selects no layer"),
    ("middle_block", "cannot read"),
    ("x1", "cannot read"),
    ("d2-1", "runs backwards"),
])
def test_bad_selections_name_the_item_and_list_the_model(sd1, spec, message):
    with pytest.raises(ValueError, match=message) as err:
        resolve_layers(spec, sd1)
    assert "'layers'" in str(err.value)
    if spec.strip(" ,"):
        assert "m0 = middle_block (1)" in str(err.value)  # what the loaded model has


def test_a_model_without_middle_attention_says_so():
    # SSD-1B deletes middle_block.1: "middle" must fail loudly there, not select nothing.
    available = [LayerAddress("input", 4, 0), LayerAddress("output", 0, 0)]
    with pytest.raises(ValueError, match="'middle' selects no layer"):
        resolve_layers("middle", available)
    assert "m0" not in describe_available(available)
    assert "no self-attention" in describe_available([])


@pytest.mark.parametrize("height,width", [(16, 16), (8, 12), (4, 4), (20, 8)])
def test_token_counts_are_what_the_layers_see(height, width):
    # Measured: a pre-hook on every attn1 records its input's token count in a real forward pass.
    import torch

    from asag.layers import attention_tokens, single_token_only

    model = tiny_unet("sd1")
    layers = self_attention_modules(model)
    seen = {}
    hooks = [module.register_forward_pre_hook(lambda m, args, a=address: seen.__setitem__(a, args[0].shape[1]))
             for address, module in layers.items()]
    try:
        with torch.no_grad():
            model(torch.zeros(1, 4, height, width), torch.tensor([10.0]), context=torch.zeros(1, 3, 32))
    finally:
        for hook in hooks:
            hook.remove()
    assert attention_tokens(model, layers, height, width) == seen
    middle = [LayerAddress("middle", 0, 0)]
    assert single_token_only(model, middle, height, width) == (seen[middle[0]] == 1)
    assert not single_token_only(model, layers, height, width)  # the outer layers have more


def test_a_downsampling_rounds_up():
    from asag.layers import attention_tokens

    model = tiny_unet("sd1")
    tokens = attention_tokens(model, [LayerAddress("input", 4, 0), LayerAddress("middle", 0, 0)], 5, 7)
    assert tokens == {LayerAddress("input", 4, 0): 3 * 4, LayerAddress("middle", 0, 0): 2 * 2}
