"""Which self-attention (``attn1``) layers ASAG perturbs: structural addresses, the spec
language users type, and its resolution against the loaded UNet.

A layer's address is ``(part, block, transformer)``: ``part`` is ``input``, ``middle`` or
``output``; ``block`` is the index in ``input_blocks`` / ``output_blocks`` (0 for the middle
block), and ``transformer`` the index in the block's ``transformer_blocks``. These are the
ldm/sgm module names (``input_blocks.7.1.transformer_blocks.0.attn1``) and the keys of
ComfyUI-style patchers (``("input", 7, 0)``).

Spec language (comma separated, case-insensitive):

    auto                   the documented default, ``middle`` (the middle block's self-attention,
                           where PAG and SEG perturb by default)
    all                    every attn1 layer
    input, middle, output  every layer of that part
    d1, m0, u2             one block, numbered among the part's blocks that have attention
                           (d = input/down, m = middle, u = output/up)
    u0-2                   a range of blocks
    d1.0, u0-2.1-3         transformer block(s) inside the block(s)
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable

PARTS = ("input", "middle", "output")
_PART_LETTER = {"d": "input", "m": "middle", "u": "output"}
_LETTER_OF = {part: letter for letter, part in _PART_LETTER.items()}

_MODULE_NAME = re.compile(
    r"^(?:(?P<part>input|output)_blocks\.(?P<block>\d+)|middle_block)\.\d+\.transformer_blocks\.(?P<tf>\d+)\.attn1$"
)
_RANGE = r"(\d+)(?:-(\d+))?"
AUTO = "auto"
AUTO_LAYERS = "middle"  # the part ``auto`` selects: PAG's and SEG's default block (README, "Which layers")
# A UNet with every block a spelling can name (SDXL has 9 input and 9 output blocks, up to 10
# transformer blocks deep): ``check_spec`` reads a spec against it, before any model is loaded.
_ANY_UNET_BLOCKS = 12
_ANY_UNET_TRANSFORMERS = 10
_ITEM = re.compile(rf"^(?P<letter>[dmu])(?:{_RANGE})?(?:\.{_RANGE})?$")


@dataclass(frozen=True, order=True)
class LayerAddress:
    part: str
    block: int
    transformer: int

    @property
    def patch_key(self) -> tuple[str, int, int]:
        """The ComfyUI/Forge ``patches_replace`` key."""
        return (self.part, self.block, self.transformer)

    @property
    def block_address(self) -> tuple[str, int]:
        """The address of the UNet block holding the layer (asag/reuse.py orders blocks by it)."""
        return (self.part, self.block)


def address_of(module_name: str) -> LayerAddress | None:
    """The address of an ``attn1`` module from its name relative to the UNet, or None."""
    match = _MODULE_NAME.match(module_name)
    if not match:
        return None
    part = match["part"] or "middle"
    return LayerAddress(part, int(match["block"] or 0), int(match["tf"]))


def self_attention_modules(diffusion_model) -> dict[LayerAddress, object]:
    """Every attn1 module of an ldm/sgm-style UNet, by address."""
    found = {}
    for name, module in diffusion_model.named_modules():
        address = address_of(name)
        if address is not None:
            found[address] = module
    return dict(sorted(found.items()))


def unet_blocks(diffusion_model) -> list[tuple[tuple[str, int], object]]:
    """The UNet's blocks in execution order, with their ``(part, block)`` addresses (as hosts
    address them: ``("input", i)``, ``("middle", 0)``, ``("output", i)``)."""
    return ([(("input", i), m) for i, m in enumerate(diffusion_model.input_blocks)]
            + [(("middle", 0), diffusion_model.middle_block)]
            + [(("output", i), m) for i, m in enumerate(diffusion_model.output_blocks)])


def attention_tokens(diffusion_model, layers: Iterable[LayerAddress], height: int, width: int) -> dict[LayerAddress, int]:
    """How many tokens each of ``layers`` attends over for a latent of ``height x width``: the
    size of the feature map its block works at. Input blocks halve it after a downsampling layer
    (stride-2 convolution: rounding up); an output block works at the size of the skip connection
    it concatenates."""
    sizes, skips, size = {}, [], (height, width)
    for (part, index), block in unet_blocks(diffusion_model):
        if part == "output":
            size = skips.pop()
        sizes[(part, index)] = size
        if any(type(module).__name__ == "Downsample" for module in block.children()):
            size = ((size[0] + 1) // 2, (size[1] + 1) // 2)
        if part == "input":
            skips.append(size)
    return {layer: sizes[(layer.part, layer.block)][0] * sizes[(layer.part, layer.block)][1] for layer in layers}


def single_token_only(diffusion_model, layers: Iterable[LayerAddress], height: int, width: int) -> bool:
    """Whether every one of ``layers`` attends over a single token at this latent size: there any
    attention, ASAG's plan included, is the identity, and the perturbation changes nothing."""
    return all(tokens <= 1 for tokens in attention_tokens(diffusion_model, layers, height, width).values())


