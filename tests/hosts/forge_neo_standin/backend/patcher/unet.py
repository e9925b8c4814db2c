# Stand-in for Forge Neo backend/patcher/unet.py and the clone of backend/patcher/base.py
# (exo101/sd-webui-forge-neo-v3 5692d2d: unet.py:28-34, base.py:221-241): Neo's ModelPatcher
# (ComfyUI-derived) clones as `self.__class__(...)` and copies model_options with utils.deepcopy_
# (dicts and lists copied, functions and other objects shared), and UnetPatcher.clone adds its own
# fields. The option helpers are those of lllyasviel's Forge (../forge_standin).
from tests.hosts.forge_standin_file import load_forge_file

from backend import utils

_forge = load_forge_file("backend/patcher/unet.py", "backend.patcher._forge_unet")


class UnetPatcher(_forge.UnetPatcher):
    def clone(self):
        n = self.__class__(self.model, self.load_device, self.offload_device, self.size, self.current_device)
        n.lora_patches = {k: v[:] for k, v in self.lora_patches.items()}
        n.object_patches = self.object_patches.copy()
        n.model_options = utils.deepcopy_(self.model_options)
        n.parent = self
        n.controlnet_linked_list = self.controlnet_linked_list
        n.extra_preserved_memory_during_sampling = self.extra_preserved_memory_during_sampling
        n.extra_model_patchers_during_sampling = self.extra_model_patchers_during_sampling.copy()
        n.extra_concat_condition = self.extra_concat_condition
        return n
