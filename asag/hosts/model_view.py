"""Which of ASAG's two block controls applies to the model selected on Forge Neo's page.

Neo runs SD1/SDXL UNets and transformer models from one page: ASAG's UNet layer list (``layers``)
applies to the first, the transformer blocks (``dit_layers``) to the second. The page names the
model by its UI preset (``forge_ui_preset``) and its checkpoint (``setting_sd_model_checkpoint``);
Neo loads the model itself only at the next generation (``sd_models.forge_model_reload``). So
``view_for`` tells the model, in this order, from:

1. the loaded model, where it is the selected checkpoint (what the adapter will see);
2. the checkpoint file's tensor names (a safetensors header: 8 bytes of length, then JSON), the
   model's prefix stripped as Neo's loader does, matched against each family's
   ``checkpoint_keys``, the blocks counted per list as Neo counts them
   (``huggingface_guess/detection.py`` ``count_blocks``);
3. the UI preset, where the file cannot tell (GGUF, a pickle, no match): the family without its
   block counts, and the info says so.

``asag/hosts/ui.py`` shows the control a ``ModelView`` names. No gradio, no torch: the UI tests
run it in the gradio venvs; the host's modules are imported when a view is asked for.
"""
from __future__ import annotations

import functools
import json
import os
import re
from dataclasses import dataclass
from typing import Mapping

from ..dit_layers import block_ranges, describe_blocks
from . import detect
from .families import FAMILIES, DitFamily, family_for
from .families.anima import ANIMA
from .families.flux import FLUX
from .families.nextdit import NEXTDIT
from .families.qwen import QWEN_IMAGE

UNET = "UNet"
# Forge Neo's UI presets (modules_forge/presets.py ``PresetArch``): what each is for, where the
# checkpoint file cannot tell. Presets for models ASAG does not guide are named for the info.
PRESET_MODELS: dict[str, DitFamily | str] = {"sd": UNET, "xl": UNET, "flux": FLUX, "klein": FLUX, "qwen": QWEN_IMAGE,
                                             "lumina": NEXTDIT, "zit": NEXTDIT, "anima": ANIMA}
PRESET_UNSUPPORTED = {"wan": "Wan 2.2", "ernie": "ERNIE-Image", "pid": "PiD", "krea": "Krea 2", "ltx2": "LTX-2"}
# Prefixes of the diffusion model's tensors in a checkpoint file (Neo backend/loader.py
# preprocess_state_dict: a file with neither holds the diffusion model alone).
MODEL_PREFIXES = ("model.diffusion_model.", "net.")
UNET_KEY = "input_blocks."
HEADER_LIMIT = 256 * 2**20  # a safetensors header longer than this is not one

SUPPORTED = f"SD1/SDXL UNets and {', '.join(family.name for family in FAMILIES)}"


@dataclass(frozen=True)
class ModelView:
    """Which block control applies (both where the model cannot be told), and the text shown
    under the transformer control: the model, its blocks, what ``auto`` selects on it."""

    unet: bool
    transformer: bool
    info: str


def unet_view(name: str) -> ModelView:
    return ModelView(True, False, f"{name}: a UNet model, where 'ASAG layers' applies.")


def family_view(family: DitFamily, kinds: Mapping[str, int] | None, name: str, why_no_counts: str = "") -> ModelView:
    """``kinds``: the model's block count per kind; None where unknown (``why_no_counts``)."""
    if kinds is None:
        return ModelView(False, True, f"{family.name} ({name}; {why_no_counts}): auto selects {family.default_blocks}, stated "
                                      f"for a model with {block_ranges(family.reference_depths)}; the same relative depth on one "
                                      "with fewer.")
    auto = family.auto_spec(kinds)
    chosen = f"auto selects {auto}" if auto else f"auto has no block to choose here (the default is {family.default_blocks})"
    return ModelView(False, True, f"{family.name} ({name}): {describe_blocks(kinds)}; {chosen}.")


def unsupported_view(what: str, name: str) -> ModelView:
    return ModelView(False, True, f"{what} ({name}): not a model ASAG guides ({SUPPORTED}); its images are left alone, "
                                  "with a note in the infotext.")


def unknown_view(name: str, why: str) -> ModelView:
    return ModelView(True, True, f"The model of {name} could not be told ({why}): 'ASAG layers' applies to SD1/SDXL, "
                                 "these blocks to transformer models.")


# ---- the checkpoint file ------------------------------------------------------------------------

def checkpoint_keys(path: str) -> tuple[list[str] | None, str]:
    """The tensor names in the safetensors file ``path``, or None and why not."""
    extension = os.path.splitext(path)[1].lower()
    if extension not in (".safetensors", ".sft"):
        return None, f"blocks not read from a {extension or 'extensionless'} file"
    try:
        stat = os.stat(path)
        return list(_safetensors_keys(path, stat.st_size, stat.st_mtime_ns)), ""
    except (OSError, ValueError) as err:
        return None, f"its header could not be read: {err}"


