"""Transformer (DiT) model families ASAG can guide on Forge Neo, one small module each, behind
one interface (``DitFamily``), picked from the loaded model by ``family_for``. A family says
where its self-attention is computed, how its blocks are named and called, and its default
blocks; the Forge adapter does the rest as for a UNet (asag/hosts/forge_dit.py)."""
from __future__ import annotations

from .anima import ANIMA
from .base import DitFamily
from .flux import CHROMA, FLUX
from .nextdit import NEXTDIT
from .qwen import QWEN_IMAGE

FAMILIES: tuple[DitFamily, ...] = (FLUX, CHROMA, NEXTDIT, ANIMA, QWEN_IMAGE)


def family_for(diffusion_model) -> DitFamily | None:
    """The family of the loaded transformer, or None where ASAG has none for it."""
    return next((family for family in FAMILIES if family.matches(diffusion_model)), None)


__all__ = ["DitFamily", "FAMILIES", "family_for"]
