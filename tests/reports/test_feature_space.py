"""``dsmd plot-space``: one PCA of the teacher's features, teacher and student drawn on its axes."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from dsmd.cli import main
from dsmd.data.datasets import CaptionedImages
from dsmd.reports.feature_space import captured_variance_ratio, fit_pca, plot_feature_space, subsample
from dsmd.store import FeatureStore
from dsmd.store.manifest import seal
from students import train_tiny


@pytest.fixture(scope="module")
def run(tiny_models, synthetic_manifest, tmp_path_factory):
    return train_tiny(tiny_models, synthetic_manifest, tmp_path_factory.mktemp("feature_space"))


def _cli(argv, capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main(argv)
    captured = capsys.readouterr()
    return info.value.code, captured.out, captured.err


def _teacher_rows(store, split="test") -> np.ndarray:
    feats = FeatureStore.open(store).split(split)
    return np.concatenate([feats.image.numpy(), feats.text.numpy()]).astype(np.float64)


def test_plot_is_a_png_with_the_teachers_top_components(run, tmp_path):
    out = tmp_path / "figs" / "space.png"  # the folder is created
    result = plot_feature_space(run["checkpoint"], out=out)
    with Image.open(out) as img:
        assert img.format == "PNG" and img.width >= 600 and img.height >= 600
    assert out.stat().st_size > 20_000 and not list(out.parent.glob("*.tmp"))
    assert (result["n_images"], result["n_captions"]) == (6, 12) == (result["split_images"], result["split_captions"])

    ratios = result["teacher_explained_variance_ratio"]
    assert len(ratios) == 3 and all(0 < r <= 1 for r in ratios) and ratios == sorted(ratios, reverse=True)
    # Independently: the eigenvalues of the teacher's covariance (numpy), largest first.
    rows = _teacher_rows(run["store"])
    eigenvalues = np.linalg.eigh(np.cov(rows, rowvar=False))[0][::-1]
    np.testing.assert_allclose(ratios, eigenvalues[:3] / eigenvalues.sum(), rtol=1e-6)
    assert result["teacher_explained_variance"] == pytest.approx(sum(ratios))
    student = result["student_captured_variance_ratio"]
    assert len(student) == 3 and all(0 <= r <= 1 for r in student) and 0 < sum(student) <= 1 + 1e-9


def test_pca_projections_have_the_top_eigenvalues_as_variances(run):
    rows = _teacher_rows(run["store"])
    pca = fit_pca(torch.from_numpy(rows), 3)
    projected = pca.project(torch.from_numpy(rows)).numpy()
    covariance = np.cov(rows, rowvar=False)
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)
    np.testing.assert_allclose(projected.var(0, ddof=1), eigenvalues[::-1][:3], rtol=1e-6)
    np.testing.assert_allclose(np.cov(projected, rowvar=False), np.diag(eigenvalues[::-1][:3]), atol=1e-9)
    # The axes are the top eigenvectors, up to sign.
    np.testing.assert_allclose(np.abs(pca.axes.numpy() @ eigenvectors[:, ::-1][:, :3]), np.eye(3), atol=1e-6)
    assert pca.total_variance == pytest.approx(np.trace(covariance))
    # The teacher's own features on its own axes capture exactly the explained share.
    np.testing.assert_allclose(captured_variance_ratio(pca, torch.from_numpy(rows)), pca.explained_variance_ratio)


def test_subsample_is_deterministic_and_keeps_captions_with_their_images():
    data = CaptionedImages([f"{i}.png" for i in range(50)], [f"c{j}" for j in range(150)], [j // 3 for j in range(150)])
    images, captions = subsample(data, 10)
    assert (images, captions) == subsample(data, 10)
    assert len(images) == 10 and images == sorted(images) and len(captions) == 10 and captions == sorted(captions)
    assert {data.caption_image[j] for j in captions} <= set(images)
    assert subsample(data, 1000) == (list(range(50)), list(range(150)))


def test_cli_writes_the_picture(run, tmp_path, capsys):
    out = tmp_path / "space.png"
    code, text, err = _cli(
        ["plot-space", "--checkpoint", str(run["checkpoint"]), "--out", str(out), "--max-points", "4"], capsys
    )
    assert code == 0, err
    assert f"{out}: 4 images and 4 captions of split test" in text and "of the teacher's variance" in text
    assert Image.open(out).format == "PNG"


def _refused(argv, capsys, *fragments: str) -> str:
    code, out, err = _cli(["plot-space", *argv], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and out == "", err
    assert len(lines) == 1 and lines[0].startswith("dsmd: error: "), err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def test_a_missing_store_names_the_option(run, tmp_path, capsys):
    # The run's store has moved: the checkpoint's path no longer holds it.
    moved = tmp_path / "moved_store"
    shutil.copytree(run["store"], moved)
    checkpoint = tmp_path / "best.pt"
    state = torch.load(run["checkpoint"], weights_only=True)
    state["config"]["store"] = str(tmp_path / "gone")
    torch.save(state, checkpoint)
    out = tmp_path / "space.png"
    _refused(
        ["--checkpoint", str(checkpoint), "--out", str(out)],
        capsys,
        f"the checkpoint's store {tmp_path / 'gone'} is missing: pass --store PATH",
    )
    assert not out.exists()
    code, _, err = _cli(
        ["plot-space", "--checkpoint", str(checkpoint), "--store", str(moved), "--out", str(out)], capsys
    )
    assert code == 0, err
    assert out.is_file()
    _refused(
        ["--checkpoint", str(checkpoint), "--store", str(tmp_path / "none"), "--out", str(out)],
        capsys,
        "no feature store",
    )


def test_a_split_the_store_lacks(run, tmp_path, capsys):
    store = tmp_path / "store"
    shutil.copytree(run["store"], store)
    manifest = json.loads((store / "manifest.json").read_text())
    del manifest["splits"]["val"]
    manifest.get("files", {}).pop("val", None)
    (store / "manifest.json").write_text(json.dumps(seal(manifest)))
    argv = [
        "--checkpoint",
        str(run["checkpoint"]),
        "--store",
        str(store),
        "--split",
        "val",
        "--out",
        str(tmp_path / "a.png"),
    ]
    _refused(argv, capsys, "has no split 'val'")
    _refused(
        ["--checkpoint", str(run["checkpoint"]), "--split", "dev", "--out", str(tmp_path / "a.png")], capsys, "'dev'"
    )


def test_an_out_that_cannot_be_written(run, tmp_path, capsys):
    (tmp_path / "file").write_text("")
    checkpoint = str(run["checkpoint"])
    _refused(["--checkpoint", checkpoint, "--out", str(tmp_path / "file" / "a.png")], capsys, "is a file, not a folder")
    _refused(["--checkpoint", checkpoint, "--out", str(tmp_path / "a.jpg")], capsys, "name it FILE.png")
    _refused(["--checkpoint", checkpoint, "--out", str(tmp_path)], capsys, "is a folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]
