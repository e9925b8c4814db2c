"""The repository as a ComfyUI custom node: ComfyUI's loader finds the node in the root
__init__.py (under a folder name that is no Python name, the folder not on sys.path), the root
__init__.py does nothing where there is no ComfyUI, the registry's pyproject.toml, one version,
and the example workflow checked as ComfyUI checks a prompt."""
import ast
import configparser
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import tomllib

import asag
from tests.conftest import ROOT
from tests.hosts.comfy_env import STANDIN, comfy_host, node_inputs  # noqa: F401

WORKFLOW = os.path.join(ROOT, "docs", "comfyui-workflow-api.json")


def run_python(script: str, *args: str) -> subprocess.CompletedProcess:
    """``script`` in a fresh interpreter outside the repository, whose folder is not on sys.path."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script), *args], cwd=tempfile.gettempdir(), capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONPATH": ""})


def test_one_version_in_pyproject_metadata_ini_and_the_package():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)["project"]
    ini = configparser.ConfigParser()
    ini.read(os.path.join(ROOT, "metadata.ini"), encoding="utf-8")
    assert project["version"] == ini["Extension"]["Version"] == asag.__version__


def test_pyproject_has_what_comfyuis_registry_reads():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        config = tomllib.load(f)
    project, comfy = config["project"], config["tool"]["comfy"]
    assert project["name"] == "sd-webui-asag" and project["description"] and project["license"]
    assert project["urls"]["Repository"].startswith("https://github.com/")
    assert project["dependencies"] == []  # nothing beyond what ComfyUI installs
    assert comfy["PublisherId"] and comfy["DisplayName"] == "Adversarial Sinkhorn Attention Guidance (ASAG)"


def _absolute_asag_imports(path):
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    for node in ast.walk(tree):
        names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else \
            [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
        yield from (f"{os.path.relpath(path, ROOT)}:{node.lineno} imports {name}" for name in names if name.split(".")[0] == "asag")


def test_what_comfyui_loads_imports_only_relatively():
    paths = [os.path.join(ROOT, "__init__.py")]
    for base, _, files in os.walk(os.path.join(ROOT, "asag")):
        paths += [os.path.join(base, name) for name in files if name.endswith(".py")]
    assert [found for path in paths for found in _absolute_asag_imports(path)] == []


INERT = """
    import importlib.util, sys
    # as pytest runs it when the folder's name is no Python name (a module named __init__), and as
    # ComfyUI would under its full path, each without a comfy package
    for name in ("__init__", sys.argv[1]):
        spec = importlib.util.spec_from_file_location(name, sys.argv[1] + "/__init__.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        assert not hasattr(module, "NODE_CLASS_MAPPINGS"), name
    loaded = [m for m in sys.modules if m.split(".")[0] == "asag" or ".asag" in m]  # the package, by any name
    assert not loaded, loaded
    print("inert")
"""


def test_the_root_init_does_nothing_without_comfyui():
    done = run_python(INERT, ROOT)
    assert done.returncode == 0 and done.stdout.strip() == "inert", done.stderr


LOAD = """
    import asyncio, os, sys, tempfile
    standin, root = sys.argv[1], sys.argv[2]
    sys.path.insert(0, standin)  # ComfyUI's own modules; the node's folder is not on sys.path
    import nodes

    custom_nodes = tempfile.mkdtemp()
    folder = os.path.join(custom_nodes, "sd-webui-asag.main")  # a hyphen, a dot: no Python name
    os.symlink(root, folder)
    assert asyncio.run(nodes.load_custom_node(folder)) is True
    node = nodes.NODE_CLASS_MAPPINGS["ASAG"]
    assert nodes.NODE_DISPLAY_NAME_MAPPINGS["ASAG"] == "Adversarial Sinkhorn Attention Guidance (ASAG)"
    assert node.__module__ == folder.replace(".", "_x_") + ".asag.hosts.comfyui_node", node.__module__
    assert node.RELATIVE_PYTHON_MODULE == "custom_nodes.sd-webui-asag.main"
    assert "asag" not in sys.modules  # relative imports only

    # the node runs from there: the mechanism is imported on first use, relatively too
    import torch
    import comfy.model_base, comfy.model_patcher
    from comfy.ldm.modules.diffusionmodules.openaimodel import from_ldm
    sys.path.append(root)
    from tests.models import tiny_unet
    model = comfy.model_patcher.ModelPatcher(comfy.model_base.BaseModel(from_ldm(tiny_unet("sd1"))), "cpu", "cpu")
    inputs = {name: options["default"] for name, (kind, options) in node.INPUT_TYPES()["required"].items() if "default" in options}
    (guided,) = getattr(node(), node.FUNCTION)(model=model, **inputs)
    assert guided is not model and len(guided.model_options["sampler_post_cfg_function"]) == 1
    assert "asag" not in sys.modules and "asag.hosts.comfyui" not in sys.modules
    print("loaded")
"""


def test_comfyui_loads_the_node_from_a_folder_whose_name_is_no_python_name():
    done = run_python(LOAD, STANDIN, ROOT)
    assert done.returncode == 0 and done.stdout.strip().endswith("loaded"), done.stdout + done.stderr


BROKEN = """
    import asyncio, importlib.abc, logging, sys
    standin, root = sys.argv[1], sys.argv[2]
    sys.path.insert(0, standin)
    import nodes

    class Broken(importlib.abc.MetaPathFinder):  # a fault inside the node's own modules
        def find_spec(self, name, path=None, target=None):
            if name.endswith(".asag.params"):
                raise ImportError("params.py is broken")

    sys.meta_path.insert(0, Broken())
    logging.basicConfig(level=logging.WARNING, stream=sys.stdout)
    assert asyncio.run(nodes.load_custom_node(root)) is False
    assert "ASAG" not in nodes.NODE_CLASS_MAPPINGS
"""


def test_an_error_inside_the_node_reaches_comfyuis_log():
    done = run_python(BROKEN, STANDIN, ROOT)
    assert done.returncode == 0, done.stderr
    assert "Traceback" in done.stdout and "ImportError: params.py is broken" in done.stdout, done.stdout


def test_the_example_workflow_is_a_valid_prompt_with_the_nodes_inputs(comfy_host):
    with open(WORKFLOW, encoding="utf-8") as f:
        prompt = json.load(f)
    nodes = comfy_host.nodes
    nodes.NODE_CLASS_MAPPINGS["ASAG"] = comfy_host.node.AsagNode
    (asag_id,) = [node_id for node_id, node in prompt.items() if node["class_type"] == "ASAG"]
    (checkpoint,) = [node["inputs"]["ckpt_name"] for node in prompt.values() if node["class_type"] == "CheckpointLoaderSimple"]
    nodes.CHECKPOINT_FILES[:] = [checkpoint]  # the file the user has in models/checkpoints

    assert {node["class_type"] for node in prompt.values()} == {"CheckpointLoaderSimple", "CLIPTextEncode", "EmptyLatentImage", "KSampler",
                                                                  "VAEDecode", "SaveImage", "ASAG"}
    assert set(prompt[asag_id]["inputs"]) == set(comfy_host.node.AsagNode.INPUT_TYPES()["required"])
    assert set(node_inputs(comfy_host)) | {"model"} == set(prompt[asag_id]["inputs"])
    ok, errors = comfy_host.execution.validate_prompt(json.loads(json.dumps(prompt)))
    assert ok, errors
    # ASAG sits between the checkpoint's MODEL and the sampler
    sampler = next(node for node in prompt.values() if node["class_type"] == "KSampler")
    assert sampler["inputs"]["model"] == [asag_id, 0]
    assert prompt[prompt[asag_id]["inputs"]["model"][0]]["class_type"] == "CheckpointLoaderSimple"
    # and the check is real: a wrong link or value is caught
    broken = json.loads(json.dumps(prompt))
    broken[asag_id]["inputs"]["model"] = [sampler["inputs"]["positive"][0], 0]
    assert not comfy_host.execution.validate_prompt(broken)[0]
