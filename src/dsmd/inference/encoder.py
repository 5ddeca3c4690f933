"""A trained student as an encoder of images and captions: lists in, ``(N, D)`` arrays out."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from dsmd.data.images import load_image, to_rgb
from dsmd.data.transforms import ImageTransform


class Backend(Protocol):
    """What :class:`Encoder` runs: a :class:`~dsmd.models.student.DualEncoder`, or an adapter
    with the same two methods."""

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor: ...

    def encode_captions(self, texts: Sequence[str]) -> torch.Tensor: ...


class Encoder:
    """Encode images and captions with a distilled student (from :func:`dsmd.load_student`).

    Outputs are float32 numpy arrays ``(N, D)``, L2-normalised exactly when the student was
    trained so (``normalized``), in the feature space of the teacher it was distilled from
    (``space``): a gallery of that teacher's features can be searched with them.

    Attributes:
        dim: ``D``.
        space: id of the teacher's feature space (:func:`dsmd.store.manifest.teacher_space`).
        name: where the student was loaded from.
        model_id: a short hash of its weights.
        image_transform: the preprocessing of its vision tower.
    """

    def __init__(
        self,
        backend: Backend,
        image_transform: ImageTransform,
        dim: int,
        normalized: bool,
        space: str,
        name: str,
        model_id: str,
        device: torch.device,
        info: dict[str, Any] | None = None,
    ):
        self.backend, self.image_transform = backend, image_transform
        self.dim, self.normalized, self.space = dim, normalized, space
        self.name, self.model_id, self.device = name, model_id, device
        self.info = dict(info or {})

    def describe(self) -> dict[str, Any]:
        """What an index records about the model that encoded it."""
        return {
            "name": self.name,
            "model_id": self.model_id,
            "space": self.space,
            "dim": self.dim,
            "normalized": self.normalized,
        }

    def __repr__(self) -> str:
        return f"Encoder({self.name!r}, dim={self.dim}, space={self.space}, device={self.device})"

    def _pixels(self, image: str | Path | Image.Image) -> torch.Tensor:
        """``(3, H, W)``: a path or a PIL image decoded the same way (:mod:`dsmd.data.images`), transformed."""
        img = to_rgb(image) if isinstance(image, Image.Image) else load_image(str(image))
        return self.image_transform(img)

    @torch.inference_mode()
    def encode_images(
        self, images: Sequence[str | Path | Image.Image], batch_size: int = 32, progress: bool | None = None
    ) -> np.ndarray:
        """Features ``(N, D)`` of images given as paths (files or container references) or PIL images.

        A PIL image is decoded as its file would be (:func:`dsmd.data.images.to_rgb`): upright by
        its EXIF orientation, converted to sRGB from its ICC profile, transparency on white.

        Args:
            progress: show a progress bar (None: for more than 256 images on a terminal).
        """
        return self._run(
            images,
            batch_size,
            progress,
            "images",
            lambda chunk: self.backend.encode_images(torch.stack([self._pixels(x) for x in chunk]).to(self.device)),
        )

    @torch.inference_mode()
    def encode_image_files(self, paths: Sequence[str], batch_size: int = 32) -> tuple[np.ndarray, list[int], list[str]]:
        """Features of the images among ``paths`` that can be read: ``(M, D)``, the indices of
        those ``M`` paths, and for each other path ``"PATH<TAB>why"``."""
        from dsmd.errors import DsmdError

        pixels, ok, failed = [], [], []
        for i, path in enumerate(paths):
            try:
                pixels.append(self._pixels(path))
                ok.append(i)
            except (DsmdError, OSError) as exc:
                failed.append(f"{path}\t{' '.join(str(exc).split())}")
        out = [
            self.backend.encode_images(torch.stack(pixels[s : s + batch_size]).to(self.device)).float().cpu().numpy()
            for s in range(0, len(pixels), batch_size)
        ]
        vectors = np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)
        return np.ascontiguousarray(vectors, dtype=np.float32), ok, failed

    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str], batch_size: int = 256, progress: bool | None = None) -> np.ndarray:
        """Features ``(N, D)`` of captions (tokenised as in training)."""
        if isinstance(texts, str):
            raise TypeError("encode_texts takes a list of captions, not one string: encode_texts([text])")
        return self._run(
            texts, batch_size, progress, "captions", lambda chunk: self.backend.encode_captions(list(chunk))
        )

    def _run(self, items, batch_size: int, progress: bool | None, what: str, encode) -> np.ndarray:
        items = list(items)
        if not items:
            return np.zeros((0, self.dim), dtype=np.float32)
        show = len(items) > 256 and _on_terminal() if progress is None else progress
        out = []
        with tqdm(total=len(items), desc=f"encoding {what}", unit=what[:-1], disable=not show, leave=False) as bar:
            for start in range(0, len(items), batch_size):
                chunk = items[start : start + batch_size]
                out.append(encode(chunk).float().cpu().numpy())
                bar.update(len(chunk))
        return np.ascontiguousarray(np.concatenate(out), dtype=np.float32)


def _on_terminal() -> bool:
    import sys

    return sys.stderr.isatty()
