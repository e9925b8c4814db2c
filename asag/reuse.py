"""Reuse of the main pass in the extra pass: the blocks before the first perturbed one.

In a step where ASAG runs, its extra pass gives the UNet, for each row it uses, the same latent,
timestep, text and control as the main pass gave that row. Up to the first block that holds a
perturbed ``attn1`` layer, every block therefore computes exactly what it computed in the main
pass. ``BlockReuse`` records those blocks' outputs during the main pass, for the rows the extra
pass will use, and in the extra pass returns them instead of computing.

Only the blocks' own ``forward`` is replaced, on the instances and for one step: whatever a host
adds between blocks (ControlNet and T2I-Adapter residuals, Forge's ``apply_control``, block
modifiers, input/output block patches) runs in the extra pass as before, on the replayed outputs.

Recordings live for one step: ``stop()`` after the extra pass drops them. While the main pass
records, the UNet's own ``forward`` is guarded too, so an exception inside it (out of memory, say)
drops the recording and puts every forward back at once.

Never wrong: an extra-pass UNet call is replayed only when every one of its rows finds a recorded
row whose inputs to the first block (latent, embedding, context) are the same; anything else
(rows that were not recorded, another model, a host that calls the UNet some other way) runs in
full. The embedding is compared to within rounding, since a matrix product may round a row
differently in batches of other sizes.

Blocks are addressed as hosts address them: ``("input", i)``, ``("middle", 0)``, ``("output", i)``,
in execution order. Knows UNet blocks, not hosts: adapters say which rows to record and when.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import torch

from .layers import LayerAddress, unet_blocks

# Selects, for one main-pass UNet call, the rows to record: ``select(rows, args, kwargs)`` gets the
# call's row count and the first block's arguments; returns row indices (a range or a list).
RowSelector = Callable[[int, tuple, dict], Sequence[int]]

# The first block's arguments are (h, emb, context, ...): the inputs that decide every later one.
KEY_ARGUMENTS = 3
# Rounding slack for the embedding, in units of its dtype's epsilon, relative to its magnitude.
ROUNDING_EPSILONS = 16
WRAPPER_ATTR = "_asag_reuse_previous"  # on our block forwards: what was on the instance before


def blocks_before(diffusion_model, layers: Iterable[LayerAddress]) -> list[torch.nn.Module]:
    """The blocks that run before the first block holding one of ``layers``: those the extra pass
    can take from the main pass."""
    blocks = unet_blocks(diffusion_model)
    order = {address: position for position, (address, _) in enumerate(blocks)}
    first = min((order[(layer.part, layer.block)] for layer in layers), default=0)
    return [module for _, module in blocks[:first]]


def first_rows(count: int) -> RowSelector:
    """The first ``count`` rows of the main pass, counted over its UNet calls in order: A1111's
    layout (cond rows first), whether the host runs it in one call or in chunks."""
    seen = [0]

    def select(rows: int, args: tuple, kwargs: dict) -> range:
        start = seen[0]
        seen[0] += rows
        return range(max(0, min(rows, count - start)))
    return select


def every_row(rows: int, args: tuple, kwargs: dict) -> range:
    return range(rows)


def remove_leftovers(diffusion_model) -> None:
    """Put back every forward a ``BlockReuse`` left on this UNet (a step that ended in an exception
    between its main and extra passes, outside the UNet)."""
    for module in [diffusion_model, *(module for _, module in unet_blocks(diffusion_model))]:
        _restore(module)


def _restore(module: torch.nn.Module) -> None:
    forward = module.__dict__.get("forward")
    if forward is None or not hasattr(forward, WRAPPER_ATTR):
        return
    previous = getattr(forward, WRAPPER_ATTR)
    if previous is None:
        del module.forward  # the class's forward again
    else:
        module.forward = previous


@dataclass
class _RecordedCall:
    """The recorded rows of one main-pass UNet call: their first-block inputs, and per block
    their outputs (copies: hosts may add to a block's output in place)."""

    rows: Sequence[int]  # which rows of the call
    key: list
    outputs: list = field(default_factory=list)


@dataclass
class _Replay:
    """Where each row of one extra-pass UNet call comes from: runs of ``(record, start, stop)``."""

    runs: list

    def output(self, position: int) -> torch.Tensor:
        parts = [record.outputs[position][start:stop] for record, start, stop in self.runs]
        return torch.cat(parts) if len(parts) > 1 else parts[0].clone()


class BlockReuse:
    """One UNet's reusable blocks, recorded and replayed one step at a time:

        reuse.record(selector)   before the main pass: install, record the selected rows
        reuse.replay()           before the extra pass: return recorded outputs where rows match
        reuse.stop()             after it (or on any failure): uninstall, drop every recording;
                                 returns how many blocks the extra pass took from the main pass
    """

    def __init__(self, diffusion_model, layers: Iterable[LayerAddress]):
        self.unet = diffusion_model
        self.blocks = blocks_before(diffusion_model, layers)
        self.total_blocks = len(unet_blocks(diffusion_model))
        self._select: RowSelector | None = None  # None: replaying
        self._records: list[_RecordedCall] = []
        self._current: _RecordedCall | _Replay | None = None  # the UNet call in progress, if it is ours
        self._replayed_calls = self._computed_calls = 0

    @property
    def active(self) -> bool:
        return any(hasattr(module.__dict__.get("forward"), WRAPPER_ATTR) for module in [self.unet, *self.blocks])

    def record(self, select: RowSelector) -> None:
        self.stop()
        if not self.blocks:
            return
        self._select = select
        self.unet.forward = self._guard()
        for position, module in enumerate(self.blocks):
            module.forward = self._wrapper(position, module)

    def replay(self) -> None:
        self._select, self._current = None, None
        self._replayed_calls = self._computed_calls = 0

    def stop(self) -> int:
        replayed = self._select is None and self._replayed_calls > 0 and self._computed_calls == 0
        for module in [self.unet, *self.blocks]:
            _restore(module)
        self._select, self._records, self._current = None, [], None
        self._replayed_calls = self._computed_calls = 0
        return len(self.blocks) if replayed else 0

    # ---- the forwards ---------------------------------------------------------------------------
    def _guard(self):
        """The UNet's forward, dropping everything if the call raises."""
        unet, previous = self.unet, self.unet.__dict__.get("forward")  # ControlNet's hooked forward, say

        def forward(*args, **kwargs):
            try:
                return previous(*args, **kwargs) if previous is not None else type(unet).forward(unet, *args, **kwargs)
            except BaseException:
                self.stop()
                raise

        setattr(forward, WRAPPER_ATTR, previous)
        return forward

    def _wrapper(self, position: int, module: torch.nn.Module):
        previous = module.__dict__.get("forward")  # another extension's instance forward, or None

        def forward(*args, **kwargs):
            if position == 0:
                self._current = self._start_call(args, kwargs)
            call = self._current
            if isinstance(call, _Replay):
                return call.output(position)
            # The class's forward is looked up now, as the host's attention optimiser may swap it.
            out = previous(*args, **kwargs) if previous is not None else type(module).forward(module, *args, **kwargs)
            if call is not None:
                call.outputs.append(_rows(out, call.rows))
            return out

        setattr(forward, WRAPPER_ATTR, previous)
        return forward

    def _start_call(self, args: tuple, kwargs: dict):
        key = _key(args, kwargs)
        rows = key[0].shape[0]
        if self._select is not None:
            selected = self._select(rows, args, kwargs)
            if not len(selected):
                return None
            record = _RecordedCall(selected, [_rows(part, selected) for part in key])
            self._records.append(record)
            return record
        replay = self._find(key, rows)
        if replay is None:
            self._computed_calls += 1
        else:
            self._replayed_calls += 1
        return replay

    def _find(self, key: list, rows: int) -> _Replay | None:
        """Each row's recorded twin, as runs of consecutive recorded rows; None if one is missing."""
        complete = [record for record in self._records if len(record.outputs) == len(self.blocks)]
        runs = []
        for row in range(rows):
            source = next(((record, i) for record in complete for i in range(len(record.key[0]))
                           if all(_same(mine, row, theirs, i) for mine, theirs in zip(key, record.key))), None)
            if source is None:
                return None
            record, i = source
            if runs and runs[-1][0] is record and runs[-1][2] == i:
                runs[-1][2] = i + 1
            else:
                runs.append([record, i, i + 1])
        return _Replay([tuple(run) for run in runs])


def _key(args: tuple, kwargs: dict) -> list:
    """The first block's (h, emb, context)."""
    key = list(args[:KEY_ARGUMENTS])
    if len(key) < KEY_ARGUMENTS:
        key.append(kwargs.get("context"))
    return key


def _rows(value, rows: Sequence[int]):
    """``value`` restricted to ``rows``, copied; tensors, lists of tensors (contexts) or None."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        return type(value)(_rows(part, rows) for part in value)
    if isinstance(rows, range) and rows.step == 1:
        return value[rows.start:rows.stop].clone()
    return value[list(rows)]


def _same(mine, row: int, theirs, i: int) -> bool:
    """Whether row ``row`` of ``mine`` equals row ``i`` of ``theirs`` (to within rounding)."""
    if mine is None or theirs is None:
        return mine is None and theirs is None
    if isinstance(mine, (list, tuple)):
        return len(mine) == len(theirs) and all(_same(a, row, b, i) for a, b in zip(mine, theirs))
    a, b = mine[row], theirs[i]
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if torch.equal(a, b):
        return True
    if not a.is_floating_point():
        return False
    slack = ROUNDING_EPSILONS * torch.finfo(a.dtype).eps * float(b.abs().max())
    return float((a - b).abs().max()) <= slack
