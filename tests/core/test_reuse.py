"""Recording and replaying UNet blocks (asag/reuse.py) on a real tiny ldm UNet, without a host."""
import pytest
import torch

from asag.layers import resolve_layers, self_attention_modules
from ldm.modules.diffusionmodules.util import timestep_embedding

from asag.reuse import BlockReuse, HostBlocks, blocks_before, embedding_slack, every_row, first_rows, remove_leftovers, unet_blocks
from tests.hosts.block_counter import BlockCounter
from tests.models import CONTEXT_DIM, tiny_unet


@pytest.fixture(scope="module")
def unet():
    return tiny_unet("sd1")


def inputs(rows=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(rows, 4, 16, 16, generator=g), torch.tensor([500.0] * rows),
            torch.randn(rows, 7, CONTEXT_DIM, generator=g))


def layers(unet, spec):
    return resolve_layers(spec, self_attention_modules(unet))


class BlockCalls(BlockCounter):
    """How many of the UNet's blocks really compute (tests/hosts/block_counter.py)."""

    def __init__(self, unet):
        super().__init__([unet])

    @property
    def count(self):
        return self.block_computations


# SD1-like tiny UNet: input_blocks 0..8 (attention in 1, 2, 4, 5, 7, 8), middle, output_blocks 0..8.
@pytest.mark.parametrize("spec,reused", [("middle", 9), ("u0-2", 10), ("u6-8", 16), ("d1,m0", 2), ("all", 1), ("d0", 1)])
def test_the_blocks_before_the_first_selected_one_are_reusable(unet, spec, reused):
    assert len(blocks_before(unet, layers(unet, spec))) == reused
    assert [a for a, _ in unet_blocks(unet)][:2] == [("input", 0), ("input", 1)]


@pytest.mark.parametrize("spec", ["middle", "u0-2", "u6-8", "d1,m0"])
def test_replayed_pass_equals_the_computed_one_and_skips_exactly_the_reused_blocks(unet, spec):
    x, t, context = inputs()
    reuse = BlockReuse(unet, layers(unet, spec))
    calls = BlockCalls(unet)
    try:
        with torch.no_grad():
            computed = unet(x[:1], t[:1], context=context[:1])  # the extra pass without reuse
            full = calls.count
            reuse.record(first_rows(1))
            main = unet(x, t, context=context)  # the main pass: two rows, the first recorded
            reuse.replay()
            before = calls.count
            replayed = unet(x[:1], t[:1], context=context[:1])
            skipped = full - (calls.count - before)
            assert reuse.stop() == len(reuse.blocks)
    finally:
        calls.close()
    assert skipped == len(reuse.blocks)
    torch.testing.assert_close(replayed, computed, atol=1e-5, rtol=1e-5)
    assert (main[:1] - computed).abs().max() < 1e-4  # same row, batched differently
    assert not reuse.active


def test_rows_that_were_not_recorded_are_computed(unet):
    x, t, context = inputs()
    reuse = BlockReuse(unet, layers(unet, "middle"))
    with torch.no_grad():
        reuse.record(first_rows(1))
        unet(x, t, context=context)
        reuse.replay()
        second_row = unet(x[1:], t[1:], context=context[1:])  # recorded? no: only row 0 was
        other_time = unet(x[:1], t[:1] - 100, context=context[:1])  # another timestep
        assert reuse.stop() == 0
        torch.testing.assert_close(second_row, unet(x[1:], t[1:], context=context[1:]))
        torch.testing.assert_close(other_time, unet(x[:1], t[:1] - 100, context=context[:1]))


def test_rows_are_gathered_from_several_recorded_calls_in_any_order(unet):
    x, t, context = inputs(rows=3)
    reuse = BlockReuse(unet, layers(unet, "u0-2"))
    with torch.no_grad():
        reuse.record(every_row)
        for row in range(3):  # chunked main pass: one row per call
            unet(x[row:row + 1], t[row:row + 1], context=context[row:row + 1])
        reuse.replay()
        order = [2, 0, 1]
        replayed = unet(x[order], t[order], context=context[order])
        assert reuse.stop() == len(reuse.blocks)
        computed = unet(x[order], t[order], context=context[order])
    torch.testing.assert_close(replayed, computed, atol=1e-5, rtol=1e-5)


