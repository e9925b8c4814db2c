# Stand-in for lllyasviel/stable-diffusion-webui-forge backend/memory_management.py at
# dfdcbab685e57677014f05a3309b48cc87383167: the free-memory query the batch helper sizes its
# batches by. Unlimited unless a test sets FREE_MEMORY (bytes).
import math

FREE_MEMORY = math.inf
signal_empty_cache = False


def get_free_memory(device=None):
    return FREE_MEMORY


def soft_empty_cache():
    pass
