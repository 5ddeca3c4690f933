"""``dsmd eval``: score a student checkpoint, or a store's teacher features, on a split.

A checkpoint is rebuilt from the file alone; what may change is only which data it is scored
on (``data.*``), how (``train.device``, ``train.eval_batch_size``) and, for ``--gallery
teacher``, which store holds the teacher's features (``store=``): the model's own config
(``student.*``, ``teacher.*``, ...) is refused, since the checkpoint's weights fix it.
"""

from __future__ import annotations

from pathlib import Path

import torch

from dsmd.config import with_overrides
from dsmd.data.datasets import CaptionedImages, load_split
from dsmd.errors import DsmdError
from dsmd.evaluation.asymmetric import asymmetric_metrics
from dsmd.evaluation.retrieval import retrieval_metrics
from dsmd.evaluation.student_eval import encode_split
from dsmd.runtime.device import resolve_device
from dsmd.store import FeatureStore, SplitFeatures
from dsmd.training.checkpoint import student_from_checkpoint

EVAL_OVERRIDABLE = ("data.", "train.device=", "train.eval_batch_size=", "store=")
GALLERIES = ("student", "teacher")


def check_eval_overrides(overrides: list[str]) -> None:
    """Refuse overrides that would not change anything a checkpoint is scored with."""
    for override in overrides:
        if not override.startswith(EVAL_OVERRIDABLE):
            key = override.split("=", 1)[0]
            raise DsmdError(
                f"dsmd eval --checkpoint: '{key}' cannot be changed: the checkpoint's weights fix its model. Only "
                "data.* (which data to score), train.device, train.eval_batch_size and store= (the teacher's "
                "gallery, with --gallery teacher) apply."
            )


def teacher_gallery(store_path: str | Path, split: str, data: CaptionedImages) -> SplitFeatures:
    """The store's teacher features of ``split``, checked to be of ``data`` and verified."""
    store = FeatureStore.open(store_path)
    store.check_dataset(split, data.fingerprint())
    store.verify([split])
    return store.split(split)


def score_checkpoint(
    path: str | Path,
    split: str,
    overrides: list[str] | None = None,
    progress: bool = False,
    gallery: str = "student",
    export: str | Path | None = None,
    runtime: str = "torch",
) -> tuple[dict, dict]:
    """Retrieval metrics of a checkpoint's student on ``split`` of its data (or ``data.*`` overrides).

    Args:
        gallery: ``student`` (the student encodes queries and gallery) or ``teacher`` (the
            student's queries search the teacher's stored features of the split: asymmetric
            retrieval).
        export: an export folder of this checkpoint, to score in ``runtime`` (``torch``,
            ``onnx``, ``int8``: :mod:`dsmd.inference.onnx_runtime`) on the checkpoint's data.

    Returns:
        ``(metrics, about)``: ``i2t_r1 .. rsum`` and ``{"model", "data", "split", "images",
        "captions", "overrides", "gallery"}``.
    """
    overrides = list(overrides or [])
    check_eval_overrides(overrides)
    if gallery not in GALLERIES:
        raise DsmdError(f"--gallery must be student or teacher, got {gallery!r}.")
    student, cfg, _ = student_from_checkpoint(path)
    cfg = with_overrides(cfg, overrides)
    device = resolve_device(cfg.train.device)
    data = load_split(cfg.data, split)
    teacher = teacher_gallery(cfg.store, split, data) if gallery == "teacher" else None
    if export is not None:
        image, text = _encode_with_export(export, runtime, path, data, cfg.train.eval_batch_size, progress)
    elif runtime != "torch":
        raise DsmdError(
            f"--runtime {runtime} runs an export's files: give --export DIR (dsmd export of this checkpoint)."
        )
    else:
        image, text = encode_split(student.to(device), data, cfg.train.eval_batch_size, device, progress=progress)
    ids = torch.tensor(data.caption_image)
    if teacher is None:
        metrics = retrieval_metrics(image, text, ids)
    else:
        metrics = asymmetric_metrics(image, text, teacher.image, teacher.text, ids)
    source = cfg.data.manifest or cfg.data.root
    about = {
        "model": str(path) if export is None else f"{export} ({runtime})",
        "data": f"{cfg.data.kind} {source}",
        "split": split,
        "images": data.num_images,
        "captions": len(data),
        "overrides": overrides,
    }
    if teacher is not None:
        about["gallery"] = f"the teacher's features in {cfg.store}"
    return metrics, about


