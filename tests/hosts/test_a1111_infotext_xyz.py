"""Infotext pasting and X/Y/Z axes, as the WebUI drives them (v1.10.1 infotext_utils / xyz_grid)."""
import copy
import json
import re
from types import SimpleNamespace

import pytest

from asag.hosts import infotext, job, xyz
from asag.params import PARAMS, AsagParams


def webui_infotext_line(extra: dict) -> str:
    """processing.create_infotext's rendering: ``k: v`` joined by ', ', values with ',' ':' or newline JSON-quoted."""
    def quote(v):
        text = str(v)
        return json.dumps(text, ensure_ascii=False) if any(c in text for c in ",:\n") else text
    return ", ".join(f"{k}: {quote(v)}" for k, v in {"Steps": 20, "Sampler": "Euler", **extra}.items() if v is not None)


RE_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')  # infotext_utils.re_param_code


def parse_like_the_webui(line: str) -> dict:
    params = {}
    for key, value in RE_PARAM.findall(line):
        value = value.strip()
        if value[:1] == '"' and value[-1:] == '"':
            value = json.loads(value)
        params[key] = value
    return params


def paste(params: dict, current: dict) -> dict:
    """connect_paste's field resolution: None keeps the component's value, else cast to its type."""
    infotext.fill_pasted_params("", params)
    out = {}
    for spec in PARAMS:
        key = spec.infotext_key or infotext.PASTE_ENABLED_KEY
        value, old = params.get(key), current[spec.name]
        if value is None:
            out[spec.name] = old
        elif isinstance(old, bool):
            out[spec.name] = value if isinstance(value, bool) else value != "False"
        elif isinstance(old, int):
            out[spec.name] = int(float(value))
        else:
            out[spec.name] = type(old)(value)
    return out


def test_pasting_restores_every_control_including_defaults():
    written = AsagParams(enabled=True, scale=2.5, layers="d1.0,m0", schedule="cosine", rescale=0.3)
    line = webui_infotext_line(written.to_infotext())
    # The UI currently holds other values everywhere: a paste must set every control.
    current = AsagParams(enabled=False, scale=7.0, iterations=9, strength=-1.0, layers="all", start=0.4, end=0.9,
                         progress_by="sigma", schedule="linear", rescale=0.9, hires="off", hires_scale=3.0,
                         hires_iterations=7, full_batch=True)
    restored = paste(parse_like_the_webui(line), {s.name: getattr(current, s.name) for s in PARAMS})
    assert AsagParams(**restored) == written


def test_pasting_infotext_without_asag_turns_it_off_and_keeps_the_rest():
    current = {s.name: getattr(AsagParams(enabled=True, scale=4.0), s.name) for s in PARAMS}
    restored = paste(parse_like_the_webui(webui_infotext_line({})), current)
    assert restored["enabled"] is False and restored["scale"] == 4.0


def test_disabled_generation_removes_stale_keys_from_the_shared_dict():
    # X/Y/Z cells share p.extra_generation_params: a cell with ASAG off must not inherit keys.
    shared_dict = {"Steps": 20}
    job.start(SimpleNamespace(extra_generation_params=shared_dict), [True, 2.0, 3])
    assert shared_dict["ASAG scale"] == 2.0 and shared_dict["ASAG iterations"] == 3
    job.start(SimpleNamespace(extra_generation_params=shared_dict), [False])
    assert shared_dict == {"Steps": 20}


class FakeXYZModule:
    """The names scripts/xyz_grid.py (v1.10.1) exposes and that ASAG uses."""

    class AxisOption:
        def __init__(self, label, type, apply, format_value=None, confirm=None, cost=0.0, choices=None, prepare=None):
            self.label, self.type, self.apply, self.confirm, self.choices = label, type, apply, confirm, choices

    def __init__(self):
        self.axis_options = [self.AxisOption("Seed", int, None)]


class FakeClassicXYZModule:
    """Forge Classic's X/Y/Z (Haoming02 5136ce20): the script moved to
    extensions-builtin/xyz/scripts/xyz_grid.py (loaded under the same module name), its AxisOption
    and the tab-specific subclasses to lib_xyz/classes.py:7-37, and ``axis_options`` is the very list
    ``lib_xyz.builtins.builtin_options`` (xyz_grid.py:36). Each tab lists the options whose type is
    exactly AxisOption, or whose ``is_img2img`` matches the tab (xyz_grid.py:42)."""

    AxisOption = FakeXYZModule.AxisOption

    class AxisOptionImg2Img(FakeXYZModule.AxisOption):
        is_img2img = True

    class AxisOptionTxt2Img(FakeXYZModule.AxisOption):
        is_img2img = False

    def __init__(self):
        self.builtin_options = [self.AxisOption("Seed", int, None), self.AxisOptionImg2Img("Denoising", float, None),
                                self.AxisOptionTxt2Img("Hires steps", int, None)]
        self.axis_options = self.builtin_options

    def tab_options(self, is_img2img):
        return [x for x in self.axis_options if type(x) is self.AxisOption or x.is_img2img == is_img2img]


def _install_xyz(monkeypatch, module):
    fake_scripts = SimpleNamespace(scripts_data=[SimpleNamespace(script_class=type("Script", (), {"__module__": "xyz_grid.py"}), module=module)])
    import sys
    monkeypatch.setitem(sys.modules, "modules", SimpleNamespace(scripts=fake_scripts))
    monkeypatch.setitem(sys.modules, "modules.scripts", fake_scripts)
    return module


@pytest.fixture
def xyz_module(monkeypatch):
    return _install_xyz(monkeypatch, FakeXYZModule())


def test_forge_classic_xyz_lists_the_axes_on_both_tabs(monkeypatch):
    module = _install_xyz(monkeypatch, FakeClassicXYZModule())
    xyz.add_axes()
    expected = [xyz.AXIS_PREFIX + s.label for s in PARAMS if s.xyz]
    for is_img2img in (False, True):
        assert [o.label for o in module.tab_options(is_img2img) if o.label.startswith("[ASAG]")] == expected
    assert module.builtin_options is module.axis_options  # extended in place, as the script reads it


def test_axes_cover_every_numeric_and_choice_parameter_once(xyz_module):
    xyz.add_axes()
    xyz.add_axes()  # Reload UI runs on_before_ui again
    labels = [o.label for o in xyz_module.axis_options if o.label.startswith("[ASAG]")]
    assert labels == [xyz.AXIS_PREFIX + s.label for s in PARAMS if s.xyz]
    schedule = next(o for o in xyz_module.axis_options if o.label == "[ASAG] Scale schedule")
    assert schedule.choices() == ["constant", "linear", "cosine"]


def test_axis_values_reach_the_cell_copy_only(xyz_module):
    xyz.add_axes()
    scale_axis = next(o for o in xyz_module.axis_options if o.label == "[ASAG] ASAG scale")
    p = SimpleNamespace(extra_generation_params={})
    cell = copy.copy(p)  # xyz_grid's shallow copy per cell
    scale_axis.apply(cell, "2.5", None)
    params = job.read_params(cell, [False, 1.5])
    assert params.enabled and params.scale == 2.5
    assert job.read_params(p, [False, 1.5]).enabled is False
    with pytest.raises(ValueError, match="'scale'.*from 0 to 20"):
        scale_axis.confirm(p, [1.0, 99.0])  # checked before the first image
