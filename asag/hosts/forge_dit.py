"""ASAG on the transformer (DiT) models of Forge Neo: what differs from a UNet, for any family
(asag/hosts/families).

The guidance side is the UNet's (asag/hosts/forge.py): the same post-CFG function runs the extra
pass on the cond rows through the host's batch helper, at any CFG scale (at CFG 1 Neo skips the
uncond rows and the result is ``cond + scale * (cond - perturbed)``). What differs is how the
extra pass is perturbed and how its blocks are taken from the main pass:

* No DiT of Neo has an attention-level replace hook, so for the extra pass alone the family's
  module-level ``attention_function`` is swapped for one that computes the selected blocks' joint
  attention with ``asag.joint`` (image queries over image keys through the adversarial plan, the
  text's weights and share kept; text rows as the model computes them; an image-only block
  through the plain operator) and calls the host's own for every other block. It knows the block
  by ``transformer_options["block_type"]`` / ``["block_index"]``, which Flux sets itself; in a
  family that does not name its blocks (NextDiT, Anima, Qwen-Image), the selected blocks get a
  forward for the pass that marks them running (their self-attention alone where a block also
  cross-attends: Anima). Everything is put back when the pass ends, however it ends. The joint
  sequence's text length is the context length of the model call under way, read from the call
  itself (padded as the family pads it).
* Reuse (asag/reuse.py): the blocks before the first perturbed one, keyed by the model call's
  inputs (latent, timestep, context, pooled vector, distilled guidance), compared exactly.
"""
from __future__ import annotations

import contextlib
import importlib

import torch

from .. import joint
from ..log import logger
from ..reuse import WRAPPER_ATTR, HostBlocks

# Model call arguments that are not conditioning: ControlNet's residuals are added between blocks,
# outside the replayed calls, and transformer_options is the host's bookkeeping.
NOT_KEYED = ("x", "timestep", "context", "control", "transformer_options")


def host_blocks(family, numbers_keyed: bool = False) -> HostBlocks:
    """How Neo (and ComfyUI, whose model calls have the same form) calls a transformer's blocks
    (asag/reuse.py): the model call holds the key. ``numbers_keyed``: a number among the call's
    arguments (ComfyUI's Lumina 2 ``num_tokens``) is part of the key, as a value per row."""
    def model_key(args: tuple, kwargs: dict) -> list:
        x, timestep, context = (*args, None, None, None)[:3]
        x = kwargs.get("x", x)
        timestep, context = kwargs.get("timestep", timestep), kwargs.get("context", context)
        rows = x.shape[0]
        extra = [kwargs[name] for name in sorted(kwargs) if name not in NOT_KEYED and _row_tensor(kwargs[name], rows)]
        if numbers_keyed:
            extra += [torch.full((rows,), float(kwargs[name]), device=x.device) for name in sorted(kwargs)
                      if name not in NOT_KEYED and _number(kwargs[name])]
        return [x, timestep, context, *extra]

    def unreplayable(args: tuple, kwargs: dict, replayed: list) -> str | None:
        rows = (args[0] if args else kwargs["x"]).shape[0]
        for name, value in kwargs.items():
            if name not in NOT_KEYED and value is not None and not _row_tensor(value, rows) and not (numbers_keyed and _number(value)):
                return f"the model call's {name} cannot be compared row by row"
        options = kwargs.get("transformer_options") or {}
        table = (options.get("patches_replace") or {}).get("dit") or {}
        for kind, index in replayed:
            if (family.replace_keys.get(kind), index) in table:
                return f"a dit replacement is set on {kind} block {index}"
        return None

    def live(replayed: list) -> set:
        """The last replayed block, and the last replayed one of each list that runs beside the
        main chain and joins it later (NextDiT's caption refiners)."""
        positions = {len(replayed) - 1} if replayed else set()
        for kind in family.side_chains:
            positions |= {max((i for i, (k, _) in enumerate(replayed) if k == kind), default=-1)} - {-1}
        return positions

    return HostBlocks(blocks=family.blocks, model_key=model_key, unreplayable=unreplayable, live=live, passthrough=_own_input)


def _own_input(args: tuple, kwargs: dict):
    """A block's input as its output, in the forms Neo and ComfyUI call blocks: Flux's double
    blocks as ``block(img=..., txt=..., ...)`` (returning ``(img, txt)``), Qwen-Image's as
    ``block(hidden_states=img, encoder_hidden_states=txt, ...)`` (returning ``(txt, img)``), SD3's
    as ``block(context, x, c=...)`` (ComfyUI's MMDiT, returning ``(context, x)``), the others as
    ``block(x, ...)``."""
    if "txt" in kwargs:
        return kwargs["img"], kwargs["txt"]
    if "encoder_hidden_states" in kwargs:
        return kwargs["encoder_hidden_states"], kwargs["hidden_states"]
    if "c" in kwargs and len(args) == 2:
        return args[0], args[1]
    return args[0] if args else kwargs["img"]


