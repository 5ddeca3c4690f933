"""Inference latency per item, as the paper reports it (ms per image or caption)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["interleaved_times", "measure_latency", "measure_times"]


def measure_latency(
    fn: Callable[[Any], Any],
    make_batch: Callable[[int], Any],
    batch_size: int,
    warmup: int = 2,
    repeats: int = 5,
) -> float:
    """Median wall-clock time of ``fn(batch)`` per item, in milliseconds.

    The batch is built once, by ``make_batch(batch_size)``, outside the timed region. ``fn`` is
    then called ``warmup`` times untimed (to fill caches, pick kernels, allocate memory) and
    ``repeats`` times timed, all under :func:`torch.inference_mode`. When CUDA is in use the
    device is synchronised before starting and after each call, so that the time covers the
    queued GPU work and not just its launch. The median resists a stray slow repeat better
    than the mean.

    Args:
        fn: the model call to time, e.g. ``lambda images: student.encode_images(images)``.
        make_batch: builds one input batch of the given size, e.g. a ``(B, 3, H, W)`` tensor
            already on the model's device.
        batch_size: items per batch ``B``; the result is divided by it.
        warmup: untimed calls before timing.
        repeats: timed calls; their median is used.

    Returns:
        Milliseconds per item: ``median(call times) / batch_size * 1000``.

    Raises:
        ValueError: if ``batch_size`` or ``repeats`` is below 1 or ``warmup`` below 0.
    """
    seconds = measure_times(fn, make_batch, batch_size, warmup, repeats)
    return statistics.median(seconds) / batch_size * 1000.0


def measure_times(
    fn: Callable[[Any], Any],
    make_batch: Callable[[int], Any],
    batch_size: int,
    warmup: int = 2,
    repeats: int = 5,
) -> list[float]:
    """The ``repeats`` wall-clock times, in seconds, of whole calls ``fn(batch)`` (not per item).

    Timed exactly as :func:`measure_latency` times them (which takes their median); for the
    spread of the times (quartiles, minimum and maximum).

    Raises:
        ValueError: if ``batch_size`` or ``repeats`` is below 1 or ``warmup`` below 0.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    if warmup < 0:
        raise ValueError(f"warmup must be at least 0, got {warmup}")

    with torch.inference_mode():
        batch = make_batch(batch_size)
        for _ in range(warmup):
            fn(batch)
        _synchronize()
        seconds = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn(batch)
            _synchronize()
            seconds.append(time.perf_counter() - start)
    return seconds


def interleaved_times(calls: dict[str, Callable[[], Any]], rounds: int = 10, warmup: int = 2) -> dict[str, list[float]]:
    """Wall-clock seconds of each of ``calls`` over ``rounds`` rounds, one call of each per round in turn.

    Timing models in turn (A, B, C, A, B, C, ...) instead of one after the other gives each the
    same share of whatever else the machine is doing: on a loaded machine the times grow, their
    ratios hold. Every call runs ``warmup`` times untimed first, under :func:`torch.inference_mode`.

    Returns:
        ``{name: [seconds of each round]}``.
    """
    if rounds < 1 or warmup < 0:
        raise ValueError(f"rounds must be at least 1 and warmup at least 0, got {rounds} and {warmup}")
    times: dict[str, list[float]] = {name: [] for name in calls}
    with torch.inference_mode():
        for fn in calls.values():
            for _ in range(warmup):
                fn()
        _synchronize()
        for _ in range(rounds):
            for name, fn in calls.items():
                start = time.perf_counter()
                fn()
                _synchronize()
                times[name].append(time.perf_counter() - start)
    return times


def _synchronize() -> None:
    # Only when CUDA has been initialised: on a CPU-only run this is a no-op, and it does not
    # create a CUDA context just to wait on nothing.
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