@functools.lru_cache(maxsize=64)
def _safetensors_keys(path: str, size: int, mtime_ns: int) -> tuple[str, ...]:
    with open(path, "rb") as f:
        length = int.from_bytes(f.read(8), "little")
        if not 0 < length <= min(HEADER_LIMIT, size - 8):
            raise ValueError(f"a header length of {length} bytes in a file of {size}")
        header = json.loads(f.read(length))
    if not isinstance(header, dict):
        raise ValueError("the header is not a JSON object")
    return tuple(key for key in header if key != "__metadata__")


def model_keys(keys) -> list[str]:
    """The diffusion model's tensor names, its prefix stripped."""
    prefix = next((p for p in MODEL_PREFIXES if any(k.startswith(p) for k in keys)), "")
    return [k[len(prefix):] for k in keys if k.startswith(prefix)]


def family_from_keys(keys) -> DitFamily | None:
    """The family whose ``checkpoint_keys`` all start some tensor name; the most specific one
    where several do (Chroma's signature is Flux's and more)."""
    matching = [f for f in FAMILIES if f.checkpoint_keys and all(any(k.startswith(p) for k in keys) for p in f.checkpoint_keys)]
    return max(matching, key=lambda f: len(f.checkpoint_keys), default=None)


def block_counts(family: DitFamily, keys) -> dict[str, int]:
    """Block count per selectable kind: the blocks ``<list>.0.`` on, up to the first missing."""
    counts = {}
    for kind, attribute in family.block_lists:
        if kind in family.text_only:
            continue
        pattern = re.compile(rf"^{re.escape(attribute)}\.(\d+)\.")
        present = {int(m[1]) for m in map(pattern.match, keys) if m}
        counts[kind] = next(i for i in range(len(present) + 1) if i not in present)
    return counts


def view_from_keys(keys, name: str) -> ModelView | None:
    keys = model_keys(keys)
    if any(k.startswith(UNET_KEY) for k in keys):
        return unet_view(name)
    family = family_from_keys(keys)
    return family_view(family, block_counts(family, keys), name) if family else None


# ---- the host ----------------------------------------------------------------------------------

def follows_model(host: str) -> bool:
    """Whether the page's model decides which block control is in view: where ASAG runs
    transformer models (Forge Neo), probed as the adapter will use them."""
    if host != detect.FORGE:
        return False
    for family in FAMILIES:
        if not detect.importable(family.neo.attention_module):
            continue
        try:
            family.check_host()
        except (ValueError, AttributeError):
            continue
        return True
    return False


def _loaded_view(sd_models, checkpoint) -> ModelView | None:
    """From the loaded model, where it is ``checkpoint`` (``model_data.sd_model``: the attribute,
    which never loads one)."""
    model = getattr(getattr(sd_models, "model_data", None), "sd_model", None)
    loaded = getattr(model, "sd_checkpoint_info", None)
    if loaded is None or getattr(loaded, "filename", None) != checkpoint.filename:
        return None
    name = os.path.basename(checkpoint.filename)
    if any(getattr(model, flag, False) for flag in ("is_sd1", "is_sd2", "is_sdxl")):  # as the adapter tells (forge.py)
        return unet_view(name)
    diffusion_model = model.forge_objects.unet.model.diffusion_model
    family = family_for(diffusion_model)
    if family is None:
        return unsupported_view(type(diffusion_model).__name__, name)
    return family_view(family, family.kinds(diffusion_model), name)


def view_for(preset: str | None, checkpoint_title: str | None) -> ModelView:
    """What applies to ``checkpoint_title`` (as the checkpoint selector holds it) under the UI
    preset ``preset``."""
    from modules import sd_models

    checkpoint = sd_models.get_closet_checkpoint_match(checkpoint_title) if checkpoint_title else None
    if checkpoint is None:
        name, why = repr(checkpoint_title) if checkpoint_title else "no checkpoint", "no such checkpoint file"
    else:
        name = os.path.basename(checkpoint.filename)
        view = _loaded_view(sd_models, checkpoint)
        if view is not None:
            return view
        keys, why = checkpoint_keys(checkpoint.filename)
        if keys is not None:
            view = view_from_keys(keys, name)
            if view is not None:
                return view
            why = "its tensor names match no model ASAG knows"
    model = PRESET_MODELS.get(preset)
    if model == UNET:
        return unet_view(name)
    if model is not None:
        return family_view(model, None, name, f"{why}; the UI preset {preset!r} says {model.name}")
    if preset in PRESET_UNSUPPORTED:
        return unsupported_view(PRESET_UNSUPPORTED[preset], name)
    return unknown_view(name, f"{why}; UI preset {preset!r}")


def current_view() -> ModelView:
    """What applies to the preset and checkpoint Neo has now (``shared.opts``), as a page shows on load."""
    from modules import shared

    return view_for(getattr(shared.opts, "forge_preset", None), getattr(shared.opts, "sd_model_checkpoint", None))


def checkpoint_for_preset(preset: str, shown: str | None) -> str | None:
    """The checkpoint Neo selects with ``preset`` (modules_forge/main_entry.py ``on_preset_change``:
    the preset's own, else the current one), so a view for a preset change does not wait for the
    checkpoint selector's own change."""
    from modules import shared

    return getattr(shared.opts, f"forge_checkpoint_{preset}", None) or shown
