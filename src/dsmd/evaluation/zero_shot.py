"""Zero-shot classification as the field reports it (open_clip, LAION's CLIP_benchmark).

A class's weights are its name in every prompt template, each encoded and L2-normalised, their
mean normalised again; an image's class scores are its normalised features against those
weights. Metrics: top-1 and top-5 accuracy, and the mean over classes of each class's recall
(balanced accuracy), all as fractions in [0, 1], the way CLIP_benchmark writes them.

Data: a folder with one sub-folder per class (its images anywhere below it), class names from
the folder names (``_`` read as a space) or from a file with one name a line, in the folders'
sorted order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from dsmd.errors import DsmdError

# A small default set of prompt templates ({c}: the class name), covering the kinds of images
# dsmd's offline data holds (photos, drawings, icons); a templates file replaces it.
DEFAULT_TEMPLATES = (
    "a photo of a {c}.",
    "a drawing of a {c}.",
    "an icon of a {c}.",
    "a cartoon of a {c}.",
    "a picture of the {c}.",
    "a close-up photo of a {c}.",
    "a rendering of a {c}.",
    "a sketch of a {c}.",
)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")


def class_folders(
    root: str | Path, classnames_file: str | Path | None = None
) -> tuple[list[str], list[int], list[str]]:
    """``(image paths, their class indices, class names)`` of a folder of class sub-folders.

    Raises:
        DsmdError: no such folder, fewer than two classes, a class without images, or a class
            names file whose line count differs from the number of classes.
    """
    root = Path(root)
    if not root.is_dir():
        raise DsmdError(
            f"zero-shot data {root} is not a folder: give a folder with one sub-folder of images per class."
        )
    classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(classes) < 2:
        raise DsmdError(f"{root} holds {len(classes)} class folder(s): zero-shot classification needs at least two.")
    paths, labels = [], []
    for index, folder in enumerate(classes):
        images = sorted(str(p) for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            raise DsmdError(f"class folder {folder} holds no image ({', '.join(IMAGE_SUFFIXES)}).")
        paths += images
        labels += [index] * len(images)
    names = [c.name.replace("_", " ") for c in classes]
    if classnames_file is not None:
        given = [
            line.strip() for line in Path(classnames_file).read_text(encoding="utf-8").splitlines() if line.strip()
        ]
        if len(given) != len(classes):
            raise DsmdError(
                f"{classnames_file} has {len(given)} class names for {len(classes)} class folders: give one a line, "
                "in the folders' sorted order."
            )
        names = given
    return paths, labels, names


def read_templates(path: str | Path | None) -> list[str]:
    """Prompt templates, one a line with ``{c}`` for the class name (None: :data:`DEFAULT_TEMPLATES`)."""
    if path is None:
        return list(DEFAULT_TEMPLATES)
    templates = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    bad = [t for t in templates if "{c}" not in t]
    if not templates or bad:
        raise DsmdError(
            f"{path}: every template needs {{c}} for the class name ({bad[0] if bad else 'the file is empty'})."
        )
    return templates


def zero_shot_classifier(
    encode_texts: Callable[[list[str]], torch.Tensor], classnames: Sequence[str], templates: Sequence[str]
) -> torch.Tensor:
    """The classifier ``(D, C)``: per class, its templates encoded, normalised, averaged, normalised."""
    columns = []
    for name in classnames:
        embeddings = torch.as_tensor(encode_texts([t.format(c=name) for t in templates])).float()
        mean = F.normalize(embeddings, dim=-1).mean(dim=0)
        columns.append(mean / mean.norm())
    return torch.stack(columns, dim=1)


def zero_shot_metrics(
    image_features: torch.Tensor, classifier: torch.Tensor, labels: Sequence[int]
) -> dict[str, float]:
    """``acc1``, ``acc5`` and ``mean_per_class_recall`` of images ``(N, D)`` against a classifier ``(D, C)``."""
    labels_t = torch.as_tensor(list(labels))
    logits = F.normalize(torch.as_tensor(image_features).float(), dim=-1) @ classifier
    top = logits.topk(min(5, logits.shape[1]), dim=1).indices
    hit = top == labels_t[:, None]
    predicted = top[:, 0]
    recalls = [float((predicted[labels_t == c] == c).float().mean()) for c in labels_t.unique().tolist()]
    return {
        "acc1": float(hit[:, :1].any(dim=1).float().mean()),
        "acc5": float(hit.any(dim=1).float().mean()),
        "mean_per_class_recall": sum(recalls) / len(recalls),
    }
