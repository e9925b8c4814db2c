"""sd-webui-controlnet interop on A1111 (forge-and-controlnet.md, part B).

Plain ControlNet, T2I-Adapter and ControlLLLite units need nothing: the extra pass goes through
ControlNet's replaced ``UNetModel.forward`` with the conds as the denoiser built them (marker token
included), so the perturbed prediction gets the same residuals as the main one.

Some units keep state sized by the first UNet call of the generation (B.3): IP-Adapter (with
FaceID, PuLID), InstantID, reference_*, inpaint_only*, tile_colorfix*, and multi-image or
AnimateDiff hints. A cond-only call would crash them or silently pair rows wrongly, so while any of
them is enabled the extra pass uses the main pass's full cond + uncond layout.
"""
from __future__ import annotations

import sys

from ..log import logger

# Preprocessor (module) or model name fragments of units with per-generation state.
STATEFUL_NAME_PARTS = ("ip-adapter", "ip_adapter", "ipadapter", "instant_id", "instantid", "pulid",
                       "reference", "inpaint_only", "tile_colorfix")
# external_code's module names: the package ControlNet imports, and the scripts/ re-export.
EXTERNAL_CODE_MODULES = ("internal_controlnet.external_code", "scripts.external_code")


def external_code():
    """sd-webui-controlnet's public API module, if that extension is loaded."""
    for name in EXTERNAL_CODE_MODULES:
        module = sys.modules.get(name)
        if module is not None and hasattr(module, "get_all_units_in_processing"):
            return module
    return None


def stateful_reason(unit) -> str | None:
    """Why ``unit`` needs the full-batch extra pass, or None."""
    names = f"{getattr(unit, 'module', '')} {getattr(unit, 'model', '')}".lower()
    for part in STATEFUL_NAME_PARTS:
        if part in names:
            return f"{unit.module} / {unit.model}"
    input_mode = getattr(getattr(unit, "input_mode", None), "value", getattr(unit, "input_mode", "simple"))
    if input_mode == "merge" or getattr(unit, "animatediff_batch", False):
        return f"{unit.module} with several hint images"
    return None


def needs_full_batch(p) -> bool:
    api = external_code()
    if api is None:
        return False
    try:
        units = api.get_all_units_in_processing(p)
    except Exception as err:  # a ControlNet version whose API differs: say so, assume the safe mode
        logger.warning("could not list ControlNet units (%s): using the full-batch extra pass", err)
        return True
    reasons = [reason for unit in units if getattr(unit, "enabled", False) for reason in [stateful_reason(unit)] if reason]
    if reasons:
        logger.info("full-batch extra pass for ControlNet unit(s) with per-generation state: %s", "; ".join(reasons))
    return bool(reasons)
