"""The host's page update paths that the extension's options, controls and axes take part in, run
through each host's own gradio (tests/ui/harness.py ``run_events``: ``Blocks.process_api``, what a
browser's request reaches; the host's functions from the stand-ins in tests/ui/standin/): the
Settings refresh on page load, a quicksetting and "Apply settings", the paste of an infotext and
"Send to img2img", and the X/Y/Z plot's axis choices. Any exception fails, whatever it hits:
gradio 3's ``Component.update`` rejects a keyword its constructor takes (``allow_custom_value``),
and then the whole refresh fails, every Settings control with it."""
import pytest

from asag.hosts import settings
from asag.hosts.xyz import AXIS_PREFIX
from asag.params import PARAMS, AsagParams

from .cases import APPLIED_VALUES, HOST_SETTING, PASTED_FIELDS, QUICKSETTING_VALUE, QUICKSETTINGS, REFRESHED_VALUES

EVENTS = ["settings refresh on page load", "quicksetting change", "apply settings", "paste", "send to img2img"]


def _events(out):
    return {event["event"]: event for event in out["events"]}


def _choices(update):
    # gradio 4 sends (display, value) pairs
    return [c[1] if isinstance(c, list) else c for c in update["choices"]]


def _value(data):
    return data["value"] if isinstance(data, dict) else data


def test_no_event_raises(described):
    _, out = described
    events = _events(out)
    assert set(EVENTS) <= set(events)
    failed = {name: event["error"] for name, event in events.items() if event["error"]}
    assert failed == {}, "\n\n".join(f"{name}:\n{error}" for name, error in failed.items())


def test_the_refresh_on_page_load_shows_every_settings_value(described):
    _, out = described
    refresh = _events(out)["settings refresh on page load"]
    assert refresh["error"] is None
    updates = dict(zip(refresh["outputs"], refresh["data"]))
    # the host's own option as well: the refresh is one event for every Settings control
    assert f"setting_{HOST_SETTING[0]}" in updates
    asag_keys = [*settings.DEFAULT_KEYS.values(), *(option.key for option in settings.HOST_OPTIONS)]
    assert {f"setting_{key}" for key in asag_keys} <= set(updates)
    for key, value in REFRESHED_VALUES.items():
        assert updates[f"setting_{key}"]["value"] == value, key
    for name, key in settings.DEFAULT_KEYS.items():
        spec = next(s for s in PARAMS if s.name == name)
        if spec.suggestions:  # the list stays offered after the refresh
            assert _choices(updates[f"setting_{key}"]) == list(spec.suggestions)


def test_a_typed_quicksetting_and_apply_settings_are_stored(described):
    _, out = described
    events = _events(out)
    quick = events["quicksetting change"]
    assert quick["error"] is None and _value(quick["data"][0]) == QUICKSETTING_VALUE
    applied = events["apply settings"]
    assert applied["error"] is None
    assert applied["stored"] == {**REFRESHED_VALUES, QUICKSETTINGS[0]: QUICKSETTING_VALUE, **APPLIED_VALUES,
                                 **{k: applied["stored"][k] for k in applied["stored"] if k not in
                                    {*REFRESHED_VALUES, *QUICKSETTINGS, *APPLIED_VALUES}}}
    # what the ASAG controls and the API take as defaults from now on
    assert applied["defaults_now"] == AsagParams(scale=APPLIED_VALUES["asag_default_scale"], layers=QUICKSETTING_VALUE).to_args()


def test_paste_and_send_to_img2img_fill_every_control(described):
    _, out = described
    events = _events(out)
    expected = AsagParams(**PASTED_FIELDS).to_args()
    assert [_value(d) for d in events["paste"]["data"]] == expected
    assert [_value(d) for d in events["send to img2img"]["data"]] == expected


@pytest.mark.parametrize("spec", [s for s in PARAMS if s.xyz], ids=lambda s: s.name)
def test_each_xyz_axis_offers_its_choices(described, spec):
    _, out = described
    events = _events(out)
    label = AXIS_PREFIX + spec.label
    select = events[f"xyz select {label}"]
    assert select["error"] is None
    fill_button, values_text, values_dropdown = select["data"]
    if spec.choices:
        assert (fill_button["visible"], values_text["visible"], values_dropdown["visible"]) == (True, False, True)
        assert _choices(values_dropdown) == list(spec.choices)
        fill = events[f"xyz fill {label}"]
        assert fill["error"] is None and fill["data"][1] == list(spec.choices)
    else:
        assert (fill_button["visible"], values_text["visible"], values_dropdown["visible"]) == (False, True, False)
        assert f"xyz fill {label}" not in events
