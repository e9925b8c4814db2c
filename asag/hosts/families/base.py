"""The interface of a transformer (DiT) model family (see ``asag/hosts/families/__init__.py``)."""
from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass, field
from typing import Mapping

from ...dit_layers import AUTO, DitBlock, resolve_blocks


@dataclass(frozen=True)
class DitFamily:
    """One family of transformer models as the host's code builds it.

    ``model_class``: ``module.Class`` of the host's model (how the family is recognised).
    ``block_lists``: ``(kind, attribute)`` per block list of the model, in execution order.
    ``attention_module``: the module whose global ``attention_function`` the blocks' attention
    calls as ``f(q, k, v, heads, [mask,] skip_reshape=True, ...)`` with q, k, v of shape (batch,
    heads, tokens, dim), or without skip_reshape as (batch, tokens, heads * dim) (Qwen-Image), the
    text tokens first in a joint sequence.
    ``names_blocks``: whether the model itself names the block under way in
    ``transformer_options["block_type"]`` / ``["block_index"]`` (Flux's ``forward_orig``); where
    not, the adapter marks the selected blocks running for the extra pass.
    ``caller``: for a family that names its blocks, the function in that module that makes the
    call; it must pass ``transformer_options`` (how ``check_host`` tells Neo's code from others').
    ``attention_part``: where a block attends more than once (Anima: self- then cross-attention),
    the submodule whose attention is the block's self-attention; the adapter marks that alone.
    ``image_only`` / ``text_only``: kinds whose attention holds image tokens / text tokens alone
    (a text-only block has nothing for ASAG and cannot be selected).
    ``side_chains``: kinds whose blocks run as a chain of their own beside the main one, their
    last output joining it later (NextDiT's caption refiners; asag/reuse.py keeps that output).
    ``replace_keys``: per kind, the host's ``patches_replace["dit"]`` key name, where it has one.
    ``skip_lists``: per kind, the model attribute listing blocks the model never runs (Chroma's
    pruned variants). ``text_padding``: the model attribute giving the multiple the text is
    padded to (Z-Image), if any.
    ``default_blocks``: what ``auto`` selects, and ``default_source`` why."""

    name: str
    model_class: str
    block_lists: tuple[tuple[str, str], ...]
    attention_module: str
    names_blocks: bool
    default_blocks: str
    default_source: str
    image_only: tuple[str, ...] = ()
    text_only: tuple[str, ...] = ()
    side_chains: tuple[str, ...] = ()
    replace_keys: Mapping[str, str] = field(default_factory=dict)
    skip_lists: Mapping[str, str] = field(default_factory=dict)
    text_padding: str | None = None
    attention_part: str | None = None
    caller: str | None = None

    def matches(self, diffusion_model) -> bool:
        cls = type(diffusion_model)
        return f"{cls.__module__}.{cls.__qualname__}" == self.model_class

    def check_host(self) -> None:
        """Raises ``ValueError`` where the host's code for this family does not pass the attention
        its ``transformer_options`` (lllyasviel's Forge has Flux's class with ``attention(q, k, v, pe)``)."""
        if self.caller is None:
            return
        caller = importlib.import_module(self.attention_module)
        for name in self.caller.split("."):
            caller = getattr(caller, name)
        if "transformer_options" not in inspect.signature(caller).parameters:
            raise ValueError(f"this host's {self.name} code does not tell its attention which block runs; "
                             f"ASAG on {self.name} needs Forge Neo")

    def kinds(self, diffusion_model) -> dict[str, int]:
        """Block count per selectable kind, in execution order."""
        return {kind: len(getattr(diffusion_model, attribute)) for kind, attribute in self.block_lists if kind not in self.text_only}

    def blocks(self, diffusion_model) -> list[tuple[tuple[str, int], object]]:
        """The blocks the model runs, in execution order, with their ``(kind, index)`` addresses."""
        listed = []
        for kind, attribute in self.block_lists:
            skipped = set(getattr(diffusion_model, self.skip_lists[kind], ()) or ()) if kind in self.skip_lists else set()
            listed += [((kind, i), block) for i, block in enumerate(getattr(diffusion_model, attribute)) if i not in skipped]
        return listed

    def resolve(self, spec: str, diffusion_model, field_name: str = "dit_layers") -> list[DitBlock]:
        """The selected blocks (``auto``: the family's default), raising ``ValueError`` naming the
        field, the item and what the model has; blocks the model never runs select nothing."""
        spec = self.default_blocks if spec.strip().lower() == AUTO else spec
        selected = resolve_blocks(spec, self.kinds(diffusion_model), field_name)
        run = {address for address, _ in self.blocks(diffusion_model)}
        kept = [block for block in selected if block.block_address in run]
        if not kept:
            raise ValueError(f"ASAG parameter '{field_name}': {spec!r} selects only blocks this {self.name} model skips")
        return kept

    def image_tokens(self, diffusion_model, kind: str, context_tokens: int) -> slice:
        """Where the image tokens are in a ``kind`` block's sequence, for a context of
        ``context_tokens``: all of it in an image-only block, else after the (padded) text."""
        if kind in self.image_only:
            return slice(0, None)
        multiple = getattr(diffusion_model, self.text_padding, None) if self.text_padding else None
        return slice(-(-context_tokens // multiple) * multiple if multiple else context_tokens, None)
