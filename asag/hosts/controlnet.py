"""sd-webui-controlnet interop (A1111): which enabled units need the full-batch extra pass."""
from __future__ import annotations


def needs_full_batch(p) -> bool:
    """True when an enabled ControlNet unit keeps per-generation state sized by the first UNet call."""
    return False
