"""Stands for what sd-webui-controlnet (56cec5b2) does to the UNet, in scripts/hook.py and
scripts/controlnet.py, reduced to the behaviour ASAG meets:

* cond marking (``mark_prompt_context``): one marker token (+1024 for cond, -1024 for uncond) is
  prepended to every prompt context before sampling; the replaced ``UNetModel.forward`` strips it
  and derives ``cond_mark`` per row (``unmark_prompt_context``), falling back to "all cond" when a
  context carries no marker;
* the replaced forward on the UNet instance: the ldm UNet's own blocks, with the residuals of a
  small real control network (an ldm encoder copy with 1x1 output convs, as cldm's ControlNet)
  added to the skip connections and the middle block;
* state sized by the first call of a generation: an IP-Adapter-like cache of image tokens and
  reference-only's feature bank, which attn1 receives as extra key/value tokens (so a call with
  another batch size fails as in Mikubill/sd-webui-controlnet issue #1380).
"""
import torch
from ldm.modules.diffusionmodules.util import timestep_embedding

from tests.hosts.control_network import ControlNetwork

POSITIVE_MARK_TOKEN = 1024
NEGATIVE_MARK_TOKEN = -POSITIVE_MARK_TOKEN
MARK_EPS = 1e-3


def is_marked(context):
    return float((context[..., 0, :].abs() - POSITIVE_MARK_TOKEN).abs().mean()) < MARK_EPS


def mark(cond, positive):
    """Prepend the marker token to a [T, D] context (mark_prompt_context on a ScheduledPromptConditioning)."""
    return torch.cat([torch.zeros_like(cond[:1]) + (POSITIVE_MARK_TOKEN if positive else NEGATIVE_MARK_TOKEN), cond])


def unmark(context):
    if not is_marked(context):
        return torch.ones(context.shape[0], 1, 1, 1), context, False
    marker = (context[:, 0, :] - NEGATIVE_MARK_TOKEN).abs().mean(dim=1)
    return (marker > MARK_EPS).float()[:, None, None, None], context[:, 1:, :], True


class UnetHook:
    """Installed on the UNet instance for one generation (ControlNet's process), removed after."""

    def __init__(self, unet, units, hint):
        self.unet, self.units, self.hint = unet, units, hint
        self.control = ControlNetwork(unet).eval()
        self.calls = []  # (rows, marked, cond_mark, had control) per UNet call, for the tests
        self.first_batch = None  # per-generation state sized by the first call
        self.kinds = {unit.module.split("_")[0] for unit in units if unit.enabled}

    def hook(self):
        self.unet.forward = self.forward
        if "reference" in self.kinds:
            for block in self._transformer_blocks():
                block._forward = self._reference_forward(block)

    def restore(self):
        self.unet.__dict__.pop("forward", None)
        for block in self._transformer_blocks():
            block.__dict__.pop("_forward", None)

    def _transformer_blocks(self):
        return [m for m in self.unet.modules() if type(m).__name__ == "BasicTransformerBlock"]

    def _reference_forward(self, block):
        bank = {}

        def forward(x, context=None):
            # reference-only: attn1 also attends to the reference's features (a bank made at the first call)
            normed = block.norm1(x)
            if "tokens" not in bank:
                bank["tokens"] = torch.randn(normed.shape, generator=torch.Generator().manual_seed(3)) * normed.std()
            x = block.attn1(normed, context=torch.cat([normed, bank["tokens"]], dim=1)) + x
            x = block.attn2(block.norm2(x), context=context) + x
            return block.ff(block.norm3(x)) + x
        return forward

    def forward(self, x, timesteps=None, context=None, **kwargs):
        cond_mark, context, marked = unmark(context)
        if self.first_batch is None:
            self.first_batch = x.shape[0]
        if "ip-adapter" in self.kinds and x.shape[0] != self.first_batch:
            # PlugableIPAdapter.cache holds the first call's image tokens, viewed to this batch
            raise RuntimeError(f"shape '[{x.shape[0]}, -1, 8]' is invalid for input of size {self.first_batch * 8 * 4}")
        unet = self.unet
        control = self.control(x, self.hint, timesteps, context) if any(not k.startswith(("ip-adapter", "reference")) for k in self.kinds) else None
        self.calls.append((x.shape[0], marked, cond_mark.flatten().tolist(), control is not None))
        emb = unet.time_embed(timestep_embedding(timesteps, unet.model_channels))
        hs, h = [], x
        for block in unet.input_blocks:
            h = block(h, emb, context)
            hs.append(h)
        h = unet.middle_block(h, emb, context)
        if control is not None:
            h = h + control.pop()
        for block in unet.output_blocks:
            skip = hs.pop() + (control.pop() if control is not None else 0)
            h = block(torch.cat([h, skip], dim=1), emb, context)
        return unet.out(h)
