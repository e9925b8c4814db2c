"""Forge Neo runs SD1/SDXL UNets and transformer models from one page: the ASAG block control in
view is the one that applies to the model its selectors name (asag/hosts/ui.py ModelFollower,
asag/hosts/model_view.py), switching on a change of the UI preset or the checkpoint and on page
load; the other is hidden, its value kept. Run on Neo's page under its gradio 4.40 (the harness's
page "neo": its selectors from tests/ui/standin/gradio4/modules_forge/main_entry.py, checkpoint
files written from tests/ui/cases.py NEO_CHECKPOINTS), through gradio's own event processing;
the browser half is in test_browser.py. On the other hosts' pages nothing follows the model."""
import pytest

from asag.hosts.families import CHROMA, FLUX, NEXTDIT, QWEN_IMAGE
from asag.params import ESSENTIAL, PARAM_BY_NAME

from .cases import LOADED_BLOCKS, NEO_CHECKPOINTS, NEO_START
from .runner import PAGES, run_harness

# What each checkpoint of the page is, and what its transformer control says (None: a UNet).
EXPECTED = {
    "sdxl_base.safetensors": None,
    "flux2_klein_4b.safetensors": (FLUX, {"double": 5, "single": 20}, "this model has double 0-4, single 0-19"),
    "z_image_turbo.safetensors": (NEXTDIT, {"refiner": 2, "layers": 30}, "this model has refiner 0-1, layers 0-29"),
    # GGUF: the blocks are not read; the preset names the family, auto is its stated default
    "qwen_image_Q4_K_M.gguf": (QWEN_IMAGE, None, "blocks not read from a .gguf file"),
    "wan2.2_t2v_low_noise.safetensors": ("Wan 2.2", None, "not a model ASAG guides"),
    # the loaded model (a pruned Chroma from a pickle file, whose header is not read)
    "chroma_pruned.ckpt": (CHROMA, {"double": LOADED_BLOCKS["double_blocks"], "single": LOADED_BLOCKS["single_blocks"]},
                           "this model has double 0-18, single 0-29"),
}
assert set(EXPECTED) == set(NEO_CHECKPOINTS)


FOLLOWING = [host for host, page in PAGES.items() if page["follows_model"]]
OTHERS = [host for host, page in PAGES.items() if not page["follows_model"]]
assert FOLLOWING == ["neo"]


@pytest.fixture(scope="module")
def neo():
    out = run_harness("neo", "describe")
    return {event["event"]: event for event in out["events"] if "view_of" in event}


def _shown(event):
    """(layers visible, transformer blocks visible, their info) on both tabs, which must agree."""
    assert event["error"] is None, event["error"]
    assert [o.rsplit("_asag_", 1)[1] for o in event["outputs"]] == ["layers", "dit_layers"] * 2
    updates = event["data"]
    per_tab = [(updates[i]["visible"], updates[i + 1]["visible"], updates[i + 1]["info"]) for i in (0, 2)]
    assert per_tab[0] == per_tab[1], "txt2img and img2img differ"
    return per_tab[0]


def _check(shown, checkpoint):
    layers_visible, blocks_visible, info = shown
    expected = EXPECTED[checkpoint]
    if expected is None:
        assert (layers_visible, blocks_visible) == (True, False)
        return
    model, kinds, says = expected
    assert (layers_visible, blocks_visible) == (False, True)
    assert checkpoint in info and says in info
    if isinstance(model, str):  # a model ASAG does not guide
        assert info.startswith(model)
        return
    assert info.startswith(model.name + " (")
    auto = model.auto_spec(kinds) if kinds else model.default_blocks
    assert f"auto selects {auto}" in info


def test_the_page_load_shows_the_control_of_neos_current_model(neo):
    event = neo["model view on page load"]
    assert event["view_of"] == list(NEO_START)
    _check(_shown(event), NEO_START[1])


@pytest.mark.parametrize("checkpoint", sorted(NEO_CHECKPOINTS))
def test_choosing_a_checkpoint_shows_the_control_that_applies(neo, checkpoint):
    _check(_shown(neo[f"checkpoint {checkpoint}"]), checkpoint)


@pytest.mark.parametrize("checkpoint", sorted(NEO_CHECKPOINTS))
def test_choosing_a_preset_shows_the_control_of_its_checkpoint(neo, checkpoint):
    # the selector still shows the first checkpoint: the view is that of the one Neo selects with the preset
    preset = NEO_CHECKPOINTS[checkpoint][0]
    _check(_shown(neo[f"preset {preset}"]), checkpoint)


def test_a_failing_lookup_shows_both_controls_and_why(neo):
    layers_visible, blocks_visible, info = _shown(neo["checkpoint lookup fails"])
    assert (layers_visible, blocks_visible) == (True, True)
    assert "could not be told (TypeError" in info


def test_the_klein_blocks_are_fitted_by_auto(neo):
    # a shallower Flux: auto is not the stated double 7-9 (there is no double 7), and says what it is
    _, _, info = _shown(neo["checkpoint flux2_klein_4b.safetensors"])
    assert "auto selects double 7-9" not in info and "auto selects double " in info


@pytest.mark.parametrize("host", OTHERS)
def test_elsewhere_nothing_follows_the_model(host):
    out = run_harness(host, "describe")
    assert not [event for event in out["events"] if "view_of" in event]
    for tab in ("txt2img", "img2img"):
        controls = {c["elem_id"].rsplit("_asag_", 1)[1]: c for c in out["tabs"][tab]["components"]}
        assert controls["layers"]["visible"] and controls["dit_layers"]["visible"]
        assert out["tabs"][tab]["in_view"][-1] == f"script_{tab}_asag_layers"
        advanced = next(g for g in out["tabs"][tab]["groups"] if g["label"] == PARAM_BY_NAME["dit_layers"].group)
        assert f"script_{tab}_asag_dit_layers" in advanced["controls"]
    assert PARAM_BY_NAME["dit_layers"].group != ESSENTIAL
