"""Transformer (DiT) model families ASAG can guide, one small module each, behind one interface
(``DitFamily``): its architecture once (block lists, kinds, default blocks), and per host what the
host's code builds (``NeoModel``: Forge Neo, asag/hosts/forge_dit.py; ``ComfyModel``: ComfyUI,
asag/hosts/comfyui_dit.py). ``family_for`` picks Neo's family of a loaded model,
``comfyui_family_for`` ComfyUI's."""
from __future__ import annotations

from .anima import ANIMA
from .base import DitFamily
from .flux import CHROMA, FLUX
from .nextdit import NEXTDIT
from .qwen import QWEN_IMAGE
from .sd3 import SD3

FAMILIES: tuple[DitFamily, ...] = (FLUX, CHROMA, NEXTDIT, ANIMA, QWEN_IMAGE)  # those Forge Neo runs
COMFYUI_FAMILIES: tuple[DitFamily, ...] = (FLUX, CHROMA, SD3, QWEN_IMAGE, NEXTDIT)  # those ComfyUI runs
assert all(family.neo for family in FAMILIES) and all(family.comfyui for family in COMFYUI_FAMILIES)


def family_for(diffusion_model) -> DitFamily | None:
    """The family of Neo's loaded transformer, or None where ASAG has none for it."""
    return next((family for family in FAMILIES if family.matches(diffusion_model)), None)


def comfyui_family_for(diffusion_model) -> DitFamily | None:
    """The family of ComfyUI's loaded transformer, or None where ASAG has none for it."""
    return next((family for family in COMFYUI_FAMILIES if family.matches_comfyui(diffusion_model)), None)


__all__ = ["ANIMA", "CHROMA", "COMFYUI_FAMILIES", "DitFamily", "FAMILIES", "FLUX", "NEXTDIT", "QWEN_IMAGE", "SD3", "comfyui_family_for",
           "family_for"]
