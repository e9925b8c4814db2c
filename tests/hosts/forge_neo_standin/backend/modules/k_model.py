# Stand-in for Forge Neo backend/modules/k_model.py (exo101/sd-webui-forge-neo-v3 5692d2d,
# webui/backend/modules/k_model.py:9-60). Kept faithful: the diffusion model is the loader's model
# as it is (Neo builds its UNet from Forge's class, here a real ldm UNet given Forge's class as in
# ../../forge_standin; transformers from backend/nn as they are); apply_model scales the input by
# the predictor, concatenates c_concat, and passes every other condition (the pooled vector `y`,
# Flux's distilled `guidance`) to the model by name, with the context and transformer_options.
# Simplified: no storage/computation dtype casts (the tests run float32).
from tests.hosts.forge_standin_file import load_forge_file

from backend.nn.unet import forge_unet

_forge = load_forge_file("backend/modules/k_model.py", "backend.modules._forge_k_model")
MEMORY_PER_ELEMENT = _forge.MEMORY_PER_ELEMENT
Prediction = _forge.Prediction


class KModel(_forge.KModel):
    def __init__(self, model, k_predictor=None):
        super(_forge.KModel, self).__init__()
        self.diffusion_model = forge_unet(model) if hasattr(model, "input_blocks") else model
        self.predictor = k_predictor if k_predictor is not None else Prediction()
