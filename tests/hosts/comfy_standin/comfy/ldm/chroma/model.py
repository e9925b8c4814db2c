# Stand-in for Comfy-Org/ComfyUI comfy/ldm/chroma/model.py at a125cd84b054a57729b5eecab930ca9408719832.
# Kept faithful, because ASAG depends on it: Chroma's blocks are Flux's (comfy/ldm/chroma/layers.py
# imports Flux's attention), run in forward_orig's loop with the dit replacement and ControlNet as
# Flux's, each block given its own precomputed modulations (an approximator's output, not vec), and
# the blocks listed in skip_mmdit / skip_dit never run (pruned variants); forward(x, timestep,
# context, guidance, control, transformer_options) takes no pooled vector.
# Simplified: the approximator is one linear map of the timestep (and guidance) embedding to every
# block's modulations, which are sliced per block as get_modulations does; the rest is the Flux
# stand-in's (comfy/ldm/flux/model.py).
import torch
from torch import nn

from comfy.ldm.flux.layers import ModulationOut, timestep_embedding
from comfy.ldm.flux.model import Flux


class Chroma(Flux):
    def __init__(self, **kwargs):
        super().__init__(**{**kwargs, "guidance_embed": False})
        del self.time_in, self.vector_in, self.guidance_in
        counts = 6 * len(self.double_blocks) * 2 + 3 * len(self.single_blocks) + 2
        self.distilled_guidance_layer = nn.Linear(32, counts * self.hidden_size)
        self.skip_mmdit, self.skip_dit = [], []

    def embed_vector(self, timesteps, y, guidance, img):
        embedded = torch.cat([timestep_embedding(timesteps, 16), timestep_embedding(guidance if guidance is not None else timesteps * 0, 16)], 1)
        return self.distilled_guidance_layer(embedded.to(img.dtype)).view(img.shape[0], -1, self.hidden_size)

    def _mod(self, vec, start, count=3):
        return ModulationOut(*(vec[:, start + j: start + j + 1] for j in range(count)))

    def double_vec(self, vec, i):
        base = 3 * len(self.single_blocks) + 12 * i
        return (self._mod(vec, base), self._mod(vec, base + 3)), (self._mod(vec, base + 6), self._mod(vec, base + 9))

    def single_vec(self, vec, i):
        return self._mod(vec, 3 * i)

    def final_vec(self, vec):
        return vec[:, -2:].mean(1)

    def forward(self, x, timestep, context, guidance=None, control=None, transformer_options={}, **kwargs):
        kwargs.pop("y", None)  # model_base.Chroma's conds carry Flux's pooled vector; Chroma reads none
        return super().forward(x, timestep, context, None, guidance, None, control, transformer_options, **kwargs)
