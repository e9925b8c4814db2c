# Stand-in for lllyasviel/stable-diffusion-webui-forge backend/sampling/condition.py at
# dfdcbab685e57677014f05a3309b48cc87383167: Condition, ConditionCrossAttn, compile_conditions and
# compile_weighted_conditions (AND prompts), for tensor (SD1) and dict conditioning (SDXL, Flux:
# crossattn, the pooled vector as `y`, Flux's distilled guidance as `guidance`; selected by the
# WebUI's DictWithShape.advanced_indexing). Forge Neo's file (5692d2d) is the same.
# Kept faithful: prompts of different lengths batch together (up to a 4x length ratio), the
# shorter contexts repeated to the least common multiple of the lengths.
import math

import torch


def repeat_to_batch_size(tensor, batch_size):
    if tensor.shape[0] > batch_size:
        return tensor[:batch_size]
    if tensor.shape[0] < batch_size:
        return tensor.repeat([math.ceil(batch_size / tensor.shape[0])] + [1] * (tensor.ndim - 1))[:batch_size]
    return tensor


def lcm(a, b):
    return abs(a * b) // math.gcd(a, b)


class Condition:
    def __init__(self, cond):
        self.cond = cond

    def _copy_with(self, cond):
        return self.__class__(cond)

    def process_cond(self, batch_size, device, **kwargs):
        return self._copy_with(repeat_to_batch_size(self.cond, batch_size).to(device))

    def can_concat(self, other):
        return self.cond.shape == other.cond.shape

    def concat(self, others):
        return torch.cat([self.cond] + [o.cond for o in others])


class ConditionCrossAttn(Condition):
    def can_concat(self, other):
        s1, s2 = self.cond.shape, other.cond.shape
        if s1 != s2:
            if s1[0] != s2[0] or s1[2] != s2[2]:
                return False
            if lcm(s1[1], s2[1]) // min(s1[1], s2[1]) > 4:
                return False
        return True

    def concat(self, others):
        conds = [self.cond]
        crossattn_max_len = self.cond.shape[1]
        for x in others:
            crossattn_max_len = lcm(crossattn_max_len, x.cond.shape[1])
            conds.append(x.cond)
        return torch.cat([c.repeat(1, crossattn_max_len // c.shape[1], 1) if c.shape[1] < crossattn_max_len else c
                          for c in conds])


def compile_conditions(cond):
    if cond is None:
        return None
    if isinstance(cond, torch.Tensor):
        return [dict(cross_attn=cond, model_conds=dict(c_crossattn=ConditionCrossAttn(cond)))]
    result = dict(cross_attn=cond["crossattn"], pooled_output=cond["vector"],
                  model_conds=dict(c_crossattn=ConditionCrossAttn(cond["crossattn"]), y=Condition(cond["vector"])))
    if "guidance" in cond:
        result["model_conds"]["guidance"] = Condition(cond["guidance"])
    return [result]


def compile_weighted_conditions(cond, weights):
    """AND prompts: ``weights`` is the WebUI's composition, per image a list of (row of ``cond``,
    weight); the n-th sub-prompts of all images become one condition with the n-th weight as its
    strength (zip stops at the image with the fewest sub-prompts, as Forge's does)."""
    results = []
    for column in map(list, zip(*weights)):
        rows = [i for i, _ in column]
        h = compile_conditions(cond.advanced_indexing(rows) if hasattr(cond, "advanced_indexing") else cond[rows])
        h[0]["strength"] = column[-1][1]
        results += h
    return results
