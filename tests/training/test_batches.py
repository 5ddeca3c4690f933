"""Micro-batches across ranks (the one padding mechanism) and their grouping into steps."""

from __future__ import annotations

import torch
from fakes import FakeRanks, batch

from dsmd.training.batches import optimizer_steps, synchronised


def test_alone_the_batches_pass_as_they_are():
    from dsmd.runtime.distributed import Distributed

    batches = [batch(1, rows=4), batch(2, rows=3)]
    out = list(synchronised(iter(batches), Distributed()))
    assert out == batches


def test_each_rank_pads_to_the_largest_batch_and_a_finished_rank_pads_with_copies():
    # three ranks; this one has batches of 4 and 2 rows, then none; the others have more
    others = [[(4, 4), (4, 4)], [(3, 3), (4, 4)], [(1, 0), (2, 2)], [(1, 0), (1, 0)]]
    out = list(synchronised(iter([batch(1, rows=4), batch(2, rows=2)]), FakeRanks(others, 3)))
    assert [len(b) for b in out] == [4, 4, 2]
    assert out[0].real.all()
    assert out[1].real.tolist() == [True, True, False, False]
    assert torch.equal(out[1].pixel_values[2], out[1].pixel_values[0])  # padding repeats the first pair
    assert not out[2].real.any()  # this rank has run out: padding only, while another still has data


def test_a_rank_without_any_batch_uses_the_spare():
    others = [[(2, 2)], [(1, 0)]]
    out = list(synchronised(iter([]), FakeRanks(others, 2), spare=lambda: batch(9, rows=1).padding(1)))
    assert len(out) == 1 and len(out[0]) == 2 and not out[0].real.any()


def test_without_padding_the_epoch_ends_for_everyone():
    others = [[(2, 2)]]
    assert list(synchronised(iter([]), FakeRanks(others, 2))) == []


def test_steps_group_micro_batches_and_mark_the_last():
    groups = [list(step) for step in optimizer_steps(iter(range(7)), 3)]
    assert groups == [[(0, False), (1, False), (2, True)], [(3, False), (4, False), (5, True)], [(6, True)]]
    assert [list(step) for step in optimizer_steps(iter([]), 2)] == []
