"""The fused draws of a training step: every block equals the counter RNG's own draw."""

import pytest
import torch

from fmstudy.rng import CounterRNG, Request, Served, StepDraws

SEEDS = [0, 5, 2**40 + 3]
REQUESTS = [Request(1, 9, False), Request(2, 7, False), Request(2, 12, True), Request(3, 30, True), Request(4, 0, True)]


def _reference(r: Request, counter: int) -> torch.Tensor:
    rng = CounterRNG(SEEDS, stream=r.stream)
    return rng.normal(counter, r.n, dtype=torch.float64) if r.normal else rng.uniform(counter, r.n)


@pytest.mark.parametrize("chunk", [1, 4, 4096])
def test_fused_blocks_equal_the_counter_rng_to_the_bit(chunk):
    draws = StepDraws(SEEDS, REQUESTS)
    draws.chunk = chunk
    # In order, backwards (a resume), across chunk ends and across the counter's high word.
    for counter in (0, 1, 2, 3, 4, 5, 11, 3, 2**32 - 2, 2**32 - 1, 2**32, 2**33 + 5):
        for r, got in zip(REQUESTS, draws.draw(counter)):
            assert got.shape == (len(SEEDS), r.n)
            assert torch.equal(got, _reference(r, counter)), (counter, r)


def test_a_member_block_does_not_depend_on_the_other_members():
    together = StepDraws(SEEDS, REQUESTS).draw(17)
    alone = StepDraws(SEEDS[1:2], REQUESTS).draw(17)
    for a, b in zip(together, alone):
        assert torch.equal(a[1:2], b)


def test_served_blocks_answer_only_what_was_drawn():
    u, z = torch.rand(2, 6, dtype=torch.float64), torch.randn(2, 4, dtype=torch.float64)
    served = Served(2, counter=3, uniform=u, normal=z)
    assert torch.equal(served.uniform(3, 6), u) and served.normal(3, 4).dtype == torch.float32
    for call in (lambda: served.uniform(4, 6), lambda: served.normal(3, 5), lambda: Served(2, 3).uniform(3, 6)):
        with pytest.raises(ValueError, match="is not allowed"):
            call()
    with pytest.raises(ValueError, match="counter=-1"):
        StepDraws(SEEDS, REQUESTS).draw(-1)
