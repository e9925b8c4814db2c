"""Reuse of the main pass in the extra pass: the blocks before the first perturbed one.

In a step where ASAG runs, its extra pass gives the UNet, for each row it uses, the same latent,
timestep, text and control as the main pass gave that row. Up to the first block that holds a
perturbed ``attn1`` layer, every block therefore computes exactly what it computed in the main
pass. ``BlockReuse`` records those blocks' outputs during the main pass, for the rows the extra
pass will use, and in the extra pass returns them instead of computing.

Only the blocks' calls are replaced, for one step: their ``forward`` on the instances, or, for
hosts that call blocks through a module-level function (``forward_timestep_embed`` of the
``ldm_patched`` UNet: reForge, old Forge, Forge Classic), that function (``HostBlocks``). Whatever a
host adds between blocks (ControlNet and T2I-Adapter residuals, Forge's ``apply_control``, block
modifiers, input/output block patches) runs in the extra pass as before, on the replayed outputs.

The same image as without reuse, or no reuse:

* A call is replayed only when every one of its rows finds a recorded row whose inputs to the
  first block are the same: latent and context exactly, the timestep embedding to within the
  rounding a matrix product makes in a batch of another size (``EMBEDDING_ROUNDING``, measured).
  One host sync per UNet call decides it.
* A replayed block still does what the host counts inside a block call (Forge advances
  ``transformer_index``: ``HostBlocks.skipped``). Where the host or another extension runs code of
  its own inside a replayed block (a hook or an instance forward on one of its modules, a Forge
  patch or modifier that acts inside blocks: ``HostBlocks.unreplayable``), the extra pass is
  computed in full, since such code may keep state or draw random numbers (reference-only's
  feature bank, ControlLLLite's call counter, Hypertile's tile draw). ``reason`` says why.
* Once one UNet call of the extra pass is computed in full, the rest of the pass is too: that
  call may have changed what the later ones read.

Memory: each recorded output is a copy of the selected rows (the host may add to a block's output
in place, and the main pass's tensors hold the other rows too). It is handed to the extra pass
once, without another copy, and dropped from the recording as soon as it has been handed out;
``peak_bytes`` is the most the recordings held in a step.

Recordings live for one step: ``stop()`` after the extra pass drops them. While the main pass
records, the UNet's own ``forward`` is guarded too, so an exception inside it (out of memory, say)
drops the recording and puts every forward back at once.

Blocks are addressed as hosts address them: ``("input", i)``, ``("middle", 0)``, ``("output", i)``
in a UNet, ``("double", i)``, ``("single", i)`` in a transformer (``HostBlocks.blocks`` lists them),
in execution order. A transformer's key is its model call's inputs (latent, timestep, context and
the other conditioning), compared exactly: its first block already gets them projected. Knows
blocks, not hosts: adapters say which rows to record and when, and what their blocks do besides
computing.
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
EMBEDDING = 1  # the one key argument compared to within rounding
# How far a row of the timestep embedding moves when its matrix products run in a batch of another
# size, in units of the epsilon of the precision they run in, relative to the row's largest value.
# Measured (time_embed + label_emb of SD1.5 and SDXL shapes, batches of 1 to 16, CPU): float32 7.2,
# float16 0.76, bfloat16 0; these are about twice that, and tests/core/test_reuse.py re-measures.
EMBEDDING_ROUNDING = {torch.float32: 16, torch.float16: 4, torch.bfloat16: 4}
TF32_EPSILON = 2.0 ** -10  # float32 products on CUDA with TF32 allowed (A1111 allows it)
WRAPPER_ATTR = "_asag_reuse_previous"  # on our block forwards: what was on the instance before
HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks")
OVERRIDES = ("forward", "_forward")  # instance attributes by which extensions replace a module's code


def _no_reason(args: tuple, kwargs: dict, replayed: list) -> str | None:
    return None


def _nothing(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
    pass


@dataclass(frozen=True)
class HostBlocks:
    """How a host calls a model's blocks, for what the core cannot see from the modules.

    ``blocks(model)``: the model's blocks in execution order with their addresses (a layer's
    ``block_address`` names the block holding it); a UNet's by default.
    ``block_function``: ``(namespace, name)`` of the function the host's UNet calls every block
    through as ``f(block, h, emb, context, ...)``; None: it calls ``block(h, emb, context, ...)``.
    ``model_key(args, kwargs)``: where the model's own call holds the inputs that decide every block
    (a transformer's first block gets them already projected, by products whose rounding depends on
    the batch): the key of that call, with the context third. None: the first block's
    ``(h, emb, context)`` are the key.
    ``unreplayable(args, kwargs, replayed)``: why a call (the first block's arguments, or the
    model's where ``model_key`` is set) cannot be replayed with the blocks at ``replayed`` addresses
    taken from the main pass, or None. ``skipped(block, args, kwargs)``: what a replayed block's
    call must still do to the host's state.
    ``live(replayed)`` and ``passthrough(args, kwargs)``: for a model whose blocks form chains (a
    transformer: each block's output is only the next one's input, no skip connections), the
    positions among ``replayed`` whose outputs later blocks still read (the last of each chain),
    and what every other replayed block returns instead of its recorded output: its own input,
    which the next replayed block ignores. Only the live outputs are recorded. None: a UNet,
    every output recorded and replayed."""

    blocks: Callable[[torch.nn.Module], list] = unet_blocks
    block_function: tuple | None = None
    model_key: Callable[[tuple, dict], list] | None = None
    live: Callable[[list], set] | None = None
    passthrough: Callable[[tuple, dict], object] | None = None
    unreplayable: Callable[[tuple, dict, list], str | None] = _no_reason
    skipped: Callable[[torch.nn.Module, tuple, dict], None] = _nothing


def blocks_before(diffusion_model, layers: Iterable[LayerAddress], host: HostBlocks = HostBlocks()) -> list[torch.nn.Module]:
    """The blocks that run before the first block holding one of ``layers``: those the extra pass
    can take from the main pass."""
    return [module for _, module in addressed_blocks_before(diffusion_model, layers, host)]


def addressed_blocks_before(diffusion_model, layers: Iterable, host: HostBlocks = HostBlocks()) -> list[tuple[tuple[str, int], torch.nn.Module]]:
    blocks = host.blocks(diffusion_model)
    order = {address: position for position, (address, _) in enumerate(blocks)}
    first = min((order[layer.block_address] for layer in layers), default=0)
    return blocks[:first]


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


def remove_leftovers(diffusion_model, host: HostBlocks = HostBlocks()) -> None:
    """Put back every forward (and block function) a ``BlockReuse`` left on this UNet (a step that
    ended in an exception between its main and extra passes, outside the UNet)."""
    for module in [diffusion_model, *(module for _, module in host.blocks(diffusion_model))]:
        _restore(module, "forward")
    if host.block_function is not None:
        _restore(*host.block_function)


def _restore(owner, name: str) -> None:
    current = vars(owner).get(name)
    if current is None or not hasattr(current, WRAPPER_ATTR):
        return
    previous = getattr(current, WRAPPER_ATTR)
    if previous is None:
        delattr(owner, name)  # the class's forward again
    else:
        setattr(owner, name, previous)


def embedding_slack(dtype: torch.dtype, device: torch.device) -> float:
    """The relative slack for an embedding row of ``dtype`` (see ``EMBEDDING_ROUNDING``)."""
    epsilon = torch.finfo(dtype).eps
    if dtype == torch.float32 and device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32:
        epsilon = TF32_EPSILON
    return EMBEDDING_ROUNDING.get(dtype, EMBEDDING_ROUNDING[torch.float32]) * epsilon


@dataclass
class _RecordedCall:
    """The recorded rows of one main-pass UNet call: their first-block inputs, and per block
    their outputs (copies: hosts may add to a block's output in place). A row is handed to one
    extra-pass call at most (``taken``); a block's output is dropped once all its rows are out."""

    rows: Sequence[int]  # which rows of the call
    key: list
    outputs: list = field(default_factory=list)
    taken: list = field(default_factory=list)  # per row
    handed_out: list = field(default_factory=list)  # per block: rows handed out

    def nbytes(self) -> int:
        tensors = [t for t in _flatten([self.key, self.outputs]) if isinstance(t, torch.Tensor)]
        return sum(t.numel() * t.element_size() for t in tensors)


@dataclass
class _Replay:
    """Where each row of one extra-pass UNet call comes from: runs of ``(record, start, stop)``."""

    runs: list

    def output(self, position: int) -> torch.Tensor:
        parts = []
        for record, start, stop in self.runs:
            recorded = record.outputs[position]
            parts.append(recorded if (start, stop) == (0, len(record.rows)) else recorded[start:stop])
            record.handed_out[position] += stop - start
            if record.handed_out[position] == len(record.rows):
                record.outputs[position] = None  # the extra pass holds it now; nothing else will
        return _cat_rows(parts) if len(parts) > 1 else parts[0]


def _cat_rows(parts: list):
    """Recorded rows joined: tensors, or tuples of them (a transformer block's ``(img, txt)``)."""
    if isinstance(parts[0], tuple):
        return tuple(_cat_rows(list(column)) for column in zip(*parts))
    return torch.cat(parts)


class BlockReuse:
    """One UNet's reusable blocks, recorded and replayed one step at a time:

        reuse.record(selector)   before the main pass: install, record the selected rows
        reuse.replay()           before the extra pass: return recorded outputs where rows match
        reuse.stop()             after it (or on any failure): uninstall, drop every recording;
                                 returns how many blocks the extra pass took from the main pass
                                 (0 with ``reason`` saying why, where it took none)
    """

    def __init__(self, diffusion_model, layers: Iterable, host: HostBlocks = HostBlocks()):
        self.unet = diffusion_model
        self.host = host
        addressed = addressed_blocks_before(diffusion_model, layers, host)
        self.addresses = [address for address, _ in addressed]
        self.blocks = [module for _, module in addressed]
        self._position = {id(module): position for position, module in enumerate(self.blocks)}
        self._live = set(range(len(self.blocks))) if host.live is None else host.live(self.addresses)
        self.total_blocks = len(host.blocks(diffusion_model))
        self.reason: str | None = None  # why the last extra pass was computed in full
        self.peak_bytes = 0  # the most the recordings held in one step
        self._select: RowSelector | None = None  # None: replaying
        self._records: list[_RecordedCall] = []
        self._current: _RecordedCall | _Replay | None = None  # the UNet call in progress, if it is ours
        self._replayed_calls = self._computed_calls = 0

    @property
    def active(self) -> bool:
        owners = [(module, "forward") for module in [self.unet, *self.blocks]]
        if self.host.block_function is not None:
            owners.append(self.host.block_function)
        return any(hasattr(vars(owner).get(name), WRAPPER_ATTR) for owner, name in owners)

    def record(self, select: RowSelector) -> None:
        self.stop()
        if not self.blocks and self.host.model_key is None:
            return  # nothing to record (a model keyed by its call still records its inputs: see repeated_as_recorded)
        self._select = select
        self.unet.forward = self._guard()
        if self.host.block_function is not None:
            namespace, name = self.host.block_function
            setattr(namespace, name, self._function_wrapper(getattr(namespace, name)))
        else:
            for position, module in enumerate(self.blocks):
                module.forward = self._forward_wrapper(position, module)

    def replay(self) -> None:
        self.peak_bytes = max(self.peak_bytes, sum(record.nbytes() for record in self._records))
        self._select, self._current = None, None
        self._replayed_calls = self._computed_calls = 0
        self.reason = self._foreign_code()

    def stop(self) -> int:
        replayed = self._select is None and self._replayed_calls > 0 and self._computed_calls == 0
        for module in [self.unet, *self.blocks]:
            _restore(module, "forward")
        if self.host.block_function is not None:
            _restore(*self.host.block_function)
        if self._select is None and self._computed_calls and self.reason is None:
            self.reason = "no recorded rows matched the extra pass's"
        self._select, self._records, self._current = None, [], None
        self._replayed_calls = self._computed_calls = 0
        return len(self.blocks) if replayed else 0

    def repeated_as_recorded(self, context: torch.Tensor) -> torch.Tensor:
        """``context`` (rows x tokens x width) repeated along its tokens as the main pass ran it,
        where it did: Forge and ComfyUI batch prompts of different lengths by repeating the shorter
        ones to a common length, which gives the same attention. ``context`` itself otherwise."""
        tokens = context.shape[1]
        for record in self._records:
            theirs = record.key[KEY_ARGUMENTS - 1]
            if not isinstance(theirs, torch.Tensor) or theirs.ndim != 3 or theirs.shape[2] != context.shape[2] \
                    or theirs.shape[1] <= tokens or theirs.shape[1] % tokens:
                continue
            repeated = context.repeat(1, theirs.shape[1] // tokens, 1)
            if bool(_part_matches(repeated.to(theirs), theirs, False).any(dim=1).all()):
                return repeated
        return context

    # ---- what runs inside the replayed blocks ----------------------------------------------------
    def _foreign_code(self) -> str | None:
        """Code of the host's or another extension's that a replayed block would run: hooks or
        instance forwards on its modules (the block's own hooks run anyway: its call still
        happens), or global module hooks."""
        if any(getattr(torch.nn.modules.module, f"_global{name}") for name in HOOK_DICTS):
            return "a global module hook is set"
        calls_forward = self.host.block_function is None
        for (part, index), block in zip(self.addresses, self.blocks):
            forward = vars(block).get("forward")
            if calls_forward and forward is not None and getattr(forward, WRAPPER_ATTR, None) is not None:
                return f"another extension replaced the forward of {part} block {index}"
            for name, module in block.named_modules():
                if module is not block and any(getattr(module, hooks) for hooks in HOOK_DICTS):
                    return f"a hook on {part} block {index} ({name})"
                if module is not block and any(attr in vars(module) for attr in OVERRIDES):
                    return f"another extension's code in {part} block {index} ({name})"
        return None

    # ---- the forwards ---------------------------------------------------------------------------
    def _guard(self):
        """The model's forward, dropping everything if the call raises; where the host's key is
        the model call's (``HostBlocks.model_key``), the call starts here."""
        unet, previous = self.unet, vars(self.unet).get("forward")  # ControlNet's hooked forward, say

        def forward(*args, **kwargs):
            if self.host.model_key is not None:
                self._current = self._start_call(self.host.model_key(args, kwargs), args, kwargs)
            try:
                return previous(*args, **kwargs) if previous is not None else type(unet).forward(unet, *args, **kwargs)
            except BaseException:
                self.stop()
                raise

        setattr(forward, WRAPPER_ATTR, previous)
        return forward

    def _forward_wrapper(self, position: int, module: torch.nn.Module):
        previous = vars(module).get("forward")  # another extension's instance forward, or None

        def forward(*args, **kwargs):
            # The class's forward is looked up now, as the host's attention optimiser may swap it.
            compute = previous if previous is not None else type(module).forward.__get__(module)
            return self._block_call(position, module, compute, args, kwargs)

        setattr(forward, WRAPPER_ATTR, previous)
        return forward

    def _function_wrapper(self, function):
        def call_block(module, *args, **kwargs):
            position = self._position.get(id(module))
            if position is None:
                return function(module, *args, **kwargs)
            return self._block_call(position, module, lambda *a, **k: function(module, *a, **k), args, kwargs)

        setattr(call_block, WRAPPER_ATTR, function)
        return call_block

    def _block_call(self, position: int, module, compute, args: tuple, kwargs: dict):
        if position == 0 and self.host.model_key is None:
            self._current = self._start_call(_key(args, kwargs), args, kwargs)
        call = self._current
        if isinstance(call, _Replay):
            self.host.skipped(module, args, kwargs)
            return call.output(position) if position in self._live else self.host.passthrough(args, kwargs)
        out = compute(*args, **kwargs)
        if call is not None:
            call.outputs.append(_rows(out, call.rows) if position in self._live else None)
            call.handed_out.append(0)
        return out

    def _start_call(self, key: list, args: tuple, kwargs: dict):
        rows = key[0].shape[0]
        if self._select is not None:
            selected = self._select(rows, args, kwargs)
            if not len(selected):
                return None
            record = _RecordedCall(selected, [_rows(part, selected) for part in key], taken=[False] * len(selected))
            self._records.append(record)
            return record
        replay = None
        if not self._computed_calls:  # once one call ran in full, so does the rest of the pass
            self.reason = self.reason or self.host.unreplayable(args, kwargs, self.addresses)
            replay = None if self.reason else self._find(key, rows)
        if replay is None:
            self._computed_calls += 1
        else:
            self._replayed_calls += 1
        return replay

    def _find(self, key: list, rows: int) -> _Replay | None:
        """Each row's recorded twin, as runs of consecutive recorded rows; None if one is missing.
        The comparisons stay on the device; one transfer brings the verdicts."""
        candidates, verdicts = [], []
        for record in self._records:
            if len(record.outputs) != len(self.blocks):
                continue
            match = _matches(key, record.key, rows, len(record.rows))
            if match is not False:
                candidates.append(record)
                verdicts.append(match if isinstance(match, torch.Tensor) else torch.ones(rows, len(record.rows), dtype=torch.bool))
        if not candidates:
            return None
        device = verdicts[0].device
        table = _to_host(torch.cat([verdict.to(device) for verdict in verdicts], dim=1))
        sources = [(record, i) for record in candidates for i in range(len(record.rows))]
        chosen, runs = set(), []
        for row in range(rows):
            pick = next((column for column, ok in enumerate(table[row])
                         if ok and column not in chosen and not sources[column][0].taken[sources[column][1]]), None)
            if pick is None:
                return None
            chosen.add(pick)
            record, i = sources[pick]
            if runs and runs[-1][0] is record and runs[-1][2] == i:
                runs[-1][2] = i + 1
            else:
                runs.append([record, i, i + 1])
        for column in chosen:
            record, i = sources[column]
            record.taken[i] = True
        return _Replay([tuple(run) for run in runs])


def _to_host(verdicts: torch.Tensor) -> list:
    """The one device-to-host read of a UNet call's match."""
    return verdicts.cpu().tolist()


def _key(args: tuple, kwargs: dict) -> list:
    """The first block's (h, emb, context)."""
    key = list(args[:KEY_ARGUMENTS])
    if len(key) < KEY_ARGUMENTS:
        key.append(kwargs.get("context"))
    return key


def _flatten(value):
    if isinstance(value, (list, tuple)):
        for part in value:
            yield from _flatten(part)
    else:
        yield value


def _rows(value, rows: Sequence[int]):
    """``value`` restricted to ``rows``, copied; tensors, lists of tensors (contexts) or None."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        return type(value)(_rows(part, rows) for part in value)
    if isinstance(rows, range) and rows.step == 1:
        return value[rows.start:rows.stop].clone()
    return value[list(rows)]


def _matches(mine: list, theirs: list, rows: int, recorded: int):
    """Which rows of ``mine`` equal which recorded rows of ``theirs``: a ``rows x recorded`` bool
    tensor on the device, True (all) or False (none: shapes, dtypes or structure differ)."""
    return _all(_part_matches(a, b, position == EMBEDDING) for position, (a, b) in enumerate(zip(mine, theirs)))


def _all(verdicts):
    """The conjunction of verdicts that are True, False or bool tensors; False ends it at once."""
    combined = True
    for verdict in verdicts:
        if verdict is False:
            return False
        if verdict is not True:
            combined = verdict if combined is True else combined & verdict
    return combined


def _part_matches(a, b, slack: bool):
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, (list, tuple)):
        if not isinstance(b, (list, tuple)) or len(a) != len(b):
            return False
        return _all(_part_matches(x, y, slack) for x, y in zip(a, b))
    if not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor):
        return False
    if a.shape[1:] != b.shape[1:] or a.dtype != b.dtype or a.device != b.device:
        return False
    mine, theirs = a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)  # rows x values
    # One row of ``mine`` against every recorded row at a time: what a comparison allocates is the
    # size of the recording, not rows x recorded x values (batch squared).
    if not slack or not a.is_floating_point():
        return torch.stack([(theirs == row).all(dim=1) for row in mine])
    tolerance = embedding_slack(a.dtype, a.device) * theirs.abs().amax(dim=1)
    return torch.stack([(theirs - row).abs().amax(dim=1) <= tolerance for row in mine])
