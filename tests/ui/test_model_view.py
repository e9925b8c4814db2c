"""asag/hosts/model_view.py without gradio: which model a checkpoint file holds (its safetensors
header), the family and its block counts from the tensor names, the fallbacks, and on which hosts
the page's model decides the block control in view. Files are written by the real safetensors
library and by the writer the UI harness uses (tests/ui/cases.py)."""
import os
import sys
import types

import pytest
import torch
from safetensors.torch import load_file, save_file

from asag.hosts import detect, model_view
from asag.hosts.families import ANIMA, CHROMA, FAMILIES, FLUX, NEXTDIT, QWEN_IMAGE

from tests.hosts.forge_env import forge_line_host  # noqa: F401  (a fixture)

from .cases import _numbered, safetensors_bytes

FLUX_DEV = [*_numbered("double_blocks", 19, "img_attn.norm.key_norm.scale"), *_numbered("single_blocks", 38, "linear1.weight"), "img_in.weight"]


def _write(folder, name, names):
    path = os.path.join(folder, name)
    save_file({key: torch.zeros(1) for key in names}, path)
    return path


def test_the_tensor_names_of_a_safetensors_file(tmp_path):
    names = ["model.diffusion_model.input_blocks.0.0.weight", "first_stage_model.decoder.conv_in.weight"]
    keys, why = model_view.checkpoint_keys(_write(tmp_path, "m.safetensors", names))
    assert (sorted(keys), why) == (sorted(names), "")


def test_the_harness_writes_what_the_library_reads(tmp_path):
    path = tmp_path / "written.safetensors"
    path.write_bytes(safetensors_bytes(FLUX_DEV))
    assert sorted(load_file(str(path))) == sorted(FLUX_DEV)


@pytest.mark.parametrize("name, content, says", [
    ("m.gguf", b"GGUF\x03\x00\x00\x00", "not read from a .gguf file"),
    ("m.ckpt", b"PK\x03\x04", "not read from a .ckpt file"),
    ("m.safetensors", (10**12).to_bytes(8, "little") + b"{}", "header could not be read"),
    ("m.safetensors", (4).to_bytes(8, "little") + b"[1] ", "header could not be read"),
    ("m.safetensors", (6).to_bytes(8, "little") + b"{nope", "header could not be read"),
])
def test_what_cannot_be_read_says_why(tmp_path, name, content, says):
    path = tmp_path / name
    path.write_bytes(content)
    keys, why = model_view.checkpoint_keys(str(path))
    assert keys is None and says in why


def test_a_missing_file_says_why(tmp_path):
    keys, why = model_view.checkpoint_keys(str(tmp_path / "gone.safetensors"))
    assert keys is None and "could not be read" in why


@pytest.mark.parametrize("prefix", ["", "model.diffusion_model."])
def test_flux_and_chroma_told_apart_and_counted(prefix):
    flux = [prefix + k for k in FLUX_DEV] + ["vae.decoder.conv_in.weight"]
    assert model_view.family_from_keys(model_view.model_keys(flux)) is FLUX
    chroma = flux + [prefix + "distilled_guidance_layer.norms.0.scale"]
    assert model_view.family_from_keys(model_view.model_keys(chroma)) is CHROMA
    assert model_view.block_counts(FLUX, model_view.model_keys(flux)) == {"double": 19, "single": 38}


def test_each_family_is_recognised_by_its_own_keys_only():
    files = [
        (NEXTDIT, ["cap_embedder.1.weight", *_numbered("context_refiner", 2, "attention.qkv.weight"),
                  *_numbered("noise_refiner", 2, "attention.k_norm.weight"), *_numbered("layers", 26, "attention.qkv.weight")]),
        (ANIMA, ["net." + k for k in [*_numbered("blocks", 28, "mlp.layer1.weight"), *_numbered("blocks", 28, "self_attn.q_proj.weight"),
                                     "llm_adapter.blocks.0.cross_attn.q_proj.weight"]]),
        (QWEN_IMAGE, ["txt_norm.weight", "img_in.weight", *_numbered("transformer_blocks", 60, "attn.to_q.weight")]),
        (FLUX, FLUX_DEV),
    ]
    for family, keys in files:
        assert model_view.family_from_keys(model_view.model_keys(keys)) is family, family.name
    assert all(family.checkpoint_keys for family in FAMILIES), "a family without a signature"
    counts = model_view.block_counts(NEXTDIT, files[0][1])
    assert counts == {"refiner": 2, "layers": 26}  # the text-only caption refiners cannot be selected
    # Wan 2.2 and Krea 2 also have "blocks.N.": not Anima's
    assert model_view.family_from_keys(["blocks.0.ffn.0.weight", "head.modulation"]) is None
    assert model_view.family_from_keys(["blocks.0.attn.wq.weight", "txtfusion.projector.weight"]) is None


def test_blocks_are_counted_up_to_the_first_missing():
    keys = [*_numbered("double_blocks", 3, "img_attn.norm.key_norm.scale"), "double_blocks.7.x", *_numbered("single_blocks", 2, "w")]
    assert model_view.block_counts(FLUX, keys) == {"double": 3, "single": 2}


