"""The interface of a transformer (DiT) model family (see ``asag/hosts/families/__init__.py``)."""
from __future__ import annotations

import importlib
import inspect
import math
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Mapping

from ...dit_layers import DitBlock, block_runs, describe_blocks, is_auto, resolve_blocks, spec_of


@dataclass(frozen=True)
class NeoModel:
    """How Forge Neo builds a family (``backend/nn/``).

    ``model_class``: ``module.Class`` of Neo's model (how the family is recognised).
    ``attention_module``: the module whose global ``attention_function`` the blocks' attention
    calls as ``f(q, k, v, heads, [mask,] skip_reshape=True, ...)`` with q, k, v of shape (batch,
    heads, tokens, dim), or without skip_reshape as (batch, tokens, heads * dim) (Qwen-Image).
    ``names_blocks``: whether the model itself names the block under way in
    ``transformer_options["block_type"]`` / ``["block_index"]`` (Flux's ``forward_orig``); where
    not, the adapter marks the selected blocks running for the extra pass.
    ``caller``: for a family that names its blocks, the function in that module that makes the
    call; it must pass ``transformer_options`` (how ``DitFamily.check_host`` tells Neo's code from others')."""

    model_class: str
    attention_module: str
    names_blocks: bool
    caller: str | None = None


@dataclass(frozen=True)
class ComfyModel:
    """How ComfyUI builds a family (``comfy/ldm/``). Every attention call goes through
    ``comfy.ldm.modules.attention``'s backends, ``f(q, k, v, heads, [mask,] ..., transformer_options=)``
    wrapped by ``wrap_attn`` (since 2025-09): q, k, v as (batch, heads, tokens, dim) with
    ``skip_reshape=True``, else as (batch, tokens, heads * dim) (SD3's v as (batch, tokens, heads,
    dim)), the text one run before the image in a joint sequence.

    ``model_class``: ``module.Class`` of ComfyUI's model (how the family is recognised).
    ``block_types``: ComfyUI's ``transformer_options["block_type"]`` -> the family's kind, for the
    blocks ComfyUI names itself (``block_type`` / ``block_index``, since PRs #10841 Flux, #10843
    Chroma, #11227 Lumina 2 / Z-Image; 2025-11 and later), each attending once; blocks it does not
    name (every block before those PRs) ASAG marks itself: by the ``dit`` replacement
    (``DitFamily.replace_keys``) where the model has one, else by a forward on the block.
    ``image_first``: the block attribute that, where true, puts the image before the text in the
    block's joint sequence (Flux's ``flipped_img_txt``)."""

    model_class: str
    block_types: Mapping[str, str] = field(default_factory=dict)
    image_first: str | None = None


