"""Recording and replaying UNet blocks (asag/reuse.py) on a real tiny ldm UNet, without a host."""
import pytest
import torch

from asag.layers import resolve_layers, self_attention_modules
from asag.reuse import BlockReuse, blocks_before, every_row, first_rows, remove_leftovers, unet_blocks
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


class BlockCalls:
    """Counts how many blocks really compute: a pre-hook on each block's first layer."""

    def __init__(self, unet):
        self.count = 0
        self.handles = [module[0].register_forward_pre_hook(self._hit) for _, module in unet_blocks(unet)]

    def _hit(self, *_):
        self.count += 1

    def close(self):
        for handle in self.handles:
            handle.remove()


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
