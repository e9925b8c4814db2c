# Stand-in for Comfy-Org/ComfyUI nodes.py at a125cd84b054a57729b5eecab930ca9408719832.
# Kept faithful: load_custom_node (nodes.py:2111-2167): a custom node folder's __init__.py is
# executed from spec_from_file_location under its full path as the module name ("." made "_x_"),
# the folder not on sys.path; V1 mappings (NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS) are
# checked first and registered, a name of a built-in node is ignored; an exception while loading
# is logged and the node is not loaded. The declarations (inputs, their types and options, output
# types) of the core nodes the example workflow uses.
# Simplified: the V3 entry point (comfy_entrypoint), web folders and pyproject parsing are left
# out; the core nodes have no function (the tests check workflows against their declarations).
import importlib.util
import logging
import os
import sys
import traceback

MAX_RESOLUTION = 16384
CHECKPOINT_FILES = []  # folder_paths.get_filename_list("checkpoints"): the user's files
SAMPLER_NAMES = ["euler", "euler_cfg_pp", "euler_ancestral", "euler_ancestral_cfg_pp", "heun", "heunpp2", "dpm_2", "dpm_2_ancestral",
                 "lms", "dpm_fast", "dpm_adaptive", "dpmpp_2s_ancestral", "dpmpp_2s_ancestral_cfg_pp", "dpmpp_sde", "dpmpp_sde_gpu",
                 "dpmpp_2m", "dpmpp_2m_cfg_pp", "dpmpp_2m_sde", "dpmpp_2m_sde_gpu", "dpmpp_2m_sde_heun", "dpmpp_2m_sde_heun_gpu",
                 "dpmpp_3m_sde", "dpmpp_3m_sde_gpu", "ddpm", "lcm", "ipndm", "ipndm_v", "deis", "res_multistep", "res_multistep_cfg_pp",
                 "res_multistep_ancestral", "res_multistep_ancestral_cfg_pp", "gradient_estimation", "gradient_estimation_cfg_pp",
                 "er_sde", "seeds_2", "seeds_3", "sa_solver", "sa_solver_pece", "ddim", "uni_pc", "uni_pc_bh2"]
SCHEDULER_NAMES = ["simple", "sgm_uniform", "karras", "exponential", "ddim_uniform", "beta", "normal", "linear_quadratic", "kl_optimal"]


class CheckpointLoaderSimple:
    @classmethod
    def INPUT_TYPES(s):
        return {"required": {"ckpt_name": (CHECKPOINT_FILES, {})}}
    RETURN_TYPES = ("MODEL", "CLIP", "VAE")


class CLIPTextEncode:
    @classmethod
    def INPUT_TYPES(s):
        return {"required": {"text": ("STRING", {"multiline": True, "dynamicPrompts": True}), "clip": ("CLIP", {})}}
    RETURN_TYPES = ("CONDITIONING",)


class EmptyLatentImage:
    @classmethod
    def INPUT_TYPES(s):
        return {"required": {"width": ("INT", {"default": 512, "min": 16, "max": MAX_RESOLUTION, "step": 8}),
                             "height": ("INT", {"default": 512, "min": 16, "max": MAX_RESOLUTION, "step": 8}),
                             "batch_size": ("INT", {"default": 1, "min": 1, "max": 4096})}}
    RETURN_TYPES = ("LATENT",)


class KSampler:
    @classmethod
    def INPUT_TYPES(s):
        return {"required": {"model": ("MODEL", {}),
                             "seed": ("INT", {"default": 0, "min": 0, "max": 0xffffffffffffffff, "control_after_generate": True}),
                             "steps": ("INT", {"default": 20, "min": 1, "max": 10000}),
                             "cfg": ("FLOAT", {"default": 8.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01}),
                             "sampler_name": (SAMPLER_NAMES, {}),
                             "scheduler": (SCHEDULER_NAMES, {}),
                             "positive": ("CONDITIONING", {}),
                             "negative": ("CONDITIONING", {}),
                             "latent_image": ("LATENT", {}),
                             "denoise": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01})}}
    RETURN_TYPES = ("LATENT",)


class VAEDecode:
    @classmethod
    def INPUT_TYPES(s):
        return {"required": {"samples": ("LATENT", {}), "vae": ("VAE", {})}}
    RETURN_TYPES = ("IMAGE",)


class SaveImage:
    @classmethod
    def INPUT_TYPES(s):
        return {"required": {"images": ("IMAGE", {}), "filename_prefix": ("STRING", {"default": "ComfyUI"})},
                "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}}
    RETURN_TYPES = ()
    OUTPUT_NODE = True


NODE_CLASS_MAPPINGS = {"KSampler": KSampler, "CheckpointLoaderSimple": CheckpointLoaderSimple, "CLIPTextEncode": CLIPTextEncode,
                       "VAEDecode": VAEDecode, "EmptyLatentImage": EmptyLatentImage, "SaveImage": SaveImage}
NODE_DISPLAY_NAME_MAPPINGS = {}
LOADED_MODULE_DIRS = {}


def get_module_name(module_path: str) -> str:
    base_path = os.path.basename(module_path)
    if os.path.isfile(module_path):
        base_path = os.path.splitext(base_path)[0]
    return base_path


async def load_custom_node(module_path: str, ignore=set(), module_parent="custom_nodes") -> bool:
    module_name = get_module_name(module_path)
    if os.path.isfile(module_path):
        module_name = sys_module_name = os.path.splitext(module_path)[0]
    elif os.path.isdir(module_path):
        sys_module_name = module_path.replace(".", "_x_")
    try:
        if os.path.isfile(module_path):
            module_spec = importlib.util.spec_from_file_location(sys_module_name, module_path)
            module_dir = os.path.split(module_path)[0]
        else:
            module_spec = importlib.util.spec_from_file_location(sys_module_name, os.path.join(module_path, "__init__.py"))
            module_dir = module_path
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[sys_module_name] = module
        module_spec.loader.exec_module(module)
        LOADED_MODULE_DIRS[module_name] = os.path.abspath(module_dir)

        if getattr(module, "NODE_CLASS_MAPPINGS", None) is not None:
            for name, node_cls in module.NODE_CLASS_MAPPINGS.items():
                if name not in ignore:
                    NODE_CLASS_MAPPINGS[name] = node_cls
                    node_cls.RELATIVE_PYTHON_MODULE = "{}.{}".format(module_parent, get_module_name(module_path))
            if getattr(module, "NODE_DISPLAY_NAME_MAPPINGS", None) is not None:
                NODE_DISPLAY_NAME_MAPPINGS.update(module.NODE_DISPLAY_NAME_MAPPINGS)
            return True
        logging.warning(f"Skip {module_path} module for custom nodes due to the lack of NODE_CLASS_MAPPINGS or NODES_LIST (need one).")
        return False
    except Exception as e:
        logging.warning(traceback.format_exc())
        logging.warning(f"Cannot import {module_path} module for custom nodes: {e}")
        return False
