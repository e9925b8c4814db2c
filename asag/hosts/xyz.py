"""X/Y/Z plot axes for every numeric and choice parameter, derived from the parameter table.

Registered from ``on_before_ui``: the X/Y/Z script reads its axis list while its own UI is built.
An axis value sets ``p.asag_<name>`` on the cell's copy of ``p`` (see ``job.read_params``) and
turns ASAG on for that cell: plotting ASAG values with ASAG off would draw identical images.
"""
from __future__ import annotations

from ..log import logger
from ..params import PARAMS, ParamSpec
from .job import XYZ_ATTR_PREFIX

AXIS_PREFIX = "[ASAG] "


def _xyz_module(scripts_data):
    for entry in scripts_data:
        if entry.script_class.__module__ in ("xyz_grid.py", "xy_grid.py", "scripts.xyz_grid"):
            return entry.module
    return None


def _apply(spec: ParamSpec):
    def apply(p, value, _values):
        setattr(p, XYZ_ATTR_PREFIX + spec.name, spec.coerce(value))
        setattr(p, XYZ_ATTR_PREFIX + "enabled", True)
    return apply


def _confirm(spec: ParamSpec):
    def confirm(_p, values):
        for value in values:
            spec.coerce(value)  # raises with the field name and the allowed values, before any image
    return confirm


def axis_options(xyz) -> list:
    options = []
    for spec in PARAMS:
        if not spec.xyz:
            continue
        choices = (lambda spec=spec: list(spec.choices)) if spec.choices else None
        options.append(xyz.AxisOption(AXIS_PREFIX + spec.label, spec.kind, _apply(spec),
                                      confirm=_confirm(spec), choices=choices))
    return options


def add_axes() -> None:
    """``on_before_ui`` callback: add the ASAG axes once to the X/Y/Z script's list."""
    from modules import scripts

    xyz = _xyz_module(scripts.scripts_data)
    if xyz is None:
        logger.info("X/Y/Z plot script not found: no ASAG axes added")
        return
    present = {option.label for option in xyz.axis_options}
    xyz.axis_options.extend(o for o in axis_options(xyz) if o.label not in present)
