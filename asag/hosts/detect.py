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


def _importable(name: str):
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


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


def adapter_for(host: str):
    """The adapter module for ``host``: it provides ``register_callbacks``, ``start_job``,
    ``before_sampling``, ``before_hr`` and ``end_job``."""
    if host in FORGE_FAMILY:
        return importlib.import_module(".forge", __package__)
    return importlib.import_module(".a1111", __package__)
