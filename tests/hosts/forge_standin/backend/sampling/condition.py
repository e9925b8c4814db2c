# Stand-in for lllyasviel/stable-diffusion-webui-forge backend/sampling/condition.py at
# dfdcbab685e57677014f05a3309b48cc87383167: Condition, ConditionCrossAttn and compile_conditions
# for plain tensor (SD1-style) conditioning. Dict (SDXL) conditioning is not modelled.
import math

import torch


def repeat_to_batch_size(tensor, batch_size):
    if tensor.shape[0] > batch_size:
        return tensor[:batch_size]
    if tensor.shape[0] < batch_size:
        return tensor.repeat([math.ceil(batch_size / tensor.shape[0])] + [1] * (tensor.ndim - 1))[:batch_size]
    return tensor


class Condition:
    def __init__(self, cond):
        self.cond = cond

    def process_cond(self, batch_size, device, **kwargs):
        return type(self)(repeat_to_batch_size(self.cond, batch_size).to(device))

    def can_concat(self, other):
        return self.cond.shape == other.cond.shape

    def concat(self, others):
        return torch.cat([self.cond] + [o.cond for o in others])


class ConditionCrossAttn(Condition):
    def can_concat(self, other):
        # Forge also pads prompts of different lengths to a common multiple; equal shapes suffice here.
        return self.cond.shape == other.cond.shape


def compile_conditions(cond):
    if cond is None:
        return None
    return [dict(cross_attn=cond, model_conds=dict(c_crossattn=ConditionCrossAttn(cond)))]


def compile_weighted_conditions(cond, weights):
    # Forge splits multi-prompt (AND) batches by weight; one prompt per image here.
    return compile_conditions(cond)