def test_a_unet_checkpoint():
    view = model_view.view_from_keys(["model.diffusion_model.input_blocks.0.0.weight", "conditioner.x"], "sdxl.safetensors")
    assert (view.unet, view.transformer) == (True, False)


def test_the_view_names_the_blocks_and_what_auto_selects():
    kinds = {"double": 5, "single": 20}
    view = model_view.family_view(FLUX, kinds, "klein.safetensors")
    assert (view.unet, view.transformer) == (False, True)
    assert view.info == f"Flux (klein.safetensors): this model has double 0-4, single 0-19; auto selects {FLUX.auto_spec(kinds)}."
    view = model_view.family_view(QWEN_IMAGE, None, "q.gguf", "blocks not read from a .gguf file")
    assert "auto selects blocks 7-9, stated for a model with blocks 0-59" in view.info and "q.gguf" in view.info


@pytest.fixture
def neo_modules(tmp_path):
    """The host modules view_for reads, as Neo has them (modules/sd_models.py, modules/shared.py)."""
    checkpoints = {}

    def match(title):
        return checkpoints.get(title)

    sd_models = types.SimpleNamespace(get_closet_checkpoint_match=match,
                                      model_data=types.SimpleNamespace(sd_model=types.SimpleNamespace()))
    shared = types.SimpleNamespace(opts=types.SimpleNamespace(forge_preset="flux", sd_model_checkpoint=None))
    modules = types.ModuleType("modules")
    modules.sd_models, modules.shared = sd_models, shared
    saved = {name: sys.modules.get(name) for name in ("modules", "modules.sd_models", "modules.shared")}
    sys.modules.update({"modules": modules, "modules.sd_models": sd_models, "modules.shared": shared})
    try:
        yield types.SimpleNamespace(folder=tmp_path, checkpoints=checkpoints, sd_models=sd_models, shared=shared)
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


def _checkpoint(neo, name, names=None, content=b""):
    path = _write(neo.folder, name, names) if names is not None else str(neo.folder / name)
    if names is None:
        (neo.folder / name).write_bytes(content)
    neo.checkpoints[name] = types.SimpleNamespace(filename=path)
    return name


def test_view_for_reads_the_file_then_falls_back_on_the_preset(neo_modules):
    assert model_view.view_for("xl", _checkpoint(neo_modules, "flux.safetensors", FLUX_DEV)).info.startswith("Flux (flux.safetensors)")
    gguf = _checkpoint(neo_modules, "flux-Q8.gguf", content=b"GGUF")
    view = model_view.view_for("flux", gguf)
    assert view.transformer and not view.unet and "the UI preset 'flux' says Flux" in view.info
    assert model_view.view_for("xl", gguf).unet
    # neither the file nor the preset tells: both controls, and why
    view = model_view.view_for("ideogram", gguf)
    assert (view.unet, view.transformer) == (True, True) and "could not be told" in view.info and "'ideogram'" in view.info
    view = model_view.view_for("sd", "nowhere.safetensors")
    assert view.unet and not view.transformer


def test_view_for_prefers_the_loaded_model_where_it_is_the_selected_checkpoint(neo_modules):
    selected = _checkpoint(neo_modules, "chroma.safetensors", FLUX_DEV)  # the file says Flux, 19 + 38
    diffusion_model = type("IntegratedChromaTransformer2DModel", (), {"__module__": "backend.nn.chroma"})()
    diffusion_model.double_blocks, diffusion_model.single_blocks = [None] * 19, [None] * 30
    loaded = types.SimpleNamespace(sd_checkpoint_info=neo_modules.checkpoints[selected], is_sd1=False, is_sdxl=False,
                                   forge_objects=types.SimpleNamespace(unet=types.SimpleNamespace(model=types.SimpleNamespace(
                                       diffusion_model=diffusion_model))))
    neo_modules.sd_models.model_data.sd_model = loaded
    assert model_view.view_for("flux", selected).info.startswith("Chroma (chroma.safetensors): this model has double 0-18, single 0-29")
    other = _checkpoint(neo_modules, "other.safetensors", FLUX_DEV)  # another checkpoint selected: its file
    assert model_view.view_for("flux", other).info.startswith("Flux (other.safetensors): this model has double 0-18, single 0-37")
    loaded.is_sdxl = True
    assert model_view.view_for("flux", selected).unet


def test_the_preset_change_looks_at_the_checkpoint_neo_selects_with_it(neo_modules):
    neo_modules.shared.opts.forge_checkpoint_klein = "klein.safetensors"
    assert model_view.checkpoint_for_preset("klein", "shown.safetensors") == "klein.safetensors"
    assert model_view.checkpoint_for_preset("zit", "shown.safetensors") == "shown.safetensors"


def test_the_model_decides_the_control_on_forge_neo_only(forge_line_host):  # noqa: F811
    host = forge_line_host
    assert model_view.follows_model(host.detect.detect_host()) is (host.line == "neo")
    assert model_view.follows_model(detect.A1111) is False
