"""Counts, for the reuse tests of both hosts, the UNet calls and the UNet blocks that really compute
(a pre-hook on each block's first layer; a replayed block never reaches it)."""
from asag.layers import unet_blocks


class BlockCounter:
    def __init__(self, unets):
        self.unet_calls = self.block_computations = 0
        self.handles = []
        for unet in unets:
            first_layers = [block[0] for _, block in unet_blocks(unet)]
            self.handles.append(unet.register_forward_pre_hook(lambda *_: self._add("unet_calls")))
            # Hooks travel with deep copies (a control network copies the encoder): count the UNet's own.
            self.handles += [layer.register_forward_pre_hook(
                lambda module, _, own=layer: self._add("block_computations") if module is own else None)
                for layer in first_layers]

    def _add(self, name):
        setattr(self, name, getattr(self, name) + 1)

    def close(self):
        for handle in self.handles:
            handle.remove()
