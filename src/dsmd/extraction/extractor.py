"""Run the teacher once over a dataset and write its features into a feature store.

Extraction goes into ``STORE.partial/``, split by split, and within a split in chunks of
:data:`CHUNK_SIZE` images or captions::

    STORE.partial/pending.json                       the manifest being built (+ chunk size)
    STORE.partial/chunks/SPLIT/image-00003.safetensors   raw features of images 3C .. 4C-1
    STORE.partial/chunks/SPLIT/text-00000.safetensors    raw features of captions 0 .. C-1
    STORE.partial/chunks/SPLIT/view1-00000.safetensors   view 1 of images 0 .. C-1
    STORE.partial/SPLIT.safetensors                  a finished split (its chunks deleted), or
    STORE.partial/SPLIT-00000-of-0000N.safetensors   its shards (``store_shard_rows``)
    STORE.partial/SPLIT.files.json                   written last: the split's file records

Each chunk is written atomically, so an interrupted extraction (with the same teacher and
data) resumes at the first missing chunk. Batches start at chunk boundaries, so a chunk's
features do not depend on which chunks ran before it, and a resumed extraction writes a store
byte-identical to an uninterrupted one. The folder is renamed to ``STORE`` only when every
split is there.

Several processes (``torchrun --nproc_per_node N -m dsmd extract ...``, also over several
nodes sharing the store's file system): the chunks of all unfinished splits, numbered in
order (split, then ``image``, ``text``, ``view0`` ..., then chunk), are dealt out round-robin,
chunk ``t`` to rank ``t % WORLD_SIZE``; each rank runs the teacher on ``cuda:LOCAL_RANK``
(with CUDA; else the CPU) and saves its chunks. After a barrier rank 0 merges the chunks into
the store and writes the one manifest while the other ranks wait, then all return the store.
Processes talk only through barriers (gloo). A killed rank stops the whole run (torchrun);
running the same command again (with any number of processes) resumes from the chunks saved.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

import dsmd
from dsmd.config import RunConfig, config_to_dict
from dsmd.data.datasets import SPLITS, CaptionedImages, load_dataset
from dsmd.data.loader import ImageDataset, collate_images
from dsmd.errors import DsmdError
from dsmd.store import _dist
from dsmd.store.feature_store import (
    FORMAT_VERSION,
    MANIFEST,
    FeatureStore,
    SplitFeatures,
    describe_mismatch,
    read_header,
    write_json_atomic,
    write_split,
)
from dsmd.teachers import Teacher, build_teacher
from dsmd.training.device import resolve_device

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
        return (t is not None and t.get("dtype") == "F32" and t.get("shape") == [rows, dim]
                and self._path(k).stat().st_size >= start + t["data_offsets"][1])

    def save(self, k: int, features: torch.Tensor) -> None:
        if self.folder is None:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self._path(k)
        tmp = path.with_name(path.name + ".tmp")
        save_file({"features": features.contiguous()}, str(tmp))
        os.replace(tmp, path)


def _bar(total: int, done: int, desc: str, unit: str, progress: bool) -> tqdm:
    return tqdm(total=total, initial=done, desc=desc, unit=unit, unit_scale=True, disable=not progress,
                leave=False, dynamic_ncols=True)


def _plan(chunks: _Chunks, spans: list[tuple[int, int]], dim: int,
          only: list[int] | None) -> tuple[dict[int, torch.Tensor], list[int]]:
    """The chunks already saved (loaded, unless ``only``) and those still to compute.

    Without ``only`` every chunk of ``spans``; with it, just the chunks ``only`` not saved yet.
    """
    if only is not None:
        return {}, [k for k in only if not chunks.valid(k, spans[k][1] - spans[k][0], dim)]
    done = {k: t for k, (a, b) in enumerate(spans) if (t := chunks.load(k, b - a, dim)) is not None}
    return done, [k for k in range(len(spans)) if k not in done]


def _assemble(done: dict[int, torch.Tensor], spans: list[tuple[int, int]], dim: int,
              only: list[int] | None) -> torch.Tensor | None:
    """The chunks in order, ``(N, dim)``; None when only some chunks were computed (``only``)."""
    if only is not None:
        return None
    if not spans:
        return torch.empty(0, dim)
    return torch.cat([done[k] for k in range(len(spans))])


@torch.inference_mode()
def _encode_images(teacher: Teacher, data: CaptionedImages, chunks: _Chunks, device: torch.device,
                   batch_size: int, num_workers: int, chunk_size: int, view: int | None, desc: str,
                   progress: bool, only: list[int] | None = None) -> torch.Tensor | None:
    """Raw teacher features ``(N_i, D)`` float32 (CPU) of every image, or of its view ``view``.

    With ``only``, just the chunks ``only`` that are not saved yet are computed and saved, and
    None is returned.
    """
    spans = _spans(data.num_images, chunk_size)
    done, todo = _plan(chunks, spans, teacher.dim, only)
    if todo:
        # Batches start at chunk boundaries: a chunk's features never depend on its neighbours.
        batches = [list(range(s, min(s + batch_size, spans[k][1]))) for k in todo
                   for s in range(spans[k][0], spans[k][1], batch_size)]
        cuda = device.type == "cuda"
        loader = DataLoader(ImageDataset(data, teacher.image_transform, view=view), batch_sampler=batches,
                            num_workers=num_workers, collate_fn=collate_images, pin_memory=cuda)
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
                chunks.save(k, features)
                if only is None:
                    done[k] = features
                pending, filled = [], 0
        bar.close()
    return _assemble(done, spans, teacher.dim, only)


@torch.inference_mode()
def _encode_texts(teacher: Teacher, data: CaptionedImages, chunks: _Chunks, batch_size: int, chunk_size: int,
                  desc: str, progress: bool, only: list[int] | None = None) -> torch.Tensor | None:
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
            captions = data.captions[s:min(s + batch_size, b)]
            pending.append(teacher.encode_texts(captions))
            bar.update(len(captions))
        features = torch.cat(pending).float().cpu()
        chunks.save(k, features)
        if only is None:
            done[k] = features
    bar.close()
    return _assemble(done, spans, teacher.dim, only)


def teacher_features(
    teacher: Teacher, data: CaptionedImages, batch_size: int, normalize: bool, device: torch.device,
    num_workers: int = 0, progress: bool = True, views: int = 0, chunk_folder: str | Path | None = None,
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
    image = _encode_images(teacher, data, _Chunks(folder, "image"), device, batch_size, num_workers, chunk_size,
                           None, f"{name} images", progress)
    text = _encode_texts(teacher, data, _Chunks(folder, "text"), batch_size, chunk_size, f"{name} captions",
                         progress)
    image_views = None
    if views:
        image_views = torch.stack([
            _encode_images(teacher, data, _Chunks(folder, f"view{v}"), device, batch_size, num_workers,
                           chunk_size, v, f"{name} view {v + 1}/{views}", progress)
            for v in range(views)], dim=1)
    if normalize:
        image, text = F.normalize(image, dim=-1), F.normalize(text, dim=-1)
        image_views = F.normalize(image_views, dim=-1) if image_views is not None else None
    return SplitFeatures(image, text, torch.tensor(data.caption_image, dtype=torch.long), image_views)


def _expected_manifest(cfg: RunConfig, teacher: Teacher, dataset: dict[str, CaptionedImages]) -> dict:
    identity = dict(teacher.identity())
    identity["source"] = cfg.teacher.name_or_path
    return {
        "format_version": FORMAT_VERSION,
        "teacher": identity,
        "normalized": cfg.teacher.normalize,
        "dtype": cfg.store_dtype,
        "dim": teacher.dim,
        "views": {"train": cfg.store_views},
        "data": config_to_dict(cfg.data),
        "splits": {
            split: {"fingerprint": d.fingerprint(), "num_images": d.num_images, "num_captions": len(d)}
            for split, d in dataset.items()
        },
    }


_COMPARED = ("format_version", "teacher", "normalized", "dtype", "dim", "views", "splits")


def _imported_store(cfg: RunConfig, out: Path, log) -> FeatureStore:
    """``teacher.kind=imported`` has no model to run: the store must already be there."""
    if (out / MANIFEST).is_file():
        store = FeatureStore.open(out)
        store.check_teacher(cfg.teacher.kind, cfg.teacher.name_or_path)
        dataset = load_dataset(cfg.data)
        for split in store.manifest["splits"]:
            store.check_dataset(split, dataset[split].fingerprint())
        log(f"feature store {out} holds the imported features; nothing to extract")
        return store
    raise DsmdError(f"teacher.kind=imported has no model to run, and there is no feature store at {out}. "
                    "Build it with `dsmd import-features --config CONFIG teacher.name_or_path=FEATURES`.")


def _streams(views: int) -> list[str]:
    return ["image", "text", *(f"view{v}" for v in range(views))]


def _chunk_tasks(dataset: dict[str, CaptionedImages], splits: list[str], views: dict[str, int],
                 chunk_size: int) -> list[tuple[str, str, int]]:
    """Every chunk of ``splits``, in the order dealt out to ranks: ``(split, stream, k)``."""
    tasks = []
    for split in splits:
        data = dataset[split]
        for stream in _streams(views[split]):
            rows = len(data) if stream == "text" else data.num_images
            tasks += [(split, stream, k) for k in range(len(_spans(rows, chunk_size)))]
    return tasks


def _compute_share(cfg: RunConfig, teacher: Teacher, dataset: dict[str, CaptionedImages], partial: Path,
                   tasks: list[tuple[str, str, int]], device: torch.device, chunk_size: int, progress: bool) -> None:
    """Compute and save the chunks ``tasks`` (those not saved yet) of this rank."""
    for split, stream, _ in dict.fromkeys((s, st, 0) for s, st, _ in tasks):
        ks = [k for s, st, k in tasks if (s, st) == (split, stream)]
        chunks = _Chunks(partial / "chunks" / split, stream)
        data = dataset[split]
        if stream == "text":
            _encode_texts(teacher, data, chunks, cfg.teacher.batch_size, chunk_size, f"{split} captions", progress,
                          only=ks)
        else:
            view = None if stream == "image" else int(stream[len("view"):])
            _encode_images(teacher, data, chunks, device, cfg.teacher.batch_size, cfg.data.num_workers, chunk_size,
                           view, f"{split} {stream}", progress, only=ks)


def extract(cfg: RunConfig, overwrite: bool = False, progress: bool = True, log=print,
            overwrite_hint: str | None = None) -> FeatureStore:
    """Build (or reuse) the feature store ``cfg.store`` for ``cfg.data`` with ``cfg.teacher``.

    A complete store that matches the teacher and data is reused; one that does not is refused
    unless ``overwrite``. An interrupted extraction resumes from its last finished chunk.
    Under ``torchrun`` (``WORLD_SIZE`` > 1) the processes share the chunks and rank 0 writes
    the store (see the module docstring); every rank returns it.

    Args:
        overwrite_hint: how the caller's user replaces a store built differently (the CLI:
            "Pass --overwrite ..."); the default names the folder to delete and the command.

    Raises:
        DsmdError: the store exists for another teacher or dataset (and ``overwrite`` is off).
    """
    out = Path(cfg.store)
    if cfg.teacher.kind == "imported":
        return _imported_store(cfg, out, log)
    group = _dist.join()
    try:
        store = _extract(cfg, out, group, overwrite, progress, log, overwrite_hint)
    except BaseException:
        group.leave(ok=False)
        raise
    group.leave()
    return store


def _extract(cfg: RunConfig, out: Path, group: _dist.Group, overwrite: bool, progress: bool, log,
             overwrite_hint: str | None) -> FeatureStore:
    partial = Path(str(out) + ".partial")
    if not group.main:  # rank 0 speaks for the group
        progress, log = False, (lambda *_: None)
    dataset = load_dataset(cfg.data)
    device = _dist.rank_device(resolve_device(cfg.teacher.device), group)
    t0 = time.perf_counter()
    teacher = build_teacher(cfg.teacher, device)
    expected = _expected_manifest(cfg, teacher, dataset)
    replace = False
    if (out / MANIFEST).is_file():
        found = json.loads((out / MANIFEST).read_text())
        diff = describe_mismatch(found, expected, _COMPARED)
        if not diff:
            log(f"feature store {out} is up to date; nothing to extract")
            if (found.get("shard_rows") or None) != (cfg.store_shard_rows or None):
                log(f"(it was written with store_shard_rows={found.get('shard_rows')}; the setting applies to new stores)")
            return FeatureStore.open(out)
        if not overwrite:
            hint = overwrite_hint or (f"To rebuild it, delete {out} (or run `dsmd extract --overwrite` with this "
                                      "config); or choose another store=PATH.")
            raise DsmdError(f"feature store {out} exists but was built differently ({'; '.join(diff)[:400]}). {hint}")
        replace = True
    group.barrier()  # every rank has looked at the folders before rank 0 changes them
    pending_file = partial / "pending.json"
    chunk_size = CHUNK_SIZE
    if group.main:
        if replace:
            shutil.rmtree(out)
        if partial.is_dir():
            pending = json.loads(pending_file.read_text()) if pending_file.is_file() else {}
            if describe_mismatch(pending, expected, _COMPARED):
                shutil.rmtree(partial)
            elif pending.get("chunk_size") != chunk_size and (partial / "chunks").exists():
                shutil.rmtree(partial / "chunks")  # chunks of another size do not line up
        partial.mkdir(parents=True, exist_ok=True)
        write_json_atomic(pending_file, {**expected, "chunk_size": chunk_size})
    group.barrier()
    views = {split: cfg.store_views if split == "train" else 0 for split in SPLITS}
    todo = []
    for split in SPLITS:
        if (partial / f"{split}.files.json").is_file():
            log(f"{split}: already extracted (resuming)")
            continue
        todo.append(split)
        chunk_folder = partial / "chunks" / split
        if chunk_folder.is_dir() and any(chunk_folder.glob("*.safetensors")):
            log(f"{split}: resuming from {len(list(chunk_folder.glob('*.safetensors')))} finished chunks")
    if group.world_size > 1:
        tasks = _chunk_tasks(dataset, todo, views, chunk_size)
        mine = tasks[group.rank::group.world_size]
        log(f"{group.world_size} processes share {len(tasks)} chunks")
        t_share = time.perf_counter()
        _compute_share(cfg, teacher, dataset, partial, mine, device, chunk_size, progress)
        log(f"rank 0 finished its {len(mine)} chunks in {time.perf_counter() - t_share:.1f} s; waiting for the other ranks")
        group.barrier()  # every chunk is on disk
    if group.main:
        for split in todo:
            data = dataset[split]
            chunk_folder = partial / "chunks" / split
            t_split = time.perf_counter()
            feats = teacher_features(teacher, data, cfg.teacher.batch_size, cfg.teacher.normalize, device,
                                     cfg.data.num_workers, progress, views=views[split], chunk_folder=chunk_folder,
                                     chunk_size=chunk_size)
            for stale in [*partial.glob(f"{split}.safetensors"), *partial.glob(f"{split}-*-of-*.safetensors")]:
                stale.unlink()  # of an earlier attempt, perhaps with another store_shard_rows
            # (shard_rows only when sharding: write_split's four-argument form stays the common one)
            sharding = {"shard_rows": cfg.store_shard_rows} if cfg.store_shard_rows else {}
            records = write_split(partial, split, feats, expected["dtype"], **sharding)
            write_json_atomic(partial / f"{split}.files.json", records)
            shutil.rmtree(chunk_folder, ignore_errors=True)
            seconds = time.perf_counter() - t_split
            log(f"{split}: {data.num_images} images, {len(data)} captions ({seconds:.1f} s)")
        shutil.rmtree(partial / "chunks", ignore_errors=True)
        markers = [partial / f"{split}.files.json" for split in SPLITS]
        expected["files"] = {split: json.loads(m.read_text()) for split, m in zip(SPLITS, markers, strict=True)}
        expected["shard_rows"] = cfg.store_shard_rows or None
        expected["created"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        expected["dsmd_version"] = dsmd.__version__
        expected["seconds"] = round(time.perf_counter() - t0, 2)
        write_json_atomic(partial / MANIFEST, expected)
        for m in markers:
            m.unlink()
        pending_file.unlink()
        partial.rename(out)
    group.barrier()  # the store is in place
    return FeatureStore.open(out)