def _encode_with_export(
    export: str | Path, runtime: str, checkpoint: str | Path, data: CaptionedImages, batch_size: int, progress: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Features ``(N_i, D)``, ``(N_t, D)`` of ``data`` by the export, checked to come from ``checkpoint``."""
    from dsmd.inference import load_student
    from dsmd.runtime.checksums import sha256_file

    encoder = load_student(export, "cpu", runtime)
    if encoder.info.get("source", {}).get("sha256") != sha256_file(checkpoint):
        raise DsmdError(
            f"{export} was not exported from {checkpoint}: score an export with the checkpoint it came from."
        )
    image = encoder.encode_images(list(data.image_paths), batch_size=batch_size, progress=progress)
    text = encoder.encode_texts(list(data.captions), batch_size=batch_size, progress=progress)
    return torch.from_numpy(image), torch.from_numpy(text)


def score_store(path: str | Path, split: str, progress: bool = False) -> tuple[dict, dict]:
    """Retrieval metrics of a store's teacher features on ``split`` (verified first)."""
    store = FeatureStore.open(path)
    store.verify([split] if split in store.manifest["splits"] else [], progress=progress)
    feats = store.split(split)
    metrics = retrieval_metrics(feats.image, feats.text, feats.caption_image)
    teacher = store.teacher.get("name") or store.teacher.get("kind")
    return metrics, {
        "model": f"teacher {teacher} (stored features)",
        "data": str(path),
        "split": split,
        "images": feats.num_images,
        "captions": feats.num_captions,
        "overrides": [],
    }


def score_zero_shot(
    folder: str | Path,
    model: str | None = None,
    teacher_config: str | None = None,
    runtime: str = "torch",
    classnames: str | None = None,
    templates: str | None = None,
    batch_size: int = 64,
    progress: bool = False,
) -> dict:
    """``dsmd eval --zero-shot``: zero-shot classification of a folder of class folders
    (:mod:`dsmd.evaluation.zero_shot`) by a student (export or checkpoint) or a config's teacher.

    Returns:
        CLIP_benchmark's result record: ``{"dataset", "model", "pretrained", "task", "metrics":
        {"acc1", "acc5", "mean_per_class_recall"}, "language", "images", "classes", "templates"}``.
    """
    from dsmd.evaluation.zero_shot import class_folders, read_templates, zero_shot_classifier, zero_shot_metrics

    if (model is None) == (teacher_config is None):
        raise DsmdError(
            "--zero-shot scores one model: give --model STUDENT (an export or checkpoint) or --teacher CONFIG."
        )
    paths, labels, names = class_folders(folder, classnames)
    prompts = read_templates(templates)
    if model is not None:
        from dsmd.inference import load_student

        encoder = load_student(model, "cpu", runtime)
        classifier = zero_shot_classifier(lambda texts: torch.from_numpy(encoder.encode_texts(texts)), names, prompts)
        images = torch.from_numpy(encoder.encode_images(paths, batch_size=batch_size, progress=progress))
        name, pretrained = str(model), encoder.model_id
    else:
        from dsmd.config import load_config, packaged_config
        from dsmd.data.images import load_image
        from dsmd.teachers import build_teacher

        source = teacher_config if Path(teacher_config).is_file() else packaged_config(teacher_config)
        teacher = build_teacher(load_config(source, []).teacher, torch.device("cpu"))
        with torch.inference_mode():
            classifier = zero_shot_classifier(lambda texts: teacher.encode_texts(list(texts)), names, prompts)
            images = torch.cat(
                [
                    teacher.encode_images(
                        torch.stack([teacher.image_transform(load_image(p)) for p in paths[s : s + batch_size]])
                    )
                    for s in range(0, len(paths), batch_size)
                ]
            )
        name, pretrained = f"teacher of {teacher_config}", teacher.name
    return {
        "dataset": Path(folder).name,
        "model": name,
        "pretrained": pretrained,
        "task": "zeroshot_classification",
        "metrics": zero_shot_metrics(images, classifier, labels),
        "language": "en",
        "images": len(paths),
        "classes": len(names),
        "templates": len(prompts),
    }
