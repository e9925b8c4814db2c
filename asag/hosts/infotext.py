"""Infotext: what ASAG writes into a generation's parameters, and what a paste reads back."""
from __future__ import annotations

from ..params import ENABLED_MARKER_KEY, NOTE_KEY, PARAM_BY_INFOTEXT_KEY, PARAMS, AsagParams

# Infotext carries no enable flag: ASAG is on when its marker key is present. The paste hook
# (fill_pasted_params) derives this key so the accordion can use a plain string key, which is
# what "Send to img2img" copies.
PASTE_ENABLED_KEY = "ASAG enabled"

# The blocks ``auto`` chose on the transformer model of the generation (the setting itself stays
# ``auto``, so a paste chooses again for the model loaded then). Not read back.
AUTO_BLOCKS_KEY = "ASAG auto blocks"

ALL_KEYS = (*PARAM_BY_INFOTEXT_KEY, NOTE_KEY, AUTO_BLOCKS_KEY)


def write(extra_generation_params: dict, params: AsagParams | None, note: str | None = None) -> None:
    """Put this generation's ASAG entries into ``p.extra_generation_params``, removing stale ones
    first (the X/Y/Z plot shares that dict between cells)."""
    for key in ALL_KEYS:
        extra_generation_params.pop(key, None)
    if params is not None:
        extra_generation_params.update(params.to_infotext())
    if note:
        extra_generation_params[NOTE_KEY] = note


def fill_pasted_params(infotext: str, params: dict) -> None:
    """``on_infotext_pasted`` hook: make a paste restore every control.

    Only non-default values are written, so when ASAG was on, the missing keys get their
    defaults; the enable key is derived from the marker (absent marker: ASAG off)."""
    enabled = ENABLED_MARKER_KEY in params
    params[PASTE_ENABLED_KEY] = enabled
    if not enabled:
        return
    try:
        pasted = AsagParams.from_infotext(params)
    except ValueError:
        return  # leave the text as it is: the fields keep what they had, nothing is invented
    for spec in PARAMS:
        if spec.infotext_key:
            params[spec.infotext_key] = getattr(pasted, spec.name)
