"""DistillationStep: accumulation, a short last step, seeds by position, divergence."""

from __future__ import annotations

import pytest
import torch
from fakes import batch, record_gradients, stepper

from dsmd.errors import DsmdError
from dsmd.training.batches import optimizer_steps
from dsmd.training.step import step_seed


def _run(step, micro_batches, accum):
    records = [step(group) for group in optimizer_steps(micro_batches, accum)]
    return records


def test_accumulated_step_is_the_mean_of_its_micro_batch_gradients():
    small = stepper(accum=1)
    small_grads = record_gradients(small)
    _run(small, [batch(1), batch(2), batch(3)], 1)
    accum = stepper(accum=3)
    accum_grads = record_gradients(accum)
    records = _run(accum, [batch(1), batch(2), batch(3)], 3)
    assert len(small_grads) == 3 and len(accum_grads) == 1 and accum.steps == 1
    for k, g in enumerate(accum_grads[0]):
        torch.testing.assert_close(g, sum(step[k] for step in small_grads) / 3, rtol=1e-5, atol=1e-7)
    # the queue and the balancer saw the same three micro-batches either way
    for key, value in small.objective.state_dict().items():
        torch.testing.assert_close(accum.objective.state_dict()[key], value, msg=key)
    assert accum.balancer.state_dict() == small.balancer.state_dict()
    assert records[0]["micro_batches"] == 3 and set(records[0]) >= {"total", "cd", "w_cd", "grad_norm"}


def test_a_short_last_step_is_the_mean_of_the_gradients_it_has():
    small = stepper(accum=1)
    small_grads = record_gradients(small)
    _run(small, [batch(1), batch(2), batch(3), batch(4), batch(5)], 1)
    accum = stepper(accum=3)
    accum_grads = record_gradients(accum)
    records = _run(accum, [batch(1), batch(2), batch(3), batch(4), batch(5)], 3)
    assert [r["micro_batches"] for r in records] == [3, 2] and accum.steps == 2
    for k, g in enumerate(accum_grads[1]):
        torch.testing.assert_close(g, (small_grads[3][k] + small_grads[4][k]) / 2, rtol=1e-5, atol=1e-7)


def test_only_the_last_micro_batch_of_a_step_synchronises():
    step = stepper(accum=2)
    seen = []
    real = step.micro_batch

    def spy(b, sync=True):
        seen.append(sync)
        return real(b, sync)

    step.micro_batch = spy
    _run(step, [batch(1), batch(2), batch(3)], 2)
    assert seen == [False, True, True]


def test_dropout_masks_follow_the_position():
    def losses(start_steps):
        step = stepper(dropout=0.5, lr=1e-3)
        step.steps = start_steps
        return _run(step, [batch(1)], 1)[0]["total"]

    assert losses(5) == losses(5)  # the same step position draws the same masks
    assert losses(5) != losses(6)
    assert len({step_seed(0, s, m, r) for s in range(3) for m in range(3) for r in range(3)}) == 27


def test_padding_rows_are_not_trained_on():
    plain = stepper()
    plain_grads = record_gradients(plain)
    _run(plain, [batch(1)], 1)
    padded = stepper()
    padded_grads = record_gradients(padded)
    _run(padded, [batch(1).padded(7)], 1)
    for a, b in zip(plain_grads[0], padded_grads[0], strict=True):
        torch.testing.assert_close(a, b)
    assert int(padded.objective.queue.count) == 4  # padding never enters the queue


def test_a_diverged_loss_stops_with_one_line():
    step = stepper()
    bad = batch(1)
    bad.teacher_text[0] = float("nan")
    with pytest.raises(DsmdError, match=r"training diverged at step 1: losses \{.*nan"):
        _run(step, [bad], 1)
