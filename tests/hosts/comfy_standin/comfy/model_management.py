# Stand-in for Comfy-Org/ComfyUI comfy/model_management.py at a125cd84b054a57729b5eecab930ca9408719832:
# only what the sampling code below asks. Simplified: the CPU has memory for any batch (the real
# get_free_memory reads the device), so calc_cond_batch batches every chunk that can be concatenated.


def get_free_memory(dev=None, torch_free_too=False):
    return 1 << 40
