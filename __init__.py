"""ComfyUI's entry point: ComfyUI runs this file (``custom_nodes/<folder>/__init__.py``, loaded by
its full path, the folder not on ``sys.path``: hence relative imports only) and registers the node
it names. The WebUIs never import it (they load ``scripts/``); pytest does (``tests/`` is a package
inside this folder), where there is no ``comfy`` and this file defines nothing. Inside ComfyUI an
error in the node's modules is not caught here: ComfyUI reports it with its traceback."""
import importlib.util

if importlib.util.find_spec("comfy") is not None:
    from .asag.hosts.comfyui_node import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

    __all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
