"""Which host is running, found by feature probes (never by version strings), in one place.

This is the only module that tries imports to tell the hosts apart (forge-and-controlnet.md A.1,
in the order pamparamm's ``pag_nodes.py`` uses); adapters import host modules by the name this
module has found.
"""
from __future__ import annotations

import importlib

A1111 = "a1111"
FORGE = "forge"  # backend/ sampling core: Forge since 2024-08-03, and reForge branch newmain_newforge
FORGE_LEGACY = "forge-legacy"  # ldm_patched + modules_forge: Forge up to 2024-08-02
REFORGE = "reforge"  # reForge main: ComfyUI-synced ldm_patched with calc_cond_batch
FORGE_FAMILY = (FORGE, FORGE_LEGACY, REFORGE)

# What the console and the diagnostics call each host. Haoming02's Forge lines name themselves in
# modules_forge/forge_version.py (``version = "neo"`` / ``"classic"``; lllyasviel's Forge keeps a
# version number there), which is a name, not a version: the behaviour still follows the probes.
BACKEND_NAMES = {A1111: "ldm", FORGE: "backend", FORGE_LEGACY: "ldm_patched", REFORGE: "ldm_patched, ComfyUI batching"}
HOST_NAMES = {A1111: "A1111", FORGE: "Forge", FORGE_LEGACY: "Forge", REFORGE: "reForge"}
FORGE_LINES = {"neo": "Forge Neo", "classic": "Forge Classic"}


def _importable(name: str):
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def importable(name: str) -> bool:
    """Whether the host has the module ``name`` (a feature probe for the adapters, here so that
    every probe of the host's modules stays in this module)."""
    return _importable(name) is not None


def detect_host() -> str:
    """``forge``, ``forge-legacy``, ``reforge`` or ``a1111``."""
    if _importable("modules_forge") is None:
        return A1111
    if _importable("backend.sampling.sampling_function") is not None:
        return FORGE
    samplers = _importable("ldm_patched.modules.samplers")
    if samplers is None:
        return A1111
    return REFORGE if hasattr(samplers, "calc_cond_batch") else FORGE_LEGACY


def host_name(host: str) -> str:
    """The host and its backend as the user knows them: "Forge Neo (backend)", "Forge Classic
    (ldm_patched)", "Forge (backend)", "reForge (ldm_patched, ComfyUI batching)", "A1111 (ldm)"."""
    name = HOST_NAMES[host]
    if host in FORGE_FAMILY:
        line = getattr(_importable("modules_forge.forge_version"), "version", None)
        name = FORGE_LINES.get(line, name)
    return f"{name} ({BACKEND_NAMES[host]})"


def adapter_for(host: str):
    """The adapter module for ``host``: it provides ``register_callbacks``, ``start_job``,
    ``before_sampling``, ``before_hr`` and ``end_job``."""
    if host in FORGE_FAMILY:
        return importlib.import_module(".forge", __package__)
    return importlib.import_module(".a1111", __package__)