def test_in_place_changes_to_a_block_output_do_not_reach_the_recording(unet):
    # Forge's apply_control adds control to a block's output in place (h += ctrl).
    x, t, context = inputs(rows=1)
    reuse = BlockReuse(unet, layers(unet, "middle"))
    first = reuse.blocks[0]
    with torch.no_grad():
        reuse.record(every_row)
        out = first(x, unet.time_embed(torch.zeros(1, 32)), context)
        recorded = reuse._records[0].outputs[0].clone()
        out += 1.0
        assert torch.equal(reuse._records[0].outputs[0], recorded)
    reuse.stop()


def test_stop_and_the_leftover_sweep_put_back_what_was_there(unet):
    block = unet.input_blocks[1]
    other = lambda *args, **kwargs: "another extension's forward"  # noqa: E731
    block.forward = other
    try:
        reuse = BlockReuse(unet, layers(unet, "middle"))
        reuse.record(every_row)
        assert reuse.active and block.forward is not other
        with torch.no_grad():
            assert block(torch.zeros(1)) == "another extension's forward"  # called through
        reuse.stop()
        assert block.forward is other and "forward" not in unet.input_blocks[0].__dict__
        reuse.record(every_row)  # left behind, as after an exception in the main pass
        remove_leftovers(unet)
        assert block.forward is other and not reuse.active
    finally:
        del block.forward


def test_the_embedding_matches_to_within_rounding_across_batch_sizes(unet):
    # time_embed is a matrix product: a row may round differently in a batch of another size.
    x, t, context = inputs(rows=4)
    reuse = BlockReuse(unet, layers(unet, "middle"))
    with torch.no_grad():
        reuse.record(every_row)
        unet(x, t, context=context)
        reuse.replay()
        unet(x[2:3], t[2:3], context=context[2:3])
        assert reuse.stop() == len(reuse.blocks)


# ---- exactness: what must not match, what runs inside the blocks ---------------------------------
def replay_once(unet, spec, record_inputs, replay_inputs, host=HostBlocks()):
    """Record a main pass on ``record_inputs`` (every row), replay one call on ``replay_inputs``;
    returns (replayed output, blocks the pass took, reason, blocks computed in the replayed call)."""
    reuse = BlockReuse(unet, layers(unet, spec), host)
    calls = BlockCalls(unet)
    try:
        with torch.no_grad():
            reuse.record(every_row)
            x, t, context = record_inputs
            unet(x, t, context=context)
            reuse.replay()
            before = calls.count
            x, t, context = replay_inputs
            out = unet(x, t, context=context)
            computed = calls.count - before
            reason = reuse.reason
            taken = reuse.stop()
    finally:
        calls.close()
    assert not reuse.active
    return out, taken, reason or reuse.reason, computed


def nudged(t: torch.Tensor) -> torch.Tensor:
    """``t`` with one element moved by a single ulp."""
    out = t.clone()
    out.view(-1)[3] = torch.nextafter(out.view(-1)[3], torch.tensor(float("inf")))
    return out


