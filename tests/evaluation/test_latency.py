"""measure_latency with a function of known duration."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest
import torch

from dsmd.evaluation import latency
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

    # 20 ms per batch of 4 is at least 5 ms per item: sleep never returns early. How much longer it
    # takes depends on the machine's load, so there is no upper bound here; the exact arithmetic is
    # checked with a fake clock below.
    assert ms_per_item >= 5.0
    assert calls["make_batch"] == [4]
    assert calls["fn"] == 2 + 3
    assert all(calls["inference_mode"])


@pytest.mark.parametrize(
    ("timed", "expected_ms"),
    [
        # Sorted: 10, 11, 12, 13, 500 ms. Median 12 ms; mean 109.2, min 10, max 500.
        ([0.010, 0.500, 0.012, 0.011, 0.013], 12.0),
        # Even count: median (20 + 40) / 2 = 30 ms; mean 242.5, min 10, max 900, and the
        # lower and upper medians 20 and 40.
        ([0.040, 0.010, 0.900, 0.020], 30.0),
    ],
)
def test_result_is_the_median_of_the_timed_calls(monkeypatch, timed, expected_ms):
    # A fake clock that only the calls move forward, so every call time is known exactly. A
    # slow warm-up call must not count either.
    clock = [1000.0]
    monkeypatch.setattr(latency, "time", SimpleNamespace(perf_counter=lambda: clock[0]))
    durations = iter([5.0, *timed])  # one warm-up call, then the timed ones

    def fn(batch):
        clock[0] += next(durations)

    ms_per_item = measure_latency(fn, lambda n: None, batch_size=2, warmup=1, repeats=len(timed))

    assert ms_per_item == pytest.approx(expected_ms / 2, rel=1e-9)
    assert next(durations, None) is None  # exactly warm-up + repeats calls


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


def test_interleaved_calls_take_turns_after_their_warm_up():
    from dsmd.evaluation.latency import interleaved_times

    order = []
    times = interleaved_times({"a": lambda: order.append("a"), "b": lambda: order.append("b")}, rounds=3, warmup=1)
    assert order == ["a", "b", "a", "b", "a", "b", "a", "b"]  # one warm-up each, then a, b in turn
    assert set(times) == {"a", "b"} and all(len(t) == 3 and min(t) >= 0 for t in times.values())
    with pytest.raises(ValueError, match="rounds must be at least 1"):
        interleaved_times({"a": lambda: None}, rounds=0)
