"""Adversarial Sinkhorn Attention Guidance (ASAG, arXiv 2511.07499) for the Stable Diffusion WebUI.

The core (this package outside ``asag.hosts``) imports only torch and the standard library.
"""
from .guidance import apply_guidance, guidance_term, progress_from_sigma, progress_from_steps, rescale_to, scale_at
from .layers import LayerAddress, describe_available, resolve_layers, self_attention_modules
from .params import PARAMS, AsagParams, ParamSpec
from .sinkhorn import adversarial_sinkhorn_attention, adversarial_sinkhorn_attention_heads

__version__ = "0.1.0"