def _row_tensor(value, rows: int) -> bool:
    return isinstance(value, torch.Tensor) and value.ndim > 0 and value.shape[0] == rows


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class DitPerturbation:
    """One sampling pass's perturbation of a transformer: ``perturbed(model_options, observe)``
    is the extra pass's context; inside it the selected blocks attend through ASAG's operator."""

    def __init__(self, family, diffusion_model, selected, params, budget_bytes: int):
        self.family, self.model = family, diffusion_model
        self.selected = {block.block_address for block in selected}
        self.params, self.budget_bytes = params, budget_bytes
        self._mask_said = False

    @contextlib.contextmanager
    def perturbed(self, model_options: dict, observe=None):
        module = importlib.import_module(self.family.neo.attention_module)
        original = module.attention_function
        text_tokens = []  # the context length of each model call of the pass, the latest last
        running = []  # the selected block running now, where the model does not name its blocks
        ours = self._attention_function(original, text_tokens, running, observe)
        module.attention_function = ours
        forwards = [(self.model, wrap_forward(self.model, lambda args, kwargs: text_tokens.append(_context(args, kwargs).shape[1])))]
        if not self.family.neo.names_blocks:  # mark each selected block (or its self-attention) running
            part = self.family.attention_part
            for address, block in self.family.blocks(self.model):
                if address in self.selected:
                    attending = getattr(block, part) if part else block
                    forwards.append((attending, wrap_forward(attending, lambda args, kwargs, address=address: running.append(address),
                                                              lambda args, kwargs: running.pop())))
        try:
            yield model_options
        finally:
            if module.attention_function is ours:
                module.attention_function = original
            for owner, forward in reversed(forwards):
                remove_forward(owner, forward)

    def _attention_function(self, original, text_tokens: list, running: list, observe):
        params, family, selected = self.params, self.family, self.selected

        def asag_attention_function(q, k, v, heads, *args, **kwargs):
            if family.neo.names_blocks:
                options = kwargs.get("transformer_options") or {}
                block = (options.get("block_type"), options.get("block_index"))
            else:
                block = running[-1] if running else None
            mask = args[0] if args else kwargs.get("mask")  # NextDiT and Qwen-Image pass it positionally
            if block not in selected or not text_tokens or mask is not None or kwargs.get("skip_output_reshape"):
                if block in selected and mask is not None and not self._mask_said:
                    self._mask_said = True
                    logger.warning("%s block %s attends with a mask, which ASAG does not perturb: computed as the model does",
                                   *block)
                return original(q, k, v, heads, *args, **kwargs)
            if not kwargs.get("skip_reshape"):  # Qwen-Image's (batch, tokens, heads * dim)
                q, k, v = (t.unflatten(-1, (heads, -1)).transpose(1, 2) for t in (q, k, v))
            batch, _, tokens, dim = q.shape
            image = family.image_tokens(self.model, block[0], text_tokens[-1])
            if observe is not None:  # the image queries and keys, as (batch, tokens, heads * dim)
                observe(*(t[:, :, image].transpose(1, 2).reshape(batch, -1, heads * dim) for t in (q, k)), heads, dim ** -0.5)
            out = joint.joint_adversarial_attention(q, k, v, image, iterations=params.iterations, strength=params.strength,
                                                    budget_bytes=self.budget_bytes)
            return out.transpose(1, 2).reshape(batch, tokens, heads * v.shape[-1])

        return asag_attention_function


def _context(args: tuple, kwargs: dict):
    return kwargs.get("context", args[2] if len(args) > 2 else None)


def wrap_forward(module, before, after=None):
    """Put a forward on ``module`` that calls ``before(args, kwargs)``, the module's own forward,
    then ``after(args, kwargs)``."""
    previous = vars(module).get("forward")  # reuse's guard, or another extension's forward

    def forward(*args, **kwargs):
        before(args, kwargs)
        try:
            return previous(*args, **kwargs) if previous is not None else type(module).forward(module, *args, **kwargs)
        finally:
            if after is not None:
                after(args, kwargs)

    setattr(forward, WRAPPER_ATTR, previous)  # reuse.remove_leftovers takes it off too
    module.forward = forward
    return forward


def remove_forward(module, forward) -> None:
    """Takes ``forward`` (from ``wrap_forward``) off ``module`` where it is still the module's,
    putting back the forward it wrapped."""
    if vars(module).get("forward") is not forward:
        return
    previous = getattr(forward, WRAPPER_ATTR)
    if previous is None:
        del module.forward
    else:
        module.forward = previous
