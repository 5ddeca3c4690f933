"""measure_latency with a function of known duration."""

from __future__ import annotations

import time

import pytest
import torch

from dsmd.evaluation.latency import measure_latency


def test_sleeping_function_gives_its_duration_per_item():
    calls = {"make_batch": [], "fn": 0, "inference_mode": []}

    def make_batch(batch_size):
        calls["make_batch"].append(batch_size)
        return torch.zeros(batch_size, 3)

    def fn(batch):
        calls["fn"] += 1
        calls["inference_mode"].append(torch.is_inference_mode_enabled())
        time.sleep(0.02)

    ms_per_item = measure_latency(fn, make_batch, batch_size=4, warmup=2, repeats=3)

    # 20 ms per batch of 4 is 5 ms per item; sleep never returns early, and the upper bound is
    # loose so that a busy machine does not fail the test.
    assert 5.0 <= ms_per_item < 50.0
    assert calls["make_batch"] == [4]
    assert calls["fn"] == 2 + 3
    assert all(calls["inference_mode"])


def test_median_ignores_one_slow_repeat():
    durations = iter([0.0, 0.2, 0.01, 0.01])  # one warm-up, then one slow timed call

    def fn(batch):
        time.sleep(next(durations))

    assert measure_latency(fn, lambda n: None, batch_size=1, warmup=1, repeats=3) < 150.0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": 1, "repeats": 0}, "repeats"),
        ({"batch_size": 1, "warmup": -1}, "warmup"),
    ],
)
def test_invalid_arguments_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        measure_latency(lambda batch: None, lambda n: None, **kwargs)