@pytest.mark.parametrize("which", ["latent", "context"])
def test_a_latent_or_context_one_ulp_away_is_not_matched(unet, which):
    # Two AND sub-prompts with the same latent and nearly equal contexts must not share a recording.
    x, t, context = inputs(rows=1)
    replay = (nudged(x), t, context) if which == "latent" else (x, t, nudged(context))
    out, taken, reason, computed = replay_once(unet, "middle", (x, t, context), replay)
    assert taken == 0 and reason == "no recorded rows matched the extra pass's"
    assert computed == len(unet_blocks(unet))
    with torch.no_grad():
        assert torch.equal(out, unet(*replay[:2], context=replay[2]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_the_embedding_slack_covers_batch_rounding_in_each_dtype_and_reuse_matches_there(unet, dtype, monkeypatch):
    # ldm's own attention upcasts q and k only (the WebUI replaces it by its optimisers): keep the dtype
    monkeypatch.setattr("ldm.modules.attention._ATTN_PRECISION", "same")
    model = tiny_unet("sd1").to(dtype)
    model.dtype = dtype  # ldm casts the latent to it; the sinusoidal embedding too, as the WebUI's hijack does:
    model.time_embed.register_forward_pre_hook(lambda module, args: (args[0].to(dtype),))
    for norm in model.modules():  # ldm's GroupNorm32 normalises in float32: CPU kernels want float32 weights
        if isinstance(norm, torch.nn.GroupNorm):
            norm.float()
    g = torch.Generator().manual_seed(5)
    t = torch.rand(12, generator=g) * 999
    with torch.no_grad():
        embed = lambda rows: model.time_embed(timestep_embedding(t[rows], model.model_channels).to(dtype))  # noqa: E731
        whole = embed(slice(0, 12))
        worst = max(float(((embed(slice(s, s + b)) - whole[s:s + b]).abs().amax(1) / whole[s:s + b].abs().amax(1)).max())
                    for b in (1, 2, 3, 5) for s in range(0, 12 - b + 1))
    assert worst <= embedding_slack(dtype, torch.device("cpu"))
    x, _, context = inputs(rows=3)
    x, context, times = x.to(dtype), context.to(dtype), t[:3]
    out, taken, reason, computed = replay_once(model, "u0-2", (x, times, context), (x[1:2], times[1:2], context[1:2]))
    assert taken == 10 and reason is None and computed == len(unet_blocks(model)) - 10
    with torch.no_grad():
        computed_alone = model(x[1:2], times[1:2], context=context[1:2])
        batched = model(x, times, context=context)[1:2]
    # within the rounding that computing the row in another batch makes anyway
    rounding = 2 * max(float((batched - computed_alone).abs().max()), 4 * torch.finfo(dtype).eps * float(computed_alone.abs().max()))
    assert float((out - computed_alone).abs().max()) <= rounding


def test_each_recorded_row_is_handed_out_once_then_dropped(unet):
    x, t, context = inputs(rows=2)
    reuse = BlockReuse(unet, layers(unet, "middle"))
    with torch.no_grad():
        reuse.record(every_row)
        unet(x, t, context=context)
        reuse.replay()
        unet(x[:1], t[:1], context=context[:1])
        record = reuse._records[0]
        assert record.taken == [True, False] and all(o is not None for o in record.outputs)  # row 1 still to come
        unet(x[1:], t[1:], context=context[1:])
        assert all(o is None for o in record.outputs)  # every output handed out: nothing kept
        unet(x[:1], t[:1], context=context[:1])  # the same row again: no recording left for it
        assert reuse.stop() == 0


class Counter:
    def __init__(self):
        self.calls = 0

    def __call__(self, *_):
        self.calls += 1


def test_a_hook_on_a_module_inside_a_replayed_block_makes_the_pass_run_in_full(unet):
    x, t, context = inputs(rows=1)
    hook = Counter()  # a stateful hook: it would miss the calls that replay skipped
    handle = unet.input_blocks[2][1].register_forward_pre_hook(hook)
    try:
        out, taken, reason, computed = replay_once(unet, "middle", (x, t, context), (x, t, context))
    finally:
        handle.remove()
    assert taken == 0 and reason.startswith("a hook on input block 2") and computed == len(unet_blocks(unet))
    assert hook.calls == 2  # main and extra pass


def test_another_extensions_code_inside_a_replayed_block_makes_the_pass_run_in_full(unet):
    # sd-webui-controlnet's reference modes replace BasicTransformerBlock._forward on the instance
    # (and draw noise there); Hypertile replaces attn1's forward.
    x, t, context = inputs(rows=1)
    block = unet.input_blocks[1][1].transformer_blocks[0]
    block._forward = type(block)._forward.__get__(block)
    try:
        _, taken, reason, _ = replay_once(unet, "middle", (x, t, context), (x, t, context))
    finally:
        del block._forward
    assert taken == 0 and reason.startswith("another extension's code in input block 1")


def test_a_hook_on_a_replayed_block_itself_still_runs_and_reuse_holds(unet):
    # A1111's --lowvram moves each block to the GPU in a pre-hook on the block: its call still happens.
    x, t, context = inputs(rows=1)
    hook = Counter()
    handle = unet.input_blocks[1].register_forward_pre_hook(hook)
    try:
        _, taken, reason, _ = replay_once(unet, "middle", (x, t, context), (x, t, context))
    finally:
        handle.remove()
    assert taken == 9 and reason is None and hook.calls == 2


def test_the_host_is_told_of_each_skipped_block_and_can_refuse_a_call(unet):
    x, t, context = inputs(rows=1)
    skipped = []
    host = HostBlocks(skipped=lambda block, args, kwargs: skipped.append(block))
    _, taken, _, _ = replay_once(unet, "u0-2", (x, t, context), (x, t, context), host)
    assert taken == 10 and skipped == blocks_before(unet, layers(unet, "u0-2"))
    refusing = HostBlocks(unreplayable=lambda args, kwargs, replayed: f"a patch on {replayed[-1]}")
    _, taken, reason, _ = replay_once(unet, "u0-2", (x, t, context), (x, t, context), refusing)
    assert taken == 0 and reason == "a patch on ('middle', 0)"


def test_one_device_read_per_unet_call(unet, monkeypatch):
    from torch.utils._python_dispatch import TorchDispatchMode

    import asag.reuse as reuse_module

    reads = []
    to_host = reuse_module._to_host
    monkeypatch.setattr(reuse_module, "_to_host", lambda verdicts: reads.append("match") or to_host(verdicts))

    class Syncs(TorchDispatchMode):  # any other read of a tensor's value on the host
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func in (torch.ops.aten._local_scalar_dense.default, torch.ops.aten.equal.default, torch.ops.aten.is_nonzero.default):
                reads.append(str(func))
            return func(*args, **(kwargs or {}))

    x, t, context = inputs(rows=3)
    reuse = BlockReuse(unet, layers(unet, "u6-8"))
    with torch.no_grad():
        reuse.record(every_row)
        for row in range(3):  # three recorded calls: candidates from each
            unet(x[row:row + 1], t[row:row + 1], context=context[row:row + 1])
        reuse.replay()
        with Syncs():
            unet(x[[2, 0]], t[[2, 0]], context=context[[2, 0]])
        assert reuse.stop() == 16
    assert reads == ["match"]


def test_the_match_allocates_no_more_than_the_recording_whatever_the_batch(unet, monkeypatch):
    """A call of the extra pass is matched against the recorded rows one of its rows at a time: the
    largest tensor the match allocates is no larger than the recorded latent, so it grows with the
    batch, not with its square (a rows x recorded x values comparison is 16x larger at batch 8 than
    at batch 2; T5's 512 x 4096 context at batch 8 made it 134 MB)."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves

    import asag.reuse as reuse_module

    class Largest(TorchDispatchMode):
        """The size of the largest tensor any operation allocates inside it (views not counted)."""

        nbytes = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            given = {t.untyped_storage().data_ptr() for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
            sizes = [t.untyped_storage().nbytes() for t in tree_leaves(out)
                     if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in given]
            self.nbytes = max([self.nbytes, *sizes])
            return out

    matches = reuse_module._matches

    def largest_match(rows):
        largest = Largest()

        def measured(*args):
            with largest:
                return matches(*args)

        monkeypatch.setattr(reuse_module, "_matches", measured)
        x, t, context = inputs(rows=rows)
        reuse = BlockReuse(unet, layers(unet, "middle"))
        with torch.no_grad():
            reuse.record(every_row)
            unet(x, t, context=context)
            reuse.replay()
            unet(x, t, context=context)
            assert reuse.stop() == len(reuse.blocks)  # every row matched
        return largest.nbytes, x.numel() * x.element_size()

    (small, _), (large, recorded_latent) = largest_match(2), largest_match(8)
    print(f"largest tensor of one match: batch 2 {small} bytes, batch 8 {large} bytes (x{large / small:g}); "
          f"the recorded latent at batch 8: {recorded_latent} bytes")
    assert 0 < large <= recorded_latent
    assert large <= 4 * small  # linear in the batch (8 / 2)


def test_a_context_repeated_in_the_main_pass_is_given_back_repeated(unet):
    # Forge batches a 1-chunk prompt with a 2-chunk negative prompt by repeating the prompt's
    # context to 2 chunks (the same attention): the extra pass gets it as the main pass ran it.
    x, t, context = inputs(rows=2)
    doubled = context.repeat(1, 2, 1)
    reuse = BlockReuse(unet, layers(unet, "u0-2"))
    with torch.no_grad():
        reuse.record(every_row)
        unet(x, t, context=doubled)
        assert torch.equal(reuse.repeated_as_recorded(context[:1]), doubled[:1])
        other = context[:1] + 1
        assert reuse.repeated_as_recorded(other) is other
        reuse.replay()
        unet(x[:1], t[:1], context=reuse.repeated_as_recorded(context[:1]))
        assert reuse.stop() == 10
