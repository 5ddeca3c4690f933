"""The teacher's and the student's feature spaces in one picture (the paper's Figure 2): ``dsmd plot-space``.

One PCA (3 components, centred) is fitted on the teacher's stored features of a split, images
and captions together; the teacher's features and the student's (the checkpoint's student
encodes the same images and captions) are projected with it, by the same affine map, so both
panels share axes: top, the 3-D view; bottom, PC1 against PC2; images red, captions blue.

The titles give the share of the teacher's variance the three components explain (the fit uses
every row of the split) and the share of the student's variance the same axes capture (the
student's features centred on their own mean, over the points drawn). Splits with more than
``max_points`` images are subsampled deterministically (seed 0); then the captions of the drawn
images, again at most ``max_points``.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from dsmd.data.datasets import CaptionedImages, load_split
from dsmd.errors import DsmdError
from dsmd.evaluation.student_eval import encode_split
from dsmd.runtime.device import resolve_device
from dsmd.runtime.files import atomic_path, check_writable
from dsmd.store import MANIFEST, FeatureStore
from dsmd.training.checkpoint import checkpoint_config, load_checkpoint, student_from_state

IMAGE_COLOUR = "tab:red"
CAPTION_COLOUR = "tab:blue"


class PCA(NamedTuple):
    """A principal-component basis: ``project(x) = (x - mean) @ axes.T``.

    Attributes:
        mean: ``(D,)``, the mean of the fitted rows.
        axes: ``(k, D)``, orthonormal, by decreasing variance; each signed so that its largest
            coordinate is positive (a deterministic choice among ``±axis``).
        variance: ``(k,)``, the variance of the fitted rows along each axis (``n - 1`` divisor).
        total_variance: the sum of the variances along every direction (the covariance's trace).
    """

    mean: torch.Tensor
    axes: torch.Tensor
    variance: torch.Tensor
    total_variance: float

    def project(self, x: torch.Tensor) -> torch.Tensor:
        return (x.double() - self.mean) @ self.axes.T

    @property
    def explained_variance_ratio(self) -> list[float]:
        return [float(v) / self.total_variance for v in self.variance]


def fit_pca(x: torch.Tensor, components: int = 3) -> PCA:
    """The top ``components`` principal axes of the rows of ``x`` ``(N, D)``, in float64 (an SVD
    of the centred rows).

    Raises:
        DsmdError: fewer than ``components + 1`` rows, fewer than ``components`` columns, or rows
            with no variance.
    """
    n, dim = x.shape
    if n <= components or dim < components:
        raise DsmdError(
            f"a {components}-component PCA needs more than {components} rows and at least {components} dimensions; got {n} x {dim}."
        )
    mean = x.double().mean(0)
    _, singular, vh = torch.linalg.svd(x.double() - mean, full_matrices=False)
    variance = singular**2 / (n - 1)
    total = float(variance.sum())
    if total <= 0:
        raise DsmdError("the teacher's features have no variance: there is nothing to plot.")
    axes = vh[:components]
    signs = torch.sign(axes.gather(1, axes.abs().argmax(1, keepdim=True)))
    return PCA(mean, axes * signs, variance[:components], total)


def captured_variance_ratio(pca: PCA, x: torch.Tensor) -> list[float]:
    """The share of the variance of the rows of ``x`` (centred on their own mean) along each of
    ``pca``'s axes."""
    centred = x.double() - x.double().mean(0)
    total = float(centred.pow(2).sum()) / max(len(x) - 1, 1)
    along = (centred @ pca.axes.T).pow(2).sum(0) / max(len(x) - 1, 1)
    return [float(v) / total if total > 0 else 0.0 for v in along]


def subsample(data: CaptionedImages, max_points: int, seed: int = 0) -> tuple[list[int], list[int]]:
    """Image rows and caption rows to draw: every one when there are at most ``max_points``, else
    a seeded random choice of ``max_points`` images, then of at most ``max_points`` of their
    captions (both in the split's order)."""
    generator = torch.Generator().manual_seed(seed)

    def choose(n: int) -> list[int]:
        return (
            list(range(n)) if n <= max_points else sorted(torch.randperm(n, generator=generator)[:max_points].tolist())
        )

    images = choose(data.num_images)
    chosen = set(images)
    captions = [j for j, i in enumerate(data.caption_image) if i in chosen]
    return images, [captions[k] for k in choose(len(captions))]


def _subset(data: CaptionedImages, images: list[int], captions: list[int]) -> CaptionedImages:
    row = {old: new for new, old in enumerate(images)}
    return CaptionedImages(
        [data.image_paths[i] for i in images],
        [data.captions[j] for j in captions],
        [row[data.caption_image[j]] for j in captions],
        f"{data.name} (drawn)",
    )


def _check_out(out: Path) -> None:
    if out.is_dir():
        raise DsmdError(f"--out {out} is a folder; give the PNG file to write, e.g. {out / 'feature_space.png'}.")
    if out.suffix.lower() != ".png":
        raise DsmdError(f"--out {out}: the picture is a PNG; name it FILE.png.")
    check_writable(out.parent, "--out")


def _open_store(store: str | Path | None, default: str, split: str, cfg) -> FeatureStore:
    path = Path(store if store is not None else default)
    if store is None and not (path / MANIFEST).is_file():
        raise DsmdError(
            f"the checkpoint's store {path} is missing: pass --store PATH (the feature store the run was "
            "trained from, or one extracted again with the same teacher and data)."
        )
    features = FeatureStore.open(path)
    features.split(split)  # refuses a split the store lacks, naming those it has
    features.check_teacher(cfg.teacher.kind, cfg.teacher.name_or_path)
    return features


def _draw(out: Path, points: dict, titles: dict, suptitle: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(12, 10))
    every = np.concatenate([p for pair in points.values() for p in pair])
    low, high = every.min(0), every.max(0)
    pad = 0.05 * (high - low + 1e-12)
    low, high = low - pad, high + pad
    for column, who in enumerate(("teacher", "student")):
        images, captions = points[who]
        ax = fig.add_subplot(2, 2, column + 1, projection="3d")
        ax.scatter(*captions.T, s=6, c=CAPTION_COLOUR, alpha=0.5, label=f"captions ({len(captions)})")
        ax.scatter(*images.T, s=10, c=IMAGE_COLOUR, alpha=0.7, label=f"images ({len(images)})")
        ax.set(xlim=(low[0], high[0]), ylim=(low[1], high[1]), zlim=(low[2], high[2]))
        ax.set(xlabel="PC1", ylabel="PC2", zlabel="PC3")
        ax.set_title(titles[who], fontsize=10)
        ax.legend(loc="upper left", fontsize=8)
        ax = fig.add_subplot(2, 2, column + 3)
        ax.scatter(captions[:, 0], captions[:, 1], s=6, c=CAPTION_COLOUR, alpha=0.5, label="captions")
        ax.scatter(images[:, 0], images[:, 1], s=10, c=IMAGE_COLOUR, alpha=0.7, label="images")
        ax.set(xlim=(low[0], high[0]), ylim=(low[1], high[1]), xlabel="PC1", ylabel="PC2")
        ax.set_title(f"{who}: PC1 against PC2", fontsize=10)
        ax.legend(loc="best", fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(suptitle, fontsize=11)
    fig.tight_layout()
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(out) as tmp:
            fig.savefig(tmp, format="png", dpi=100)
    finally:
        plt.close(fig)


def plot_feature_space(
    checkpoint_path: str | Path,
    split: str = "test",
    out: str | Path = "feature_space.png",
    device: str | torch.device = "cpu",
    max_points: int = 1000,
    store: str | Path | None = None,
    progress: bool = False,
) -> dict:
    """Draw the teacher's and the student's features of ``split`` in the teacher's top 3 principal
    components into the PNG ``out`` (written atomically; see the module docstring).

    Args:
        checkpoint_path: a checkpoint written by ``dsmd train``.
        store: the feature store with the teacher's features (default: the checkpoint's
            ``store``).
        max_points: at most this many images, and this many captions, are drawn.

    Returns:
        ``{"out", "split", "n_images", "n_captions", "split_images", "split_captions",
        "teacher_explained_variance_ratio", "teacher_explained_variance", "student_captured_variance_ratio",
        "student_captured_variance"}``: the drawn and the split's counts, each component's share of
        the teacher's variance (decreasing) and their sum, each axis's share of the student's
        variance and their sum.

    Raises:
        DsmdError: a bad ``out`` (not .png, a folder, an unwritable folder), a missing or
            unreadable checkpoint, a missing store (with the ``--store`` to pass), a split the
            store lacks, or a store of another teacher or other data.
    """
    out = Path(out)
    _check_out(out)
    if max_points < 4:
        raise DsmdError(f"--max-points must be at least 4, got {max_points}.")
    path = Path(checkpoint_path)
    state = load_checkpoint(path)
    cfg = checkpoint_config(state)
    features = _open_store(store, cfg.store, split, cfg)
    if features.dim != int(state["dim"]):
        raise DsmdError(
            f"feature store {features.path} holds {features.dim}-d features; the student embeds in {state['dim']}-d. "
            "Pass the store of the run's teacher."
        )
    data = load_split(cfg.data, split)
    features.check_dataset(split, data.fingerprint())
    features.verify([split], progress=progress)
    teacher = features.split(split)
    t_image, t_text = teacher.image.float(), teacher.text.float()
    pca = fit_pca(torch.cat([t_image, t_text]), 3)

    images, captions = subsample(data, max_points)
    device = resolve_device(device)
    student = student_from_state(state, str(path), device)
    s_image, s_text = encode_split(
        student, _subset(data, images, captions), cfg.train.eval_batch_size, device, progress=progress
    )
    del student, state
    teacher_ratio = pca.explained_variance_ratio
    student_ratio = captured_variance_ratio(pca, torch.cat([s_image, s_text]))
    points = {
        "teacher": (pca.project(t_image[images]).numpy(), pca.project(t_text[captions]).numpy()),
        "student": (pca.project(s_image).numpy(), pca.project(s_text).numpy()),
    }
    titles = {
        "teacher": f"teacher (stored features)\nPC1-3 explain {100 * sum(teacher_ratio):.1f}% of the teacher's variance "
        f"({', '.join(f'{100 * r:.1f}' for r in teacher_ratio)}%)",
        "student": f"student, on the teacher's axes\nPC1-3 capture {100 * sum(student_ratio):.1f}% of the student's "
        f"variance ({', '.join(f'{100 * r:.1f}' for r in student_ratio)}%)",
    }
    drawn = f"{len(images)} of {data.num_images} images, {len(captions)} of {len(data)} captions"
    _draw(
        out, points, titles, f"{data.name or split}, split {split}: {drawn}; one PCA fitted on the teacher's features"
    )
    return {
        "out": str(out),
        "split": split,
        "n_images": len(images),
        "n_captions": len(captions),
        "split_images": data.num_images,
        "split_captions": len(data),
        "teacher_explained_variance_ratio": teacher_ratio,
        "teacher_explained_variance": sum(teacher_ratio),
        "student_captured_variance_ratio": student_ratio,
        "student_captured_variance": sum(student_ratio),
    }
