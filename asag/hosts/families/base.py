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
    ``replace_keys``: per kind, the host's ``patches_replace["dit"]`` key name for such a block.
    ``attention_module``: the module whose ``attention(q, k, v, pe, mask, transformer_options)``
    the blocks call, and whose global ``attention_function`` that calls as ``f(q, k, v, heads, skip_reshape=True, mask=..., transformer_options=...)``
    with ``q`` of shape (batch, heads, tokens, dim) and ``transformer_options["block_type"]`` /
    ``["block_index"]`` naming the block; the text tokens come first.
    ``skip_lists``: per kind, the model attribute listing blocks the model never runs (Chroma's
    pruned variants).
    ``default_blocks``: what ``auto`` selects, and ``default_source`` why."""

    name: str
    model_class: str
    block_lists: tuple[tuple[str, str], ...]
    replace_keys: Mapping[str, str]
    attention_module: str
    default_blocks: str
    default_source: str
    skip_lists: Mapping[str, str] = field(default_factory=dict)

    def matches(self, diffusion_model) -> bool:
        cls = type(diffusion_model)
        return f"{cls.__module__}.{cls.__qualname__}" == self.model_class

    def check_host(self) -> None:
        """Raises ``ValueError`` where the host's code for this family does not tell the attention
        which block runs (lllyasviel's Forge has the same Flux class with ``attention(q, k, v, pe)``)."""
        module = importlib.import_module(self.attention_module)
        if "transformer_options" not in inspect.signature(module.attention).parameters:
            raise ValueError(f"this host's {self.name} code does not tell its attention which block runs; "
                             f"ASAG on {self.name} needs Forge Neo")

    def kinds(self, diffusion_model) -> dict[str, int]:
        """Block count per kind, in execution order."""
        return {kind: len(getattr(diffusion_model, attribute)) for kind, attribute in self.block_lists}

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

    def image_tokens(self, text_tokens: int) -> slice:
        """Where the image tokens are in the joint sequence: after the text."""
        return slice(text_tokens, None)
