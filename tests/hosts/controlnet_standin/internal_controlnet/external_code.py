"""Stands for sd-webui-controlnet's internal_controlnet/external_code.py at 56cec5b2 (2024-07-25): the
public API other extensions use to list the units of a generation."""
from dataclasses import dataclass
from enum import Enum


class InputMode(Enum):  # scripts/enums.py
    SIMPLE = "simple"
    BATCH = "batch"
    MERGE = "merge"


@dataclass
class ControlNetUnit:  # internal_controlnet/args.py, the fields ASAG reads
    enabled: bool = False
    module: str = "none"
    model: str = "None"
    weight: float = 1.0
    input_mode: InputMode = InputMode.SIMPLE
    animatediff_batch: bool = False


def find_cn_script(script_runner):
    for script in script_runner.alwayson_scripts:
        if script.title().lower() == "controlnet":
            return script
    return None


def get_all_units(script_runner, script_args):
    cn_script = find_cn_script(script_runner)
    if cn_script:
        return [unit for unit in script_args[cn_script.args_from:cn_script.args_to] if isinstance(unit, ControlNetUnit)]
    return []


def get_all_units_in_processing(p):
    return get_all_units(p.scripts, p.script_args)
