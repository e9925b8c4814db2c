"""ASAG on ComfyUI's transformer (DiT) models: how the extra pass is perturbed, for any family of
asag/hosts/families that ComfyUI runs (``ComfyModel``). The guidance side is the UNet's
(asag/hosts/comfyui.py).

The extra pass's ``transformer_options`` get an ``optimized_attention_override``, which ComfyUI's
``wrap_attn`` (comfy/ldm/modules/attention.py, since 2025-09) hands every attention call of that
pass, and nothing else. For a call of a selected block it computes the joint attention with
``asag.joint`` (the image queries' share over the image keys through the adversarial plan, the
text's share and weights kept; text rows as the model computes them; an image-only attention
through the plain operator); every other call goes to the override already set (another node's)
or to ComfyUI's own attention, its arguments untouched.

Which block runs: ComfyUI's ``block_type`` / ``block_index`` where the model names its blocks
(``ComfyModel.block_types``), else ASAG's mark, put on the selected blocks for the extra pass
only: through the ``dit`` whole-block replacement where the model offers it (it marks the
block's ``transformer_options`` and calls the replacement already there, if any, or
``original_block``), else through a forward on the block (or on its self-attention) that marks
the call's options. A marked block also counts its attention calls: the first is the joint one,
a later one attends over the image alone (SD3.5 Medium's MMDiT-X blocks).

The text's length in a joint sequence: the block's own (``args["txt"]`` of its ``dit``
replacement), else the context of the model call under way, which an ``APPLY_MODEL`` wrapper of
the extra pass notes (padded as the family pads it). The image comes after the text, or before
it in a block whose ``ComfyModel.image_first`` flag is set.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

import comfy.model_patcher
import comfy.patcher_extension
from comfy.patcher_extension import WrappersMP

from .. import joint, sinkhorn
from ..dit_layers import spec_of
from ..log import logger
from . import forge_dit

OWNER_KEY = "asag"
MARK_KEY = "asag_block"  # ASAG's mark of the selected block under way, in the extra pass's transformer_options
TEXT_KEY = "asag_context_tokens"  # the context length of the model call under way, likewise


@dataclass
class BlockMark:
    """A selected block under way: its address, its text length where its call gives it, and
    how many attention calls it has made."""

    block: tuple[str, int]
    text_tokens: int | None
    calls: int = 0


class DitPerturbation:
    """The extra pass of one patched transformer: ``perturbed(model_options)`` gives its options
    (and marks the blocks that need a forward for the duration); ``perturbed_blocks`` lists the
    blocks whose attention the last pass perturbed."""

    def __init__(self, family, diffusion_model, selected, params, budget_bytes: int = sinkhorn.MEMORY_BUDGET_BYTES):
        self.family, self.model, self.params, self.budget_bytes = family, diffusion_model, params, budget_bytes
        self.selected = list(selected)  # DitBlocks, in execution order
        self.addresses = {block.block_address for block in selected}
        self.perturbed_blocks: set = set()
        self._said: set = set()

    def acts(self, latent) -> bool:
        return True  # image tokens attend over many: never the identity

    def describe(self) -> str:
        count = len(self.selected)
        return f"{count} {self.family.name} block{'s' * (count != 1)} ({spec_of(self.selected)})"

    @contextlib.contextmanager
    def perturbed(self, model_options: dict):
        self.perturbed_blocks = set()
        options = model_options.copy()
        to = dict(options.get("transformer_options", {}))
        to["optimized_attention_override"] = self._override(to.get("optimized_attention_override"))
        to["wrappers"] = comfy.patcher_extension.copy_nested_dicts(to.get("wrappers", {}))
        comfy.patcher_extension.add_wrapper_with_key(WrappersMP.APPLY_MODEL, OWNER_KEY, _note_context, to)
        options["transformer_options"] = to
        table = (to.get("patches_replace") or {}).get("dit") or {}
        forwards = []
        for kind, index in (block.block_address for block in self.selected):
            key = self.family.replace_keys.get(kind)
            if key is not None:
                mark = self._marking_replacement((kind, index), table.get((key, index)))
                options = comfy.model_patcher.set_model_options_patch_replace(options, mark, "dit", key, index)
            else:
                target = self.family.block_at(self.model, kind, index)
                target = getattr(target, self.family.attention_part) if self.family.attention_part else target
                forwards.append((target, self._marking_forward(target, (kind, index))))
        try:
            yield options
        finally:
            for target, forward in reversed(forwards):
                forge_dit.remove_forward(target, forward)

    def _named(self, options: dict) -> tuple | None:
        """The block ComfyUI names in ``options`` (``block_type`` / ``block_index``), if any."""
        kind = self.family.comfyui.block_types.get(options.get("block_type"))
        return (kind, options["block_index"]) if kind is not None and options.get("block_index") is not None else None

    def _block(self, options: dict) -> tuple[tuple | None, BlockMark | None]:
        """The block under way, by ComfyUI's name for it or ASAG's mark, and the mark if any."""
        mark = options.get(MARK_KEY)
        block = self._named(options) or (mark.block if mark is not None else None)
        return block, (mark if mark is not None and mark.block == block else None)

    @contextlib.contextmanager
    def _marked(self, options: dict | None, mark: BlockMark):
        """``mark`` in ``options`` for the duration, where ComfyUI does not name the block itself."""
        if options is None or self._named(options) == mark.block:
            yield
            return
        previous = options.get(MARK_KEY)
        options[MARK_KEY] = mark
        try:
            yield
        finally:
            if previous is None:
                options.pop(MARK_KEY, None)
            else:
                options[MARK_KEY] = previous

    def _marking_replacement(self, block: tuple, previous):
        """A ``dit`` replacement that marks ``block`` running in the block call's options, then
        calls the replacement that was there (another node's) or the block itself."""
        def asag_mark_block(args, extra):
            text = args["txt"].shape[1] if isinstance(args.get("txt"), torch.Tensor) else None
            with self._marked(args.get("transformer_options"), BlockMark(block, text)):
                return previous(args, extra) if previous is not None else extra["original_block"](args)
        return asag_mark_block

    def _marking_forward(self, module, block: tuple):
        """A forward on ``module`` (a selected block, or its self-attention) that marks ``block``
        running in the call's ``transformer_options``."""
        marks = []

        def before(args, kwargs):
            marks.append(self._marked(kwargs.get("transformer_options"), BlockMark(block, None)))
            marks[-1].__enter__()

        def after(args, kwargs):
            marks.pop().__exit__(None, None, None)

        return forge_dit.wrap_forward(module, before, after)

    def _override(self, previous):
        def asag_attention_override(func, *args, **kwargs):
            options = kwargs.get("transformer_options") or {}
            block, mark = self._block(options)
            out = None
            if block in self.addresses:
                call = 0
                if mark is not None:
                    call, mark.calls = mark.calls, mark.calls + 1
                out = self._attention(block, mark, call, options, args, kwargs)
            if out is not None:
                self.perturbed_blocks.add(block)
                return out
            return previous(func, *args, **kwargs) if previous is not None else func(*args, **kwargs)

        return asag_attention_override

    def _attention(self, block, mark, call: int, options: dict, args: tuple, kwargs: dict):
        """ASAG's attention for one call of a selected block, in the layout the call asked for; None
        where it computes as the model does (said once per reason)."""
        q, k, v = args[:3]
        heads = args[3] if len(args) > 3 else kwargs["heads"]  # SD3 passes it by name
        mask = args[4] if len(args) > 4 else kwargs.get("mask")
        if mask is not None and (not torch.is_floating_point(mask) or bool(mask.any())):  # an all-zero additive mask masks nothing
            return self._say("%s block %s attends with a mask, which ASAG does not perturb: computed as the model does", *block)
        if not kwargs.get("skip_reshape", False):  # (batch, tokens, heads * dim); SD3's v (batch, tokens, heads, dim)
            q, k, v = (t.reshape(t.shape[0], t.shape[1], heads, -1).transpose(1, 2) for t in (q, k, v))
        if k.shape != q.shape or v.shape[:-1] != q.shape[:-1]:
            return self._say("%s block %s attends over other tokens than it queries (%s, %s): computed as the model does", *block,
                             tuple(q.shape), tuple(k.shape))
        tokens = q.shape[2]
        image = self._image_tokens(block, mark, call, options, tokens)
        if image is None:
            return self._say("%s block %s: the text's length is unknown here: computed as the model does", *block)
        out = joint.joint_adversarial_attention(q, k, v, image, iterations=self.params.iterations, strength=self.params.strength,
                                                scale=kwargs.get("scale"), budget_bytes=self.budget_bytes)
        if kwargs.get("skip_output_reshape", False):
            return out
        return out.transpose(1, 2).reshape(out.shape[0], tokens, -1)

    def _image_tokens(self, block, mark, call: int, options: dict, tokens: int) -> slice | None:
        kind = block[0]
        if kind in self.family.image_only or call > 0:
            return slice(0, None)
        text = mark.text_tokens if mark is not None and mark.text_tokens is not None else options.get(TEXT_KEY)
        if text is None:
            return None
        image = self.family.image_tokens(self.model, kind, text)
        if image.start >= tokens:
            return None
        flag = self.family.comfyui.image_first
        if flag and getattr(self.family.block_at(self.model, *block), flag, False):
            return slice(0, tokens - image.start)
        return image

    def _say(self, message: str, *args) -> None:
        if message not in self._said:
            self._said.add(message)
            logger.warning(message, *args)
        return None


def _note_context(executor, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options={}, **kwargs):
    """``APPLY_MODEL`` wrapper of the extra pass: the model call's context length, for the
    attention calls of blocks that do not give their own."""
    if isinstance(c_crossattn, torch.Tensor) and c_crossattn.ndim == 3:
        transformer_options[TEXT_KEY] = c_crossattn.shape[1]
    return executor(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)


def host_blocks(family):
    """How ComfyUI calls a transformer's blocks (asag/reuse.py): as Neo does, the model call's
    keyword arguments the conditioning (``y``, ``guidance``, Lumina 2's ``num_tokens``)."""
    return forge_dit.host_blocks(family, numbers_keyed=True)
