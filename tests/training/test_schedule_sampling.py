"""The learning-rate schedule and the order pairs are visited in."""

from __future__ import annotations

import random

import pytest

from dsmd.errors import DsmdError
from dsmd.training.sampling import RankBatchSampler, SeededPairs, epoch_order, micro_batch_size
from dsmd.training.schedule import learning_rate


def test_step_decay_after_the_given_epochs():
    assert [learning_rate(1.0, e, [10], 0.1) for e in (0, 9, 10, 19)] == [
        1.0,
        1.0,
        pytest.approx(0.1),
        pytest.approx(0.1),
    ]
    assert learning_rate(1.0, 7, [2, 5], 0.5) == 0.25
    assert learning_rate(1.0, 3, [], 0.1) == 1.0


def test_the_order_depends_on_seed_and_epoch_only():
    assert epoch_order(10, 0, 1).tolist() == epoch_order(10, 0, 1).tolist()
    assert epoch_order(10, 0, 1).tolist() != epoch_order(10, 0, 2).tolist()
    assert epoch_order(10, 0, 1).tolist() != epoch_order(10, 1, 1).tolist()


def test_one_rank_takes_whole_micro_batches_and_skips_what_was_done():
    order = epoch_order(10, 3, 0).tolist()
    parts = [[j for _, j in keys] for keys in RankBatchSampler(10, 4, 3, 0)]
    assert parts == [order[0:4], order[4:8], order[8:10]]
    assert len(RankBatchSampler(10, 4, 3, 0, skip=1)) == 2
    assert [[j for _, j in k] for k in RankBatchSampler(10, 4, 3, 0, skip=1)] == parts[1:]


def test_micro_batches_must_split_evenly():
    assert micro_batch_size(64, 2, 4) == 32
    with pytest.raises(DsmdError, match="must divide by grad_accum_steps=2 x 4 processes = 8"):
        micro_batch_size(12, 2, 4)


def test_seeded_pairs_draw_the_same_augmentation_for_the_same_pair():
    class Draw:
        def __len__(self):
            return 3

        def __getitem__(self, j):
            return j, random.random()

    pairs = SeededPairs(Draw())
    assert pairs[(7, 1)] == pairs[(7, 1)]
    assert pairs[(7, 1)] != pairs[(7, 2)] and pairs[(7, 1)] != pairs[(8, 1)]
