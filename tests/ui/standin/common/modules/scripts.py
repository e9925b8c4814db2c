"""Stand-in of the WebUI's ``modules/scripts.py`` (A1111 v1.10.1, commit 82a973c0; Forge Classic
5136ce20 and Neo 2.26 the same here), as far as the extension reads it outside a generation: the
list of loaded scripts that ``asag.hosts.xyz.add_axes`` searches for the X/Y/Z plot, one
``ScriptClassData`` per script class, filled as ``load_scripts`` fills it (the module loaded by
path, ``modules/script_loading.py`` ``load_module``: its name is the file's name)."""
import importlib.util
import os
from collections import namedtuple

AlwaysVisible = object()

scripts_data = []

ScriptClassData = namedtuple("ScriptClassData", ["script_class", "path", "basedir", "module"])


def load_module(path):
    module_spec = importlib.util.spec_from_file_location(os.path.basename(path), path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module
