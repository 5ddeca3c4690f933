"""Score the teacher and a student the same way: retrieval on a split, size, latency.

Latency (:func:`add_latencies`) is the median time per item of encoding a batch
(``latency_batch`` images already decoded and resized, or captions including tokenisation) on
the given device, after warm-up, the models timed in turn (teacher, student, teacher, ...) so
that other work on the machine slows them alike and the student's share holds.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable

import torch

from dsmd.data.datasets import CaptionedImages
from dsmd.data.loader import ImageCache
from dsmd.evaluation.asymmetric import asymmetric_metrics
from dsmd.evaluation.latency import interleaved_times
from dsmd.evaluation.retrieval import retrieval_metrics
from dsmd.evaluation.student_eval import encode_split
from dsmd.store import SplitFeatures


def timing_pixels(transform, data: CaptionedImages, n: int, cache: ImageCache) -> torch.Tensor:
    """``n`` of the split's images (cycling through them), decoded and preprocessed by ``transform``."""
    paths = [data.image_paths[i % data.num_images] for i in range(n)]
    return torch.stack([transform(cache.get(p)) for p in paths])


def timing_captions(data: CaptionedImages, n: int) -> list[str]:
    """``n`` of the split's captions (cycling through them), as strings: tokenising is timed."""
    return [data.captions[i % len(data.captions)] for i in range(n)]


def teacher_row(teacher, feats: SplitFeatures) -> dict:
    """Metrics of the stored teacher features of a split, with the live teacher's size."""
    row = retrieval_metrics(feats.image, feats.text, feats.caption_image)
    row["params"] = int(teacher.num_parameters())
    return row


def student_rows(
    student, data: CaptionedImages, teacher: SplitFeatures, device: torch.device, batch_size: int = 128
) -> tuple[dict, dict]:
    """The student's row (metrics, size) on a split, and the asymmetric row: the student's
    queries against ``teacher``'s stored features of the same split (metrics only)."""
    student.eval()
    image, text = encode_split(student, data, batch_size, device)
    ids = torch.tensor(data.caption_image)
    row = retrieval_metrics(image, text, ids)
    asymmetric = asymmetric_metrics(image, text, teacher.image, teacher.text, ids)
    row["params"] = int(student.num_parameters())
    return row, asymmetric


def add_latencies(
    rows: dict[str, dict],
    models: dict[str, tuple[Callable, Callable, Callable]],
    data: CaptionedImages,
    device: torch.device,
    latency_batch: int = 32,
    rounds: int = 10,
) -> None:
    """Set ``image_latency_ms`` and ``text_latency_ms`` of ``rows[name]`` for each of ``models``,
    ``name: (encode_images, encode_texts, image_transform)`` (``encode_texts`` takes strings), timed in turn."""
    cache = ImageCache(enabled=False, max_side=10**9)
    captions = timing_captions(data, latency_batch)
    calls = {}
    for name, (encode_images, encode_texts, transform) in models.items():
        pixels = timing_pixels(transform, data, latency_batch, cache).to(device)
        calls[f"{name}/image"] = lambda f=encode_images, x=pixels: f(x)
        calls[f"{name}/text"] = lambda f=encode_texts: f(captions)
    for key, seconds in interleaved_times(calls, rounds=rounds, warmup=2).items():
        name, kind = key.split("/")
        rows[name][f"{kind}_latency_ms"] = statistics.median(seconds) / latency_batch * 1000.0