def _blocks_by_part(available: Iterable[LayerAddress]) -> dict[str, list[int]]:
    """Per part, the UNet block indices that have attention, in order: ordinal i is ``list[i]``."""
    blocks: dict[str, set[int]] = {part: set() for part in PARTS}
    for address in available:
        blocks[address.part].add(address.block)
    return {part: sorted(indices) for part, indices in blocks.items()}


def describe_available(available: Iterable[LayerAddress]) -> str:
    """Human-readable inventory, e.g. ``d0 = input_blocks.1 (1 transformer block), ..., m0 = middle_block (1)``."""
    available = sorted(available)
    if not available:
        return "this model has no self-attention layers that ASAG can perturb"
    counts: dict[tuple[str, int], int] = {}
    for address in available:
        counts[(address.part, address.block)] = counts.get((address.part, address.block), 0) + 1
    entries = []
    for part, indices in _blocks_by_part(available).items():
        for ordinal, block in enumerate(indices):
            where = "middle_block" if part == "middle" else f"{part}_blocks.{block}"
            entries.append(f"{_LETTER_OF[part]}{ordinal} = {where} ({counts[(part, block)]})")
    return "this model has (block = UNet block (transformer blocks)): " + ", ".join(entries)


def _span(low: str | None, high: str | None) -> range | None:
    if low is None:
        return None
    first, last = int(low), int(high if high is not None else low)
    if last < first:
        raise ValueError(f"range {first}-{last} runs backwards")
    return range(first, last + 1)


def resolve_layers(spec: str, available: Iterable[LayerAddress]) -> list[LayerAddress]:
    """The addresses ``spec`` selects among ``available``, sorted. Raises ``ValueError`` naming the
    offending item and listing what the model has when an item is malformed or selects nothing."""
    available = sorted(set(available))
    blocks = _blocks_by_part(available)
    items = [item.strip().lower() for item in str(spec).split(",")]
    if not any(items):
        raise ValueError(f"ASAG parameter 'layers': empty selection; {describe_available(available)}")
    selected: set[LayerAddress] = set()
    for item in items:
        if not item:
            continue
        if item == "all":
            chosen = set(available)
        elif item in PARTS or item == AUTO:
            part = AUTO_LAYERS if item == AUTO else item
            chosen = {a for a in available if a.part == part}
        else:
            match = _ITEM.match(item)
            if not match:
                raise ValueError(
                    f"ASAG parameter 'layers': cannot read {item!r}; use auto, all, input, middle, output, or blocks "
                    f"like m0, d1, d1.0, u0-2 (comma separated). {describe_available(available)}"
                )
            part = _PART_LETTER[match["letter"]]
            try:
                ordinals = _span(match[2], match[3])
                transformers = _span(match[4], match[5])
            except ValueError as err:
                raise ValueError(f"ASAG parameter 'layers': in {item!r}, {err}; {describe_available(available)}") from None
            part_blocks = blocks[part]
            if ordinals is not None and ordinals.stop > len(part_blocks):
                raise ValueError(f"ASAG parameter 'layers': {item!r} asks for a block this model lacks; {describe_available(available)}")
            wanted_blocks = set(part_blocks) if ordinals is None else {part_blocks[i] for i in ordinals}
            chosen = {
                a for a in available
                if a.part == part and a.block in wanted_blocks and (transformers is None or a.transformer in transformers)
            }
        if not chosen:
            raise ValueError(f"ASAG parameter 'layers': {item!r} selects no layer; {describe_available(available)}")
        selected |= chosen
    return sorted(selected)


def check_spec(spec: str) -> None:
    """Raises ``ValueError`` where ``spec`` is not a layer list of this language, whatever the
    model (the spelling, before a model is loaded: a UNet's own blocks are checked when it is)."""
    any_unet = [LayerAddress(part, block, transformer)
                for part, blocks in (("input", _ANY_UNET_BLOCKS), ("middle", 1), ("output", _ANY_UNET_BLOCKS))
                for block in range(blocks) for transformer in range(_ANY_UNET_TRANSFORMERS)]
    try:
        resolve_layers(spec, any_unet)
    except ValueError:
        # resolve_layers' message lists the stand-in UNet's blocks, which would mislead here.
        raise ValueError(f"ASAG parameter 'layers': cannot read {spec!r}; use auto, all, input, middle, output, or blocks "
                         "like m0, d1, d1.0, u0-2 (comma separated)") from None
