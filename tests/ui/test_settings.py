"""Settings > ASAG readers (no gradio needed). The options' components are built under both gradio
versions in test_ui_blocks.py."""
import logging
from types import SimpleNamespace

import pytest

from asag.hosts import settings
from asag.params import PARAM_BY_NAME, AsagParams


class Opts(SimpleNamespace):
    """Like the WebUI's shared.opts: attribute access, AttributeError for an unknown key."""


def test_without_options_the_built_in_defaults_hold():
    assert settings.current_defaults(Opts()) == AsagParams()
    assert settings.host_options(Opts()) == settings.HostOptions(reuse=True, attention_budget_mib=256, diagnostics=False)


def test_settings_values_become_the_defaults():
    opts = Opts(asag_default_scale=3.25, asag_default_layers="u0-2, m0", asag_diagnostics=True)
    defaults = settings.current_defaults(opts)
    assert (defaults.scale, defaults.layers) == (3.25, "u0-2, m0")
    assert defaults.replace(scale=AsagParams().scale, layers=AsagParams().layers) == AsagParams()
    assert settings.host_options(opts).diagnostics is True


def test_settings_file_values_are_coerced_like_any_input():
    # config.json may hold an int for a slider
    assert settings.current_defaults(Opts(asag_default_scale=2)).scale == 2.0


@pytest.mark.parametrize("key, bad", [
    ("asag_default_scale", 99.0),        # out of PARAMS' range
    ("asag_default_scale", "strong"),
    ("asag_default_layers", "middel"),   # not a layer list
    ("asag_default_layers", "m0-"),
    ("asag_default_layers", "u3-1"),     # backwards range
    ("asag_default_layers", ""),
])
def test_a_bad_value_is_reported_and_replaced(key, bad, caplog):
    logger = logging.getLogger("asag")
    logger.addHandler(caplog.handler)
    try:
        defaults = settings.current_defaults(Opts(**{key: bad}))
    finally:
        logger.removeHandler(caplog.handler)
    assert defaults == AsagParams()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "Settings > ASAG" in warnings[0].getMessage() and repr(bad) in warnings[0].getMessage()


def test_one_bad_value_does_not_cost_the_good_one():
    defaults = settings.current_defaults(Opts(asag_default_scale=4.0, asag_default_layers="nonsense"))
    assert (defaults.scale, defaults.layers) == (4.0, AsagParams().layers)


@pytest.mark.parametrize("layers", ["all", "middle", "input, output", "d1", "d1.0", "u0-2", "u0-2.1-3", "M0, U1"])
def test_every_documented_layer_form_is_accepted(layers):
    assert settings.current_defaults(Opts(asag_default_layers=layers)).layers == layers


def test_offered_defaults_are_parameters():
    assert set(settings.DEFAULT_KEYS) <= set(PARAM_BY_NAME)
    assert settings.DEFAULT_KEYS == {"scale": "asag_default_scale", "layers": "asag_default_layers"}


def test_host_options_are_read_and_checked(caplog):
    opts = Opts(asag_reuse_blocks=False, asag_attention_budget_mib=64.0, asag_diagnostics=True)
    options = settings.host_options(opts)
    assert options == settings.HostOptions(reuse=False, attention_budget_mib=64, diagnostics=True)
    assert options.attention_budget_bytes == 64 * 2**20
    logger = logging.getLogger("asag")
    logger.addHandler(caplog.handler)
    try:
        bad = settings.host_options(Opts(asag_reuse_blocks="yes", asag_attention_budget_mib=4))
    finally:
        logger.removeHandler(caplog.handler)
    assert bad == settings.HostOptions()
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("Reuse the main pass" in m and "'yes'" in m and "true or false" in m for m in messages)
    assert any("Memory budget" in m and "from 16 to 8192" in m for m in messages)
