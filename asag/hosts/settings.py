"""The ASAG section of the WebUI's Settings tab: the defaults users change most, and diagnostics.

``on_ui_settings`` registers the options (``script_callbacks.on_ui_settings``). The readers take
``shared.opts`` and are called when they matter: ``current_defaults`` each time the controls are
built (the page, and the API, which rebuilds them per request for its defaults, so API callers
see a changed setting at once while the page needs "Reload UI"); ``diagnostics_enabled`` at
generation time. Each option's label, range and hint come from ``PARAMS``; a bad value in the
settings file is reported and replaced by the built-in default, never raised into the UI.

No gradio at import: the readers run, and are tested, without it.
"""
from __future__ import annotations

from ..log import logger
from ..params import PARAM_BY_NAME, AsagParams

SECTION = ("asag", "ASAG")

# Parameters whose default the Settings tab sets: parameter name -> option key. Adding a row here
# is all it takes to offer another one (label, range and hint follow from PARAMS).
DEFAULT_KEYS: dict[str, str] = {
    "scale": "asag_default_scale",
    "layers": "asag_default_layers",
}
DIAGNOSTICS_KEY = "asag_diagnostics"
DIAGNOSTICS_LABEL = "Log ASAG diagnostics to the console"
DIAGNOSTICS_INFO = ("per generation: the guidance's size, the adversarial plans' row entropy and column-marginal error, "
                    "NaN count and the extra pass's measured cost (A1111; synchronises the GPU, so slightly slower)")

# Wide enough for every UNet the WebUI loads, so that resolving against it checks only the spelling
# of a layer list; whether the loaded model has those blocks is checked at generation time.
_ANY_UNET_BLOCKS = 12
_ANY_UNET_TRANSFORMERS = 10


def option_infos(shared, gr) -> dict:
    """Option key -> ``shared.OptionInfo`` for every ASAG setting, in display order."""
    from .ui import control_for  # gradio-side mapping; imported here so this module needs no gradio

    infos = {}
    for name, key in DEFAULT_KEYS.items():
        spec = PARAM_BY_NAME[name]
        component, args = control_for(spec, gr)
        info = shared.OptionInfo(spec.default, f"Default {spec.label}", component, args, section=SECTION)
        infos[key] = _annotate(info, spec.help)
    infos[DIAGNOSTICS_KEY] = _annotate(
        shared.OptionInfo(False, DIAGNOSTICS_LABEL, gr.Checkbox, {}, section=SECTION), DIAGNOSTICS_INFO, reload_ui=False
    )
    return infos


def _annotate(info, text: str, reload_ui: bool = True):
    # .info / .needs_reload_ui exist since A1111 1.6 and in Forge; an older OptionInfo just goes without.
    if hasattr(info, "info"):
        info = info.info(text)
    if reload_ui and hasattr(info, "needs_reload_ui"):
        info = info.needs_reload_ui()
    return info


def add_options(shared, gr) -> None:
    for key, info in option_infos(shared, gr).items():
        shared.opts.add_option(key, info)


def on_ui_settings() -> None:
    """``script_callbacks.on_ui_settings`` callback."""
    import gradio as gr
    from modules import shared

    add_options(shared, gr)


def current_defaults(opts) -> AsagParams:
    """The control defaults, with the Settings tab's values where they are set and valid."""
    values = {}
    for name, key in DEFAULT_KEYS.items():
        raw = getattr(opts, key, None)  # None also where the options are not registered (yet)
        if raw is None:
            continue
        spec = PARAM_BY_NAME[name]
        try:
            value = spec.coerce(raw)
            if name == "layers":
                _check_layer_list(value)
        except ValueError as err:
            logger.warning("Settings > ASAG > %s: %s; using %r instead", f"Default {spec.label}", err, spec.default)
            continue
        values[name] = value
    return AsagParams(**values)


def diagnostics_enabled(opts) -> bool:
    return bool(getattr(opts, DIAGNOSTICS_KEY, False))


def _check_layer_list(spec: str) -> None:
    from ..layers import LayerAddress, resolve_layers

    any_unet = [
        LayerAddress(part, block, transformer)
        for part, blocks in (("input", _ANY_UNET_BLOCKS), ("middle", 1), ("output", _ANY_UNET_BLOCKS))
        for block in range(blocks)
        for transformer in range(_ANY_UNET_TRANSFORMERS)
    ]
    try:
        resolve_layers(spec, any_unet)
    except ValueError:
        # resolve_layers' message lists the stand-in UNet's blocks, which would mislead here.
        raise ValueError(
            f"ASAG parameter 'layers': cannot read {spec!r}; use all, input, middle, output, or blocks "
            "like m0, d1, d1.0, u0-2 (comma separated)"
        ) from None
