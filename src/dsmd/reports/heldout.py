"""Images of other kinds than the training data: teacher and student scored on sets that no
training, choice or calibration uses.

``dsmd demo`` trains on Tux Paint's photo stamps; its held-out kinds are the test images of the
offline benchmark's emoji and clip art (:mod:`dsmd.data.offline_benchmark`; Debian
``fonts-noto-color-emoji``, ``openclipart-png`` and ``openclipart-svg``, which ``scripts/setup.sh``
installs). The benchmark is built into ``FOLDER`` once, and each kind's test lines are written
to ``FOLDER/S.jsonl``. The teacher's features of a set are kept in ``FOLDER/teacher_S.safetensors``,
keyed by the set's fingerprint and the teacher's identity, so a second demo does not run the
teacher again.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader

from dsmd.config import DataConfig
from dsmd.data.datasets import CaptionedImages, load_split
from dsmd.data.loader import ImageDataset, collate_images
from dsmd.errors import DsmdError
from dsmd.evaluation.retrieval import retrieval_metrics
from dsmd.evaluation.student_eval import encode_split
from dsmd.runtime.files import write_text_atomic

KINDS = {"emoji": "emoji", "clipart": "clip art"}  # benchmark source -> the name people read


def build_heldout_sets(folder: str | Path, log=print) -> dict[str, Path]:
    """``{source: FOLDER/source.jsonl}``: the test images of the benchmark's emoji and clip art.

    Returns ``{}`` (and says why in one line) when the Debian packages are missing.
    """
    from dsmd.data.offline_benchmark import build_offline_benchmark

    folder = Path(folder)
    sets = {source: folder / f"{source}.jsonl" for source in KINDS}
    if all(path.is_file() for path in sets.values()):
        return sets
    try:
        manifest = build_offline_benchmark(folder / "benchmark", log=lambda *_: None)
    except DsmdError as exc:
        log(f"held-out kinds skipped: {exc}")
        return {}
    records = [json.loads(line) for line in manifest.read_text(encoding="utf-8").splitlines() if line.strip()]
    for record in records:  # the manifest's paths are relative to its folder
        record["image"] = str((manifest.parent / record["image"]).resolve())
    for source, path in sets.items():
        test = [r for r in records if r["source"] == source and r["split"] == "test"]
        write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in test))
    return sets


def heldout_data(manifest: str | Path) -> CaptionedImages:
    """The test split of a held-out set's manifest."""
    return load_split(DataConfig(kind="manifest", manifest=str(manifest)), "test")


def _cached(cache: Path, key: str) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The features ``cache`` holds for ``key``; None when it holds others, or is missing or damaged
    (a cache: computed again)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(cache), "pt") as f:
            meta = f.metadata() or {}
            if meta.get("key") != key:
                return None
        stored = load_file(str(cache))
        image, text = stored["image"], stored["text"]
    except (OSError, SafetensorError, KeyError, ValueError):
        return None
    return (image, text) if meta.get("sha256") == _digest(image, text) else None


def _digest(image: torch.Tensor, text: torch.Tensor) -> str:
    """sha256 of the two feature tables' bytes (the cache's check of its own content)."""
    return hashlib.sha256(image.numpy().tobytes() + text.numpy().tobytes()).hexdigest()


@torch.inference_mode()
def teacher_features(
    teacher, data: CaptionedImages, cache: Path, device: torch.device, batch_size: int = 64
) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher's L2-normalised image ``(N_i, D)`` and caption ``(N_t, D)`` features of ``data``,
    float32, read from ``cache`` when it holds them for this data and teacher."""
    key = json.dumps({"data": data.fingerprint(), "teacher": teacher.identity()}, sort_keys=True)
    if (stored := _cached(cache, key)) is not None:
        return stored
    loader = DataLoader(ImageDataset(data, teacher.image_transform), batch_size=batch_size, collate_fn=collate_images)
    image = torch.cat([teacher.encode_images(px.to(device)).float().cpu() for _, px in loader])
    text = torch.cat(
        [
            teacher.encode_texts(data.captions[i : i + batch_size]).float().cpu()
            for i in range(0, len(data.captions), batch_size)
        ]
    )
    image, text = torch.nn.functional.normalize(image, dim=-1), torch.nn.functional.normalize(text, dim=-1)
    cache.parent.mkdir(parents=True, exist_ok=True)
    partial = cache.with_suffix(".partial")
    image, text = image.contiguous(), text.contiguous()
    save_file({"image": image, "text": text}, str(partial), metadata={"key": key, "sha256": _digest(image, text)})
    partial.replace(cache)
    return image, text


def heldout_rows(teacher, student, manifest: str | Path, cache: Path, device: torch.device) -> dict:
    """Teacher and student on one held-out set: ``{"images", "captions", "teacher": metrics,
    "student": metrics}`` (metrics ``i2t_r1 .. rsum``, percent)."""
    data = heldout_data(manifest)
    ids = torch.tensor(data.caption_image)
    image, text = teacher_features(teacher, data, cache, device)
    student.eval()
    s_image, s_text = encode_split(student, data, 128, device)
    return {
        "images": data.num_images,
        "captions": len(data),
        "teacher": retrieval_metrics(image, text, ids),
        "student": retrieval_metrics(s_image, s_text, ids),
    }
