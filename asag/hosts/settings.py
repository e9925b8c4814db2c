"""The ASAG section of the WebUI's Settings tab: the defaults users change most, and the options
of the host side (diagnostics, reuse of the main pass, the attention's memory budget).

``on_ui_settings`` registers the options (``script_callbacks.on_ui_settings``). The readers take
``shared.opts`` and are called when they matter: ``current_defaults`` each time the controls are
built (the page, and the API, which rebuilds them per request for its defaults, so API callers
see a changed setting at once while the page needs "Reload UI"); ``host_options`` once per
generation. The defaults' labels, ranges and hints come from ``PARAMS``, the host options' from
``HOST_OPTIONS``; a bad value in the settings file is reported and replaced by the built-in
default, never raised into the UI.

No gradio at import: the readers run, and are tested, without it.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..log import logger
from ..layers import check_spec
from ..params import PARAM_BY_NAME, AsagParams
from ..memory import MEMORY_BUDGET_MIB

SECTION = ("asag", "ASAG")

# Parameters whose default the Settings tab sets: parameter name -> option key. Adding a row here
# is all it takes to offer another one (label, range and hint follow from PARAMS).
DEFAULT_KEYS: dict[str, str] = {
    "scale": "asag_default_scale",
    "layers": "asag_default_layers",
}


@dataclass(frozen=True)
class HostOption:
    """One option of the host side: a checkbox (bool default) or a slider (int default)."""

    name: str  # the HostOptions field it sets
    key: str
    label: str
    info: str
    default: bool | int
    minimum: int | None = None
    maximum: int | None = None
    step: int | None = None

    def read(self, opts):
        raw = getattr(opts, self.key, None)  # None also where the options are not registered (yet)
        if raw is None:
            return self.default
        if isinstance(self.default, bool):
            if isinstance(raw, bool):
                return raw
        elif isinstance(raw, (int, float)) and not isinstance(raw, bool) and float(raw).is_integer() \
                and self.minimum <= raw <= self.maximum:
            return int(raw)
        allowed = "true or false" if isinstance(self.default, bool) else f"a whole number from {self.minimum} to {self.maximum}"
        logger.warning("Settings > ASAG > %s: got %r, expected %s; using %r instead", self.label, raw, allowed, self.default)
        return self.default


HOST_OPTIONS: tuple[HostOption, ...] = (
    HostOption("reuse", "asag_reuse_blocks", "Reuse the main pass in the extra pass",
               "the extra pass takes the blocks before the first perturbed layer from the main pass instead of "
               "computing them again: the same image, a cheaper step. Costs a copy of those blocks' outputs per image "
               "from the main to the extra pass (SD1.5 512x512 13-25 MiB, SDXL 1024x1024 49-66 MiB in float16); "
               "turn off on a GPU that short of memory, or to compare", True),
    HostOption("attention_budget_mib", "asag_attention_budget_mib", "Memory budget of the Sinkhorn attention (MiB)",
               "the most memory one perturbed attention call may hold besides its output (every temporary "
               "counted); beyond it the plan is computed in streamed tiles, a little slower; lower it on a small GPU", MEMORY_BUDGET_MIB, minimum=16, maximum=8192, step=16),
    HostOption("diagnostics", "asag_diagnostics", "Log ASAG diagnostics to the console",
               "per generation: the guidance's size, the adversarial plans' row entropy and column-marginal error, "
               "NaN count, the extra pass's measured share of the step and how much of it the main pass spared "
               "(synchronises the GPU, so slightly slower)", False),
)
HOST_OPTION_BY_NAME = {option.name: option for option in HOST_OPTIONS}
DIAGNOSTICS_KEY = HOST_OPTION_BY_NAME["diagnostics"].key


@dataclass(frozen=True)
class HostOptions:
    """The host-side options of one generation (``host_options(shared.opts)``)."""

    reuse: bool = True
    attention_budget_mib: int = MEMORY_BUDGET_MIB
    diagnostics: bool = False

    @property
    def attention_budget_bytes(self) -> int:
        return self.attention_budget_mib * 2**20


def option_infos(shared, gr) -> dict:
    """Option key -> ``shared.OptionInfo`` for every ASAG setting, in display order."""
    from .ui import control_for  # gradio-side mapping; imported here so this module needs no gradio

    infos = {}
    for name, key in DEFAULT_KEYS.items():
        spec = PARAM_BY_NAME[name]
        make, args = control_for(spec, gr)  # args only what a Settings refresh may send back (see control_for)
        info = shared.OptionInfo(spec.default, f"Default {spec.label}", make, args, section=SECTION)
        infos[key] = _annotate(info, spec.help)
    for option in HOST_OPTIONS:
        if isinstance(option.default, bool):
            component, args = gr.Checkbox, {}
        else:
            component, args = gr.Slider, {"minimum": option.minimum, "maximum": option.maximum, "step": option.step}
        info = shared.OptionInfo(option.default, option.label, component, args, section=SECTION)
        infos[option.key] = _annotate(info, option.info, reload_ui=False)
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
                check_spec(value)  # the spelling: the loaded model's own blocks are checked at generation time
        except ValueError as err:
            logger.warning("Settings > ASAG > %s: %s; using %r instead", f"Default {spec.label}", err, spec.default)
            continue
        values[name] = value
    return AsagParams(**values)


def host_options(opts) -> HostOptions:
    """The host-side options, each from Settings where set and valid."""
    return HostOptions(**{option.name: option.read(opts) for option in HOST_OPTIONS})
