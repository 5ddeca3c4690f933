"""Encode a split with the student and score it."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from dsmd.data.datasets import CaptionedImages
from dsmd.data.loader import ImageCache, ImageDataset, collate_images
from dsmd.evaluation.retrieval import retrieval_metrics


@torch.inference_mode()
def encode_split(
    student,
    data: CaptionedImages,
    batch_size: int,
    device: torch.device,
    cache: ImageCache | None = None,
    progress: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Student features of a split's images ``(N_i, D)`` and captions ``(N_t, D)``, float32 on the CPU."""
    was_training = student.training
    student.eval()
    loader = DataLoader(
        ImageDataset(data, student.image_transform(train=False), cache),
        batch_size=batch_size,
        collate_fn=collate_images,
    )
    images = [
        student.encode_images(px.to(device)).float().cpu()
        for _, px in tqdm(loader, desc=f"student images {data.name}", disable=not progress, leave=False)
    ]
    texts = [
        student.encode_captions(data.captions[start : start + batch_size]).float().cpu()
        for start in range(0, len(data.captions), batch_size)
    ]
    student.train(was_training)
    return torch.cat(images), torch.cat(texts)


def evaluate_student(
    student,
    data: CaptionedImages,
    batch_size: int,
    device: torch.device,
    cache: ImageCache | None = None,
    progress: bool = False,
) -> dict[str, float]:
    """Retrieval metrics (``i2t_r1 .. rsum``) of the student on a split."""
    image, text = encode_split(student, data, batch_size, device, cache, progress)
    return retrieval_metrics(image, text, torch.tensor(data.caption_image))
