"""Counts, for the reuse tests of both hosts, the UNet calls and the UNet blocks that really compute:
the ``forward`` of each block's first layer, wrapped on its class for the duration (a replayed
block never reaches it). Class-level, not hooks or instance attributes on the modules: reuse
computes a pass in full where it finds other code inside a replayed block (asag/reuse.py)."""
from asag.layers import unet_blocks


class BlockCounter:
    """``blocks(model)`` lists a model's addressed blocks (a UNet's by default) and ``first_layer(block)``
    the module whose class forward counts a computation (a transformer block is its own)."""

    def __init__(self, unets, blocks=unet_blocks, first_layer=lambda block: block[0]):
        self.unet_calls = self.block_computations = 0
        self.handles = [unet.register_forward_pre_hook(lambda *_: self._add("unet_calls")) for unet in unets]
        # Counted by identity: a control network's deep copy of the encoder has layers of the same classes.
        layers = [first_layer(block) for unet in unets for _, block in blocks(unet)]
        self.own = {id(layer) for layer in layers}
        self.patched = {}
        for cls in {type(layer) for layer in layers}:
            self.patched[cls] = vars(cls).get("forward")
            cls.forward = self._counting(cls.forward)

    def _counting(self, forward):
        def counted(module, *args, **kwargs):
            if id(module) in self.own:
                self._add("block_computations")
            return forward(module, *args, **kwargs)
        return counted

    def _add(self, name):
        setattr(self, name, getattr(self, name) + 1)

    def close(self):
        for handle in self.handles:
            handle.remove()
        for cls, forward in self.patched.items():
            if forward is None:
                del cls.forward
            else:
                cls.forward = forward
