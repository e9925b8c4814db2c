# Stand-in for Comfy-Org/ComfyUI comfy/conds.py at a125cd84b054a57729b5eecab930ca9408719832.
# Kept faithful: CONDRegular (repeated to the batch, concatenated when shapes match) and
# CONDCrossAttn (contexts of different lengths concatenated by repeating each to the least common
# multiple of the lengths, up to 4 times the shorter), CONDConstant (one value for the batch, concatenated
# only with an equal one). Simplified: the other CONDs are left out.
import math

import torch


def repeat_to_batch_size(tensor, batch_size, dim=0):  # comfy/utils.py
    if tensor.shape[dim] > batch_size:
        return tensor.narrow(dim, 0, batch_size)
    if tensor.shape[dim] < batch_size:
        repeats = dim * [1] + [math.ceil(batch_size / tensor.shape[dim])] + [1] * (len(tensor.shape) - 1 - dim)
        return tensor.repeat(repeats).narrow(dim, 0, batch_size)
    return tensor


class CONDRegular:
    def __init__(self, cond):
        self.cond = cond

    def _copy_with(self, cond):
        return self.__class__(cond)

    def process_cond(self, batch_size, **kwargs):
        return self._copy_with(repeat_to_batch_size(self.cond, batch_size))

    def can_concat(self, other):
        return self.cond.shape == other.cond.shape and self.cond.device == other.cond.device

    def concat(self, others):
        return torch.cat([self.cond] + [x.cond for x in others])

    def size(self):
        return list(self.cond.size())


class CONDCrossAttn(CONDRegular):
    def can_concat(self, other):
        s1, s2 = self.cond.shape, other.cond.shape
        if s1 != s2:
            if s1[0] != s2[0] or s1[2] != s2[2]:
                return False
            if math.lcm(s1[1], s2[1]) // min(s1[1], s2[1]) > 4:
                return False
        return self.cond.device == other.cond.device

    def concat(self, others):
        conds = [self.cond] + [x.cond for x in others]
        length = self.cond.shape[1]
        for c in conds[1:]:
            length = math.lcm(length, c.shape[1])
        return torch.cat([c.repeat(1, length // c.shape[1], 1) if c.shape[1] < length else c for c in conds])


class CONDConstant(CONDRegular):
    def process_cond(self, batch_size, **kwargs):
        return self._copy_with(self.cond)

    def can_concat(self, other):
        return self.cond == other.cond

    def concat(self, others):
        return self.cond

    def size(self):
        return [1]
