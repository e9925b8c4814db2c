"""Which blocks of a transformer (DiT) image model ASAG perturbs: addresses and the spec language.

A transformer model is a chain of block lists, each of one kind, run one list after the other
(Flux and Chroma: 19 ``double`` blocks, then 38 ``single`` blocks). A block's address is
``(kind, index)``, the kind as the model names its list and the index in that list; a selected
block's self-attention gets the adversarial plan (``asag.joint`` on joint text-image attention).

Spec language (comma separated, case-insensitive):

    auto              the model family's default (chosen by the host adapter)
    all               every block
    double, single    every block of that kind
    double 7-9        a range of blocks of that kind (``single 20`` for one)

The UNet spec language (``middle``, ``u0-2``) is ``asag.layers``; a model is addressed in one or
the other, by its architecture.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping

AUTO = "auto"
_ITEM = re.compile(r"^(?P<kind>[a-z_]+)(?:\s*(?P<first>\d+)(?:\s*-\s*(?P<last>\d+))?)?$")


@dataclass(frozen=True)
class DitBlock:
    kind: str
    index: int

    @property
    def block_address(self) -> tuple[str, int]:
        """The address asag/reuse.py orders blocks by: the block itself."""
        return (self.kind, self.index)

    def __str__(self) -> str:
        return f"{self.kind} {self.index}"


def describe_blocks(kinds: Mapping[str, int]) -> str:
    """What a model has, e.g. ``this model has double 0-18, single 0-37``."""
    present = [f"{kind} 0-{count - 1}" if count > 1 else f"{kind} 0" for kind, count in kinds.items() if count]
    return "this model has " + ", ".join(present) if present else "this model has no blocks ASAG can perturb"


def _items(spec: str) -> list[str]:
    return [" ".join(item.split()).lower() for item in str(spec).split(",") if item.strip()]


def resolve_blocks(spec: str, kinds: Mapping[str, int], field: str = "layers") -> list[DitBlock]:
    """The blocks ``spec`` selects, in execution order (``kinds`` in the model's order, each with
    its block count). Raises ``ValueError`` naming the ASAG field, the item and what the model has.
    ``auto`` is not resolved here: the caller substitutes its family's default first."""
    order = list(kinds)
    items = _items(spec)
    if not items:
        raise ValueError(f"ASAG parameter '{field}': empty selection; {describe_blocks(kinds)}")
    selected: set[DitBlock] = set()
    for item in items:
        match = _ITEM.match(item)
        if item == "all":
            chosen = {DitBlock(kind, i) for kind, count in kinds.items() for i in range(count)}
        elif not match or match["kind"] not in kinds:
            raise ValueError(f"ASAG parameter '{field}': cannot read {item!r}; use all, "
                             f"{', '.join(order)}, or a range such as '{order[0]} 0-2' (comma separated); "
                             f"{describe_blocks(kinds)}")
        else:
            kind, count = match["kind"], kinds[match["kind"]]
            if match["first"] is None:
                indices = range(count)
            else:
                first, last = int(match["first"]), int(match["last"] if match["last"] is not None else match["first"])
                if last < first:
                    raise ValueError(f"ASAG parameter '{field}': in {item!r}, range {first}-{last} runs backwards; {describe_blocks(kinds)}")
                if last >= count:
                    raise ValueError(f"ASAG parameter '{field}': {item!r} asks for a block this model lacks; {describe_blocks(kinds)}")
                indices = range(first, last + 1)
            chosen = {DitBlock(kind, i) for i in indices}
        if not chosen:
            raise ValueError(f"ASAG parameter '{field}': {item!r} selects no block; {describe_blocks(kinds)}")
        selected |= chosen
    return sorted(selected, key=lambda block: (order.index(block.kind), block.index))
