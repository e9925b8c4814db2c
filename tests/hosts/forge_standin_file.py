"""One file of tests/hosts/forge_standin, loaded by path under another module name: the stand-ins
of the other Forge lines (Neo, the ldm_patched backend) reuse what their hosts share with
lllyasviel's Forge without putting a second copy in sys.path's way."""
import importlib.util
from pathlib import Path

FORGE_STANDIN = Path(__file__).resolve().parent / "forge_standin"


def load_forge_file(relative_path: str, module_name: str):
    spec = importlib.util.spec_from_file_location(module_name, FORGE_STANDIN / relative_path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
