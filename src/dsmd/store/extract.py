"""Run the teacher once over a dataset and write its features into a feature store.

Extraction goes split by split into ``STORE.partial/``; each finished split is written
atomically, so an interrupted extraction resumes where it stopped (with the same teacher and
data), and the folder is renamed to ``STORE`` only when every split is there.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

import dsmd
from dsmd.config import RunConfig, config_to_dict
from dsmd.data.datasets import SPLITS, CaptionedImages, load_dataset
from dsmd.data.loader import ImageDataset, collate_images
from dsmd.errors import DsmdError
from dsmd.store.feature_store import (
    FORMAT_VERSION,
    MANIFEST,
    FeatureStore,
    SplitFeatures,
    describe_mismatch,
    write_json_atomic,
    write_split,
)
from dsmd.teachers import Teacher, build_teacher
from dsmd.training.device import resolve_device


@torch.inference_mode()
def teacher_features(
    teacher: Teacher, data: CaptionedImages, batch_size: int, normalize: bool, device: torch.device,
    num_workers: int = 0, progress: bool = True, views: int = 0,
) -> SplitFeatures:
    """Encode every image once and every caption once (and ``views`` augmented views per image).

    Returns:
        :class:`SplitFeatures` with ``image (N_i, D)``, ``text (N_t, D)`` and, with views,
        ``image_views (N_i, views, D)``, float32 on the CPU.
    """
    loader = DataLoader(ImageDataset(data, teacher.image_transform), batch_size=batch_size,
                        num_workers=num_workers, collate_fn=collate_images)
    images = []
    for _, pixels in tqdm(loader, desc=f"teacher images {data.name}", disable=not progress, leave=False):
        images.append(teacher.encode_images(pixels.to(device)).float().cpu())
    texts = []
    for start in tqdm(range(0, len(data.captions), batch_size), desc=f"teacher captions {data.name}",
                      disable=not progress, leave=False):
        texts.append(teacher.encode_texts(data.captions[start:start + batch_size]).float().cpu())
    image, text = torch.cat(images), torch.cat(texts)
    image_views = None
    if views:
        per_view = []
        for v in range(views):
            ds = ImageDataset(data, teacher.image_transform, view=v)
            loader = DataLoader(ds, batch_size=batch_size, num_workers=num_workers, collate_fn=collate_images)
            per_view.append(torch.cat([teacher.encode_images(px.to(device)).float().cpu() for _, px in
                                       tqdm(loader, desc=f"teacher view {v + 1}/{views} {data.name}",
                                            disable=not progress, leave=False)]))
        image_views = torch.stack(per_view, dim=1)
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


def extract(cfg: RunConfig, overwrite: bool = False, progress: bool = True, log=print) -> FeatureStore:
    """Build (or reuse) the feature store ``cfg.store`` for ``cfg.data`` with ``cfg.teacher``.

    A complete store that matches the teacher and data is reused; one that does not is refused
    unless ``overwrite``.

    Raises:
        DsmdError: the store exists for another teacher or dataset (and ``overwrite`` is off).
    """
    out = Path(cfg.store)
    partial = Path(str(out) + ".partial")
    dataset = load_dataset(cfg.data)
    device = resolve_device(cfg.teacher.device)
    t0 = time.perf_counter()
    teacher = build_teacher(cfg.teacher, device)
    expected = _expected_manifest(cfg, teacher, dataset)
    if (out / MANIFEST).is_file():
        found = json.loads((out / MANIFEST).read_text())
        diff = describe_mismatch(found, expected, _COMPARED)
        if not diff:
            log(f"feature store {out} is up to date; nothing to extract")
            return FeatureStore.open(out)
        if not overwrite:
            raise DsmdError(
                f"feature store {out} exists but was built differently ({'; '.join(diff)[:400]}). "
                "Pass --overwrite to replace it, or choose another store=PATH."
            )
        shutil.rmtree(out)
    pending_file = partial / "pending.json"
    if partial.is_dir():
        pending = json.loads(pending_file.read_text()) if pending_file.is_file() else {}
        if describe_mismatch(pending, expected, _COMPARED):
            shutil.rmtree(partial)
    partial.mkdir(parents=True, exist_ok=True)
    write_json_atomic(pending_file, expected)
    for split in SPLITS:
        if (partial / f"{split}.safetensors").is_file():
            log(f"{split}: already extracted (resuming)")
            continue
        feats = teacher_features(teacher, dataset[split], cfg.teacher.batch_size, cfg.teacher.normalize,
                                 device, cfg.data.num_workers, progress,
                                 views=cfg.store_views if split == "train" else 0)
        write_split(partial, split, feats, expected["dtype"])
        log(f"{split}: {dataset[split].num_images} images, {len(dataset[split])} captions")
    expected["created"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    expected["dsmd_version"] = dsmd.__version__
    expected["seconds"] = round(time.perf_counter() - t0, 2)
    write_json_atomic(partial / MANIFEST, expected)
    pending_file.unlink()
    partial.rename(out)
    return FeatureStore.open(out)
