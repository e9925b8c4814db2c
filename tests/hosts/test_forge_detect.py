"""Host detection by feature (forge-and-controlnet.md A.1), and the adapter it picks."""
import re
import sys
import types
from pathlib import Path

from tests.hosts.a1111_harness import WebUI
from tests.hosts.forge_env import forge_host, forge_legacy_host  # noqa: F401  (fixtures)

ASAG = Path(__file__).resolve().parents[2] / "asag"


def _fake_ldm_patched(monkeypatch, with_calc_cond_batch):
    samplers = types.ModuleType("ldm_patched.modules.samplers")
    samplers.calc_cond_uncond_batch = lambda *a: None
    if with_calc_cond_batch:
        samplers.calc_cond_batch = lambda *a: None
    monkeypatch.setitem(sys.modules, "ldm_patched", types.ModuleType("ldm_patched"))
    monkeypatch.setitem(sys.modules, "ldm_patched.modules", types.ModuleType("ldm_patched.modules"))
    monkeypatch.setitem(sys.modules, "ldm_patched.modules.samplers", samplers)
    # new Forge's backend made unimportable: None in sys.modules makes import raise ImportError
    monkeypatch.setitem(sys.modules, "backend.sampling.sampling_function", None)


def test_new_forge_is_detected_by_its_backend(forge_host):
    assert forge_host.detect.detect_host() == "forge"


def test_old_forge_and_reforge_are_told_apart_by_calc_cond_batch(forge_host, monkeypatch):
    _fake_ldm_patched(monkeypatch, with_calc_cond_batch=False)
    assert forge_host.detect.detect_host() == "forge-legacy"
    _fake_ldm_patched(monkeypatch, with_calc_cond_batch=True)
    assert forge_host.detect.detect_host() == "reforge"


def test_without_modules_forge_the_host_is_a1111(forge_host, monkeypatch):
    monkeypatch.setitem(sys.modules, "modules_forge", None)
    assert forge_host.detect.detect_host() == "a1111"


def test_a1111_when_no_forge_module_is_importable():
    from asag.hosts import detect

    assert "backend" not in sys.modules and "modules_forge" not in sys.modules
    assert detect.detect_host() == "a1111"


def test_each_forge_line_is_named_with_its_backend(forge_host):
    """Forge Neo by its own line name, lllyasviel's Forge by its backend (its forge_version is a number)."""
    assert forge_host.detect.host_name(forge_host.detect.detect_host()) == forge_host.name


def test_each_ldm_patched_line_is_named_with_its_backend(forge_legacy_host):
    detect = forge_legacy_host.detect
    assert detect.detect_host() == "forge-legacy"  # Classic runs old Forge's backend: the same code paths
    assert detect.host_name(detect.detect_host()) == forge_legacy_host.name


def test_reforge_and_a1111_names(forge_host, monkeypatch):
    _fake_ldm_patched(monkeypatch, with_calc_cond_batch=True)
    monkeypatch.setitem(sys.modules, "modules_forge.forge_version", types.SimpleNamespace(version="1.0"))
    assert forge_host.detect.host_name(forge_host.detect.detect_host()) == "reForge (ldm_patched, ComfyUI batching)"
    assert forge_host.detect.host_name("a1111") == "A1111 (ldm)"


def test_the_console_names_the_host_when_the_extension_loads(caplog):
    caplog.set_level("INFO", logger="asag")
    webui = WebUI()
    try:
        webui.load_extension()
    finally:
        webui.close()
    assert "running on A1111 (ldm)" in caplog.text


def test_every_forge_family_host_gets_the_forge_adapter(forge_host):
    detect = forge_host.detect
    assert set(detect.FORGE_FAMILY) == {"forge", "forge-legacy", "reforge"}
    for host in detect.FORGE_FAMILY:
        assert detect.adapter_for(host) is forge_host.forge
    for hook in ("register_callbacks", "start_job", "before_sampling", "before_hr", "end_job"):
        assert callable(getattr(forge_host.forge, hook)), hook


def test_detect_is_the_only_module_that_probes_imports():
    probing = sorted(
        str(path.relative_to(ASAG)) for path in ASAG.rglob("*.py")
        if re.search(r"except\s+\(?\s*(ImportError|ModuleNotFoundError)", path.read_text())
    )
    assert probing == ["hosts/detect.py"]
