"""A small real control network for the host stand-ins' ControlNet (A1111's sd-webui-controlnet in
controlnet_standin, Forge's built-in one in forge_standin): cldm's ControlNet shape, written here."""
import copy

import torch
from ldm.modules.diffusionmodules.util import timestep_embedding


class ControlNetwork(torch.nn.Module):
    """cldm's ControlNet shape: a copy of the UNet encoder and middle block, a hint input, and one
    1x1 conv per output (zero-initialised in training; random here so they do something)."""

    def __init__(self, unet):
        super().__init__()
        with torch.random.fork_rng():
            torch.manual_seed(5)  # the same "model file" every generation
            self._build(unet)

    def _build(self, unet):
        self.model_channels = unet.model_channels
        self.time_embed = copy.deepcopy(unet.time_embed)
        self.input_blocks = copy.deepcopy(unet.input_blocks)
        self.middle_block = copy.deepcopy(unet.middle_block)
        self.hint_block = torch.nn.Conv2d(4, unet.model_channels, 3, padding=1)
        self.out_convs = torch.nn.ModuleList()
        with torch.no_grad():
            h = torch.zeros(1, 4, 16, 16)
            emb = self.time_embed(timestep_embedding(torch.zeros(1), self.model_channels))
            context = torch.zeros(1, 1, unet.input_blocks[1][1].transformer_blocks[0].attn2.to_k.in_features)  # context dim
            for block in self.input_blocks:
                h = block(h, emb, context)
                self.out_convs.append(torch.nn.Conv2d(h.shape[1], h.shape[1], 1))
            self.out_convs.append(torch.nn.Conv2d(h.shape[1], h.shape[1], 1))
            for parameter in self.parameters():
                parameter.mul_(0.5)

    def forward(self, x, hint, timesteps, context):
        emb = self.time_embed(timestep_embedding(timesteps, self.model_channels))
        guided = self.hint_block(hint).expand(x.shape[0], -1, -1, -1)  # one hint broadcast to the batch
        outs, h = [], x
        for i, (block, conv) in enumerate(zip(self.input_blocks, self.out_convs)):
            h = block(h, emb, context) + (guided if i == 0 else 0)
            outs.append(conv(h))
        outs.append(self.out_convs[-1](self.middle_block(h, emb, context)))
        return outs
