# Stand-in for ldm_patched/modules/samplers.py of old Forge (lllyasviel/stable-diffusion-webui-forge
# af0b04cc) and Forge Classic (Haoming02/sd-webui-forge-classic 5136ce20, samplers.py:175):
# calc_cond_uncond_batch has the signature and behaviour of new Forge's (forge-and-controlnet.md
# A.5: "Old Forge: same function and behaviour; only the imports differ"), so the new Forge
# stand-in's sampling_function.py is loaded here under this package's name. No calc_cond_batch:
# that is reForge's (detect.py tells the two apart by it).
from tests.hosts.forge_standin_file import load_forge_file

_module = load_forge_file("backend/sampling/sampling_function.py", "ldm_patched.modules._sampling_function")

calc_cond_uncond_batch = _module.calc_cond_uncond_batch
sampling_function_inner = _module.sampling_function_inner
sampling_function = _module.sampling_function
sampling_function_with_options = _module.sampling_function_with_options
