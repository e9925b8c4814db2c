"""Run by the WebUI as ``python install.py`` at every start and after an install from URL.

ASAG needs nothing the WebUI does not already have (torch), so this only checks and installs
nothing: no pip, no network, and torch is looked up without being imported, so it takes a few
milliseconds. It stays quiet when all is well; the WebUI prints what it writes.
"""
import importlib.util
import logging
import sys


def main() -> int:
    # asag.log is not imported: the asag package imports torch, which this must not.
    logger = logging.getLogger("asag.install")
    logging.basicConfig(format="[ASAG] %(levelname)s: %(message)s")
    if importlib.util.find_spec("torch") is None:
        logger.error("torch is not importable by %s; ASAG uses the WebUI's own torch and installs nothing itself.", sys.executable)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