@dataclass(frozen=True)
class DitFamily:
    """One family of transformer models: its architecture, stated once, and what each host's code
    builds (``neo``, ``comfyui``: None where the host does not run the family).

    ``block_lists``: ``(kind, attribute)`` per block list of the model, in execution order (the
    attribute names are the same in both hosts, whose code comes from the same sources).
    ``attention_part``: where a block attends more than once (Anima: self- then cross-attention),
    the submodule whose attention is the block's self-attention; the adapters mark that alone.
    ``image_only`` / ``text_only``: kinds whose attention holds image tokens / text tokens alone
    (a text-only block has nothing for ASAG and cannot be selected).
    ``side_chains``: kinds whose blocks run as a chain of their own beside the main one, their
    last output joining it later (NextDiT's caption refiners; asag/reuse.py keeps that output).
    ``replace_keys``: per kind, the ``patches_replace["dit"]`` key name of ComfyUI's whole-block
    replacement, where the model has one (Neo's code honours the same keys).
    ``skip_lists``: per kind, the model attribute listing blocks the model never runs (Chroma's
    pruned variants). ``text_padding``: the model attribute giving the multiple the text is
    padded to (Z-Image), if any.
    ``default_blocks``: what ``auto`` selects on a model of ``reference_depths`` (the block count
    per kind of the model the default is stated for), and ``default_source`` why; on other depths
    ``auto_spec`` fits it to the model.
    ``checkpoint_keys``: tensor-name prefixes (the model's own prefix stripped) that together mark
    a checkpoint file of this family, as Neo's loader tells its models apart
    (``huggingface_guess/detection.py``); the block lists' names count its blocks
    (asag/hosts/model_view.py)."""

    name: str
    block_lists: tuple[tuple[str, str], ...]
    default_blocks: str
    default_source: str
    reference_depths: Mapping[str, int]
    neo: NeoModel | None = None
    comfyui: ComfyModel | None = None
    image_only: tuple[str, ...] = ()
    text_only: tuple[str, ...] = ()
    side_chains: tuple[str, ...] = ()
    replace_keys: Mapping[str, str] = field(default_factory=dict)
    skip_lists: Mapping[str, str] = field(default_factory=dict)
    text_padding: str | None = None
    attention_part: str | None = None
    checkpoint_keys: tuple[str, ...] = ()

    def __post_init__(self):
        resolve_blocks(self.default_blocks, self.reference_depths, f"{self.name} default_blocks")  # data checked at import

    def matches(self, diffusion_model) -> bool:
        """Whether ``diffusion_model`` is Neo's model of this family."""
        return self.neo is not None and class_name(diffusion_model) == self.neo.model_class

    def matches_comfyui(self, diffusion_model) -> bool:
        """Whether ``diffusion_model`` is ComfyUI's model of this family."""
        return self.comfyui is not None and class_name(diffusion_model) == self.comfyui.model_class

    def check_host(self) -> None:
        """Raises ``ValueError`` where Neo's code for this family does not pass the attention its
        ``transformer_options`` (lllyasviel's Forge has Flux's class with ``attention(q, k, v, pe)``)."""
        if self.neo.caller is None:
            return
        caller = importlib.import_module(self.neo.attention_module)
        for name in self.neo.caller.split("."):
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

    def auto_spec(self, kinds: Mapping[str, int]) -> str:
        """What ``auto`` selects on a model with ``kinds`` blocks (count per selectable kind), as a
        spec (``double 2, single 3-4``); empty where the model has no block of the default's kinds.

        The rule, per run of consecutive blocks ``first-last`` of one kind in ``default_blocks``,
        stated for ``reference`` blocks of that kind, on a model with ``count`` of them:

        * ``count >= reference``: the run as stated. The sources name block numbers, not depths
          (SkipLayerGuidanceDiT defaults to 7, 8, 9 on every model it patches), and keeping them keeps
          every documented default (Z-Image's 30 layers take Lumina 2's ``layers 7-9``).
        * ``0 < count < reference`` (Flux.2 Klein, pruned or distilled files): the same span of
          relative depth. With ``scale = count / reference``, the run covers
          ``width = max(1, round((last - first + 1) * scale))`` blocks (the same share of the list
          is perturbed, at least one), centred where the run's centre falls:
          ``start = round((first + last + 1) / 2 * scale - width / 2)``, clamped into
          ``0 .. count - width``; halves round up, in exact fractions.
        * ``count == 0``: nothing of that kind."""
        chosen = set()
        for kind, first, last in block_runs(resolve_blocks(self.default_blocks, self.reference_depths)):
            count, reference = kinds.get(kind, 0), self.reference_depths[kind]
            if count >= reference:
                chosen |= {DitBlock(kind, i) for i in range(first, last + 1)}
            elif count:
                scale = Fraction(count, reference)
                width = max(1, _round_half_up((last - first + 1) * scale))
                start = _round_half_up(Fraction(first + last + 1, 2) * scale - Fraction(width, 2))
                start = min(max(start, 0), count - width)
                chosen |= {DitBlock(kind, i) for i in range(start, start + width)}
        order = list(kinds)
        return spec_of(sorted(chosen, key=lambda block: (order.index(block.kind), block.index)))

    def resolve(self, spec: str, diffusion_model, field_name: str = "dit_layers") -> list[DitBlock]:
        """The selected blocks (``auto``: ``auto_spec`` for this model), raising ``ValueError``
        naming the field, the item and what the model has; blocks the model never runs select nothing."""
        kinds = self.kinds(diffusion_model)
        if is_auto(spec):
            spec = self.auto_spec(kinds)
            if not spec:
                raise ValueError(f"ASAG parameter '{field_name}': auto has no block to choose ({self.name}'s default is "
                                 f"{self.default_blocks}); {describe_blocks(kinds)}")
        selected = resolve_blocks(spec, kinds, field_name)
        run = {address for address, _ in self.blocks(diffusion_model)}
        kept = [block for block in selected if block.block_address in run]
        if not kept:
            raise ValueError(f"ASAG parameter '{field_name}': {spec!r} selects only blocks this {self.name} model skips")
        return kept

    def block_at(self, diffusion_model, kind: str, index: int):
        return getattr(diffusion_model, dict(self.block_lists)[kind])[index]

    def image_tokens(self, diffusion_model, kind: str, context_tokens: int) -> slice:
        """Where the image tokens are in a ``kind`` block's sequence, for a context of
        ``context_tokens``: all of it in an image-only block, else after the (padded) text."""
        if kind in self.image_only:
            return slice(0, None)
        multiple = getattr(diffusion_model, self.text_padding, None) if self.text_padding else None
        return slice(-(-context_tokens // multiple) * multiple if multiple else context_tokens, None)


def _round_half_up(value: Fraction) -> int:
    return math.floor(value + Fraction(1, 2))


def class_name(module) -> str:
    """``module.Class`` of ``module``'s class, as the hosts' model classes are named here."""
    cls = type(module)
    return f"{cls.__module__}.{cls.__qualname__}"
