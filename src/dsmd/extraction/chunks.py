"""Running the teacher over a split in chunks that survive an interruption.

A split's images, captions and views are encoded in chunks of :data:`CHUNK_SIZE` rows; each
finished chunk is saved atomically (``chunks/SPLIT/image-00003.safetensors``: rows 3C .. 4C-1),
so an interrupted extraction resumes at its first missing chunk. Batches start at chunk
boundaries, so a chunk's features do not depend on which chunks ran before it. Every chunk is
checked for values that are not finite before it is saved.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from dsmd.data.datasets import CaptionedImages
from dsmd.data.loader import ImageDataset, collate_images
from dsmd.errors import DsmdError
from dsmd.runtime.files import atomic_path
from dsmd.store import SplitFeatures
from dsmd.store.safetensors_mmap import read_header
from dsmd.teachers import Teacher

# Images or captions per chunk: what an interruption can lose. 8,192 rows of a 1,024-d teacher
# are 32 MiB; COCO's train split is 14 image chunks and 70 caption chunks.
CHUNK_SIZE = 8192


def _spans(n: int, chunk_size: int) -> list[tuple[int, int]]:
    return [(start, min(start + chunk_size, n)) for start in range(0, n, chunk_size)]


class _Chunks:
    """The finished chunks of one split's stream (``image``, ``text`` or ``viewV``) on disk.

    With ``folder=None`` nothing is saved (a plain in-memory extraction).
    """

    def __init__(self, folder: Path | None, stream: str):
        self.folder = folder
        self.stream = stream

    def _path(self, k: int) -> Path:
        return self.folder / f"{self.stream}-{k:05d}.safetensors"

    def load(self, k: int, rows: int, dim: int) -> torch.Tensor | None:
        """Chunk ``k`` as ``(rows, D)`` float32, or None when it is missing or unreadable."""
        if self.folder is None or not self._path(k).is_file():
            return None
        try:
            features = load_file(str(self._path(k))).get("features")
        except (SafetensorError, OSError):
            return None
        ok = features is not None and features.shape == (rows, dim) and features.dtype == torch.float32
        return features if ok else None

    def valid(self, k: int, rows: int, dim: int) -> bool:
        """Whether chunk ``k`` is on disk with shape ``(rows, D)`` float32 (reads its header only)."""
        if self.folder is None or not self._path(k).is_file():
            return False
        try:
            header, start = read_header(self._path(k))
        except (ValueError, OSError):
            return False
        t = header.get("features")
        return (
            t is not None
            and t.get("dtype") == "F32"
            and t.get("shape") == [rows, dim]
            and self._path(k).stat().st_size >= start + t["data_offsets"][1]
        )

    def save(self, k: int, features: torch.Tensor) -> None:
        if self.folder is None:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(self._path(k)) as tmp:
            save_file({"features": features.contiguous()}, str(tmp))


def _check_finite(features: torch.Tensor, first: int, name: Callable[[int], str], teacher: Teacher) -> None:
    """Refuse a chunk with a feature that is not finite, naming the first such item."""
    bad = ~torch.isfinite(features).all(dim=1)
    if bool(bad.any()):
        i = first + int(bad.nonzero()[0, 0])
        raise DsmdError(
            f"the teacher's feature of {name(i)} is NaN or inf (teacher dtype {str(teacher.compute_dtype).removeprefix('torch.')}); half "
            "precision can overflow: set teacher.dtype=float32 and run `dsmd extract` again."
        )


def _bar(total: int, done: int, desc: str, unit: str, progress: bool) -> tqdm:
    return tqdm(
        total=total,
        initial=done,
        desc=desc,
        unit=unit,
        unit_scale=True,
        disable=not progress,
        leave=False,
        dynamic_ncols=True,
    )


def _plan(
    chunks: _Chunks, spans: list[tuple[int, int]], dim: int, only: list[int] | None
) -> tuple[dict[int, torch.Tensor], list[int]]:
    """The chunks already saved (loaded, unless ``only``) and those still to compute.

    Without ``only`` every chunk of ``spans``; with it, just the chunks ``only`` not saved yet.
    """
    if only is not None:
        return {}, [k for k in only if not chunks.valid(k, spans[k][1] - spans[k][0], dim)]
    done = {k: t for k, (a, b) in enumerate(spans) if (t := chunks.load(k, b - a, dim)) is not None}
    return done, [k for k in range(len(spans)) if k not in done]


def _assemble(
    done: dict[int, torch.Tensor], spans: list[tuple[int, int]], dim: int, only: list[int] | None
) -> torch.Tensor | None:
    """The chunks in order, ``(N, dim)``; None when only some chunks were computed (``only``)."""
    if only is not None:
        return None
    if not spans:
        return torch.empty(0, dim)
    return torch.cat([done[k] for k in range(len(spans))])


@torch.inference_mode()
def _encode_images(
    teacher: Teacher,
    data: CaptionedImages,
    chunks: _Chunks,
    device: torch.device,
    batch_size: int,
    num_workers: int,
    chunk_size: int,
    view: int | None,
    desc: str,
    progress: bool,
    only: list[int] | None = None,
) -> torch.Tensor | None:
    """Raw teacher features ``(N_i, D)`` float32 (CPU) of every image, or of its view ``view``.

    With ``only``, just the chunks ``only`` that are not saved yet are computed and saved, and
    None is returned.
    """
    spans = _spans(data.num_images, chunk_size)
    done, todo = _plan(chunks, spans, teacher.dim, only)
    if todo:
        # Batches start at chunk boundaries: a chunk's features never depend on its neighbours.
        batches = [
            list(range(s, min(s + batch_size, spans[k][1])))
            for k in todo
            for s in range(spans[k][0], spans[k][1], batch_size)
        ]
        cuda = device.type == "cuda"
        loader = DataLoader(
            ImageDataset(data, teacher.image_transform, view=view),
            batch_sampler=batches,
            num_workers=num_workers,
            collate_fn=collate_images,
            pin_memory=cuda,
        )
        total = data.num_images if only is None else sum(spans[k][1] - spans[k][0] for k in todo)
        bar = _bar(total, sum(b - a for k, (a, b) in enumerate(spans) if k in done), desc, "img", progress)
        pending: list[torch.Tensor] = []
        filled = 0
        for index, pixels in loader:
            # Outputs stay on the device until the chunk is complete, so the host keeps queueing
            # batches instead of waiting for each one.
            pending.append(teacher.encode_images(pixels.to(device, non_blocking=cuda)))
            filled += len(index)
            bar.update(len(index))
            k = int(index[0]) // chunk_size
            if filled == spans[k][1] - spans[k][0]:
                features = torch.cat(pending).float().cpu()
                _check_finite(features, spans[k][0], lambda i: f"image {data.image_paths[i]}", teacher)
                chunks.save(k, features)
                if only is None:
                    done[k] = features
                pending, filled = [], 0
        bar.close()
    return _assemble(done, spans, teacher.dim, only)


@torch.inference_mode()
def _encode_texts(
    teacher: Teacher,
    data: CaptionedImages,
    chunks: _Chunks,
    batch_size: int,
    chunk_size: int,
    desc: str,
    progress: bool,
    only: list[int] | None = None,
) -> torch.Tensor | None:
    """Raw teacher features ``(N_t, D)`` float32 (CPU) of every caption (with ``only``: see
    :func:`_encode_images`)."""
    spans = _spans(len(data), chunk_size)
    done, todo = _plan(chunks, spans, teacher.dim, only)
    total = len(data) if only is None else sum(spans[k][1] - spans[k][0] for k in todo)
    bar = _bar(total, sum(b - a for k, (a, b) in enumerate(spans) if k in done), desc, "cap", progress)
    for k in todo:
        a, b = spans[k]
        pending = []
        for s in range(a, b, batch_size):
            captions = data.captions[s : min(s + batch_size, b)]
            pending.append(teacher.encode_texts(captions))
            bar.update(len(captions))
        features = torch.cat(pending).float().cpu()
        _check_finite(features, a, lambda j: f"caption {j} ({data.captions[j][:60]!r})", teacher)
        chunks.save(k, features)
        if only is None:
            done[k] = features
    bar.close()
    return _assemble(done, spans, teacher.dim, only)


def teacher_features(
    teacher: Teacher,
    data: CaptionedImages,
    batch_size: int,
    normalize: bool,
    device: torch.device,
    num_workers: int = 0,
    progress: bool = True,
    views: int = 0,
    chunk_folder: str | Path | None = None,
    chunk_size: int | None = None,
) -> SplitFeatures:
    """Encode every image once and every caption once (and ``views`` augmented views per image).

    Args:
        chunk_folder: where finished chunks are saved and, on a second call, found again
            (None: computed in memory only).
        chunk_size: images or captions per chunk (default :data:`CHUNK_SIZE`).

    Returns:
        :class:`SplitFeatures` with ``image (N_i, D)``, ``text (N_t, D)`` and, with views,
        ``image_views (N_i, views, D)``, float32 on the CPU.
    """
    chunk_size = chunk_size or CHUNK_SIZE
    folder = Path(chunk_folder) if chunk_folder is not None else None
    name = data.name or "split"
    image = _encode_images(
        teacher,
        data,
        _Chunks(folder, "image"),
        device,
        batch_size,
        num_workers,
        chunk_size,
        None,
        f"{name} images",
        progress,
    )
    text = _encode_texts(teacher, data, _Chunks(folder, "text"), batch_size, chunk_size, f"{name} captions", progress)
    image_views = None
    if views:
        image_views = torch.stack(
            [
                _encode_images(
                    teacher,
                    data,
                    _Chunks(folder, f"view{v}"),
                    device,
                    batch_size,
                    num_workers,
                    chunk_size,
                    v,
                    f"{name} view {v + 1}/{views}",
                    progress,
                )
                for v in range(views)
            ],
            dim=1,
        )
    if normalize:
        image, text = F.normalize(image, dim=-1), F.normalize(text, dim=-1)
        image_views = F.normalize(image_views, dim=-1) if image_views is not None else None
    return SplitFeatures(image, text, torch.tensor(data.caption_image, dtype=torch.long), image_views)
