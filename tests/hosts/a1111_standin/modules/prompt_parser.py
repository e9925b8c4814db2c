"""Stands for modules/prompt_parser.py of v1.10.1: the conditioning containers the samplers carry
and the two functions CFGDenoiser.forward uses to rebuild the batch at each call."""
from collections import namedtuple

import torch

ScheduledPromptConditioning = namedtuple("ScheduledPromptConditioning", ["end_at_step", "cond"])


class ComposableScheduledPromptConditioning:
    def __init__(self, schedules, weight=1.0):
        self.schedules = schedules
        self.weight = weight


class MulticondLearnedConditioning:
    def __init__(self, shape, batch):
        self.shape = shape  # (batch size,)
        self.batch = batch  # per image: list of ComposableScheduledPromptConditioning (AND parts)


class DictWithShape(dict):
    def __init__(self, x, shape=None):
        super().__init__()
        self.update(x)

    @property
    def shape(self):
        return self["crossattn"].shape


def _current(schedules, current_step):
    for index, entry in enumerate(schedules):
        if current_step <= entry.end_at_step:
            return index
    return len(schedules) - 1


def _stack_padded(conds):
    """Stack conds of different token counts by repeating each one's last vector (as the host)."""
    if isinstance(conds[0], dict):
        stacked = {key: _stack_padded([c[key] for c in conds]) if key == "crossattn" else torch.stack([c[key] for c in conds]) for key in conds[0]}
        return DictWithShape(stacked)
    tokens = max(c.shape[0] for c in conds)
    padded = [c if c.shape[0] == tokens else torch.vstack([c, c[-1:].repeat(tokens - c.shape[0], 1)]) for c in conds]
    return torch.stack(padded)


def reconstruct_cond_batch(c, current_step):
    return _stack_padded([schedules[_current(schedules, current_step)].cond for schedules in c])


def reconstruct_multicond_batch(c, current_step):
    tensors, conds_list = [], []
    for composable_prompts in c.batch:
        conds_for_image = []
        for composable in composable_prompts:
            conds_for_image.append((len(tensors), composable.weight))
            tensors.append(composable.schedules[_current(composable.schedules, current_step)].cond)
        conds_list.append(conds_for_image)
    return conds_list, _stack_padded(tensors)
