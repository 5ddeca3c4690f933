"""Score the teacher and a student the same way: retrieval on a split, size, latency.

Latency is the median time per item of encoding a batch (``latency_batch`` images already
decoded and resized, or captions including tokenisation) on the given device, after warm-up.
"""

from __future__ import annotations

import torch

from dsmd.data.datasets import CaptionedImages
from dsmd.data.loader import ImageCache
from dsmd.evaluation.asymmetric import asymmetric_metrics
from dsmd.evaluation.latency import measure_latency
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


def teacher_row(
    teacher, feats: SplitFeatures, data: CaptionedImages, device: torch.device, latency_batch: int = 32
) -> dict:
    """Metrics of the stored teacher features of a split, with the live teacher's size and latency."""
    row = retrieval_metrics(feats.image, feats.text, feats.caption_image)
    cache = ImageCache(enabled=False, max_side=10**9)
    pixels = timing_pixels(teacher.image_transform, data, latency_batch, cache).to(device)
    captions = timing_captions(data, latency_batch)
    row["params"] = int(teacher.num_parameters())
    row["image_latency_ms"] = measure_latency(teacher.encode_images, lambda _: pixels, latency_batch)
    row["text_latency_ms"] = measure_latency(teacher.encode_texts, lambda _: captions, latency_batch)
    return row


def student_rows(
    student,
    data: CaptionedImages,
    teacher: SplitFeatures,
    device: torch.device,
    batch_size: int = 128,
    latency_batch: int = 32,
) -> tuple[dict, dict]:
    """The student's row (metrics, size, latency) on a split, and the asymmetric row: the
    student's queries against ``teacher``'s stored features of the same split (metrics only)."""
    student.eval()
    image, text = encode_split(student, data, batch_size, device)
    ids = torch.tensor(data.caption_image)
    row = retrieval_metrics(image, text, ids)
    asymmetric = asymmetric_metrics(image, text, teacher.image, teacher.text, ids)
    cache = ImageCache(enabled=False, max_side=10**9)
    pixels = timing_pixels(student.image_transform(train=False), data, latency_batch, cache).to(device)
    captions = timing_captions(data, latency_batch)
    row["params"] = int(student.num_parameters())
    row["image_latency_ms"] = measure_latency(student.encode_images, lambda _: pixels, latency_batch)
    row["text_latency_ms"] = measure_latency(student.encode_captions, lambda _: captions, latency_batch)
    return row, asymmetric
