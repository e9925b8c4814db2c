"""The parameter table and its readers/writers: positional args, named fields, infotext."""
import dataclasses

import pytest

from asag.params import ENABLED_MARKER_KEY, PARAMS, AsagParams


def test_table_and_dataclass_are_one_source():
    assert [f.name for f in dataclasses.fields(AsagParams)] == [s.name for s in PARAMS]
    assert AsagParams().to_args() == [s.default for s in PARAMS]
    keys = [s.infotext_key for s in PARAMS if s.infotext_key]
    assert len(set(keys)) == len(keys) and all(k.startswith("ASAG ") for k in keys)
    assert ENABLED_MARKER_KEY in keys


def test_infotext_keys_survive_the_webui_parser_rules():
    # Keys: word characters, spaces, '-' and '/' only (infotext_utils.re_param_code).
    import re
    for spec in PARAMS:
        if spec.infotext_key:
            assert re.fullmatch(r"\w[\w \-/]*", spec.infotext_key), spec.infotext_key


def test_positional_and_named_forms_agree():
    positional = AsagParams.from_args([True, 2.5, 4, 1.0, "d1.0,m0"])
    named = AsagParams.from_args([{"enabled": True, "scale": 2.5, "iterations": 4, "layers": "d1.0,m0"}])
    assert positional == named
    assert named.start == 0.0 and named.schedule == "constant"  # missing fields take defaults
    # The API copies args by position over the UI defaults: the dict lands in slot 0, defaults follow.
    api_filled = [{"enabled": True, "scale": 2.5, "iterations": 4, "layers": "d1.0,m0"}] + AsagParams().to_args()[1:]
    assert AsagParams.from_args(api_filled) == named


def test_values_from_text_are_converted():
    params = AsagParams.from_args(["true", "2", "3", "-0.5"])
    assert params.enabled is True and params.scale == 2.0 and params.iterations == 3 and params.strength == -0.5
    assert isinstance(params.iterations, int)


@pytest.mark.parametrize("args,field,allowed", [
    ([{"scale": "abc"}], "scale", "from 0 to 20"),
    ([True, 25.0], "scale", "from 0 to 20"),
    ([True, float("nan")], "scale", "from 0 to 20"),
    ([True, 1.0, 2.5], "iterations", "whole number from 0 to 50"),
    ([True, 1.0, True], "iterations", "whole number"),
    ([{"schedule": "exponential"}], "schedule", "'constant', 'linear', 'cosine'"),
    ([{"enabled": "yes"}], "enabled", "true or false"),
    ([{"layers": 3}], "layers", "text"),
    ([{"layers": "   "}], "layers", "empty"),
    ([{"start": 0.9, "end": 0.1}], "start", "must not be after"),
])
def test_bad_values_name_the_field_and_the_allowed_values(args, field, allowed):
    with pytest.raises(ValueError) as err:
        AsagParams.from_args(args)
    assert f"'{field}'" in str(err.value) and allowed in str(err.value)


def test_bad_payload_shapes_are_explained():
    with pytest.raises(ValueError, match="unknown field.*'sacle'.*known fields: enabled, scale"):
        AsagParams.from_args([{"sacle": 2}])
    with pytest.raises(ValueError, match=f"at most {len(PARAMS)}"):
        AsagParams.from_args([True] * (len(PARAMS) + 1))


def test_infotext_round_trip_writes_only_non_defaults():
    params = AsagParams(enabled=True, scale=2.25, layers="d1.0,m0", schedule="cosine", hires="override", hires_scale=1.0)
    written = params.to_infotext()
    assert written == {"ASAG scale": 2.25, "ASAG layers": "d1.0,m0", "ASAG schedule": "cosine", "ASAG hires": "override", "ASAG hires scale": 1.0}
    # The WebUI writes values with str() and JSON-quotes those containing ',' or ':'.
    as_text = {k: (f'"{v}"' if "," in str(v) else str(v)) for k, v in written.items()}
    assert AsagParams.from_infotext(as_text) == params
    assert AsagParams(enabled=True).to_infotext() == {"ASAG scale": 1.5}  # the marker, always
    assert AsagParams(enabled=False, scale=3).to_infotext() == {}
    assert AsagParams.from_infotext({"Steps": "20"}) == AsagParams(enabled=False)


def test_params_are_frozen_and_replaced_not_mutated():
    params = AsagParams(enabled=True)
    with pytest.raises(dataclasses.FrozenInstanceError):
        params.scale = 3.0
    changed = params.replace(scale=3.0)
    assert params.scale == 1.5 and changed.scale == 3.0
    with pytest.raises(ValueError, match="'scale'"):
        params.replace(scale=-1)


def test_hires_modes():
    base = AsagParams(enabled=True, scale=2.0, iterations=3, hires_scale=0.5, hires_iterations=1)
    assert base.for_hires_pass() == base and base.runs_first_pass()
    assert base.replace(hires="off").for_hires_pass() is None
    override = base.replace(hires="override").for_hires_pass()
    assert (override.scale, override.iterations) == (0.5, 1)
    assert not base.replace(hires="only").runs_first_pass() and base.replace(hires="only").for_hires_pass() is not None
