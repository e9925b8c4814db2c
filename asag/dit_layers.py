"""Which blocks of a transformer (DiT) image model ASAG perturbs: addresses and the spec language.

A transformer model is a chain of block lists, each of one kind, run one list after the other
(Flux and Chroma: 19 ``double`` blocks, then 38 ``single`` blocks). A block's address is
``(kind, index)``, the kind as the model names its list and the index in that list; a selected
block's self-attention gets the adversarial plan (``asag.joint`` on joint text-image attention).

Spec language (comma separated, case-insensitive):

    auto              the model family's default, fitted to the loaded model's depth
                      (asag/hosts/families/base.py ``DitFamily.auto_spec``)
    all               every block
    double, single    every block of that kind
    double 7-9        a range of blocks of that kind (``single 20`` for one)

The UNet spec language (``middle``, ``u0-2``) is ``asag.layers``; a model is addressed in one or
the other, by its architecture.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Mapping

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


def is_auto(spec: str) -> bool:
    return str(spec).strip().lower() == AUTO


def block_runs(blocks: Iterable[DitBlock]) -> list[tuple[str, int, int]]:
    """``blocks`` (in the order given) as runs of consecutive blocks of one kind: ``(kind, first, last)``."""
    runs: list[list] = []
    for block in blocks:
        if runs and runs[-1][0] == block.kind and runs[-1][2] == block.index - 1:
            runs[-1][2] = block.index
        else:
            runs.append([block.kind, block.index, block.index])
    return [tuple(run) for run in runs]


def spec_of(blocks: Iterable[DitBlock]) -> str:
    """The spec that selects ``blocks`` (in the order given): ``double 2, single 3-4``."""
    return ", ".join(f"{kind} {first}" if first == last else f"{kind} {first}-{last}" for kind, first, last in block_runs(blocks))


def block_ranges(kinds: Mapping[str, int]) -> str:
    """Every block of a model with ``kinds`` (count per kind), e.g. ``double 0-18, single 0-37``."""
    return ", ".join(f"{kind} 0-{count - 1}" if count > 1 else f"{kind} 0" for kind, count in kinds.items() if count)


def describe_blocks(kinds: Mapping[str, int]) -> str:
    """What a model has, e.g. ``this model has double 0-18, single 0-37``."""
    present = block_ranges(kinds)
    return f"this model has {present}" if present else "this model has no blocks ASAG can perturb"


def _items(spec: str) -> list[str]:
    return [" ".join(item.split()).lower() for item in str(spec).split(",") if item.strip()]


def resolve_blocks(spec: str, kinds: Mapping[str, int], field: str = "layers") -> list[DitBlock]:
    """The blocks ``spec`` selects, in execution order (``kinds`` in the model's order, each with
    its block count). Raises ``ValueError`` naming the ASAG field, the item and what the model has.
    ``auto`` is not resolved here: the caller substitutes what its family's ``auto_spec`` gives."""
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


def check_spec(spec: str, kinds: Iterable[str], field: str = "dit_layers") -> None:
    """Raises ``ValueError`` where ``spec`` is not a block list of this language for any model whose
    block kinds are among ``kinds``: the spelling, before a model is loaded (a model's own block
    counts are checked when it is)."""
    kinds = list(dict.fromkeys(kinds))
    items = _items(spec)
    if not items:
        raise ValueError(f"ASAG parameter '{field}': empty selection; use auto, all, a kind ({', '.join(kinds)}) or ranges "
                         f"such as 'double 7-9'")
    for item in items:
        match = _ITEM.match(item)
        if item == "all" or item == AUTO and len(items) == 1:
            continue
        if item == AUTO:
            raise ValueError(f"ASAG parameter '{field}': auto stands alone (the model's default), not in a list with other blocks")
        if not match or match["kind"] not in kinds:
            raise ValueError(f"ASAG parameter '{field}': cannot read {item!r}; use auto, all, a kind ({', '.join(kinds)}) or "
                             f"ranges such as 'double 7-9' (comma separated)")
        if match["last"] is not None and int(match["last"]) < int(match["first"]):
            raise ValueError(f"ASAG parameter '{field}': in {item!r}, range {match['first']}-{match['last']} runs backwards")
