"""Zero-shot classification, checked against a slow reference of CLIP_benchmark's formulas."""

from __future__ import annotations

import json
import math

import pytest
import torch
from PIL import Image

from dsmd.cli import main
from dsmd.errors import DsmdError
from dsmd.evaluation.zero_shot import class_folders, read_templates, zero_shot_classifier, zero_shot_metrics


def _slow_classifier(encode, names, templates):
    columns = []
    for name in names:
        rows = []
        for t in templates:
            v = [float(x) for x in encode([t.replace("{c}", name)])[0]]
            n = math.sqrt(sum(x * x for x in v))
            rows.append([x / n for x in v])
        mean = [sum(r[d] for r in rows) / len(rows) for d in range(len(rows[0]))]
        n = math.sqrt(sum(x * x for x in mean))
        columns.append([x / n for x in mean])
    return columns  # C lists of D


def _slow_metrics(images, columns, labels):
    top1 = top5 = 0
    per_class: dict[int, list[int]] = {}
    for v, y in zip(images.tolist(), labels, strict=True):
        n = math.sqrt(sum(x * x for x in v))
        scores = [sum(a / n * b for a, b in zip(v, c, strict=True)) for c in columns]
        ranked = sorted(range(len(scores)), key=lambda k: -scores[k])
        top1 += ranked[0] == y
        top5 += y in ranked[:5]
        per_class.setdefault(y, []).append(ranked[0] == y)
    return top1 / len(labels), top5 / len(labels), sum(sum(h) / len(h) for h in per_class.values()) / len(per_class)


def test_classifier_and_metrics_match_a_slow_reference():
    g = torch.Generator().manual_seed(0)
    table = {}

    def encode(texts):  # a fixed random vector per prompt
        return torch.stack([table.setdefault(t, torch.randn(6, generator=g)) for t in texts])

    names, templates = [f"class {i}" for i in range(7)], ["a photo of a {c}.", "a drawing of a {c}.", "{c}"]
    classifier = zero_shot_classifier(encode, names, templates)
    slow = _slow_classifier(encode, names, templates)
    assert classifier.shape == (6, 7)
    assert torch.allclose(classifier, torch.tensor(slow).T, atol=1e-6)
    images = torch.randn(40, 6, generator=g) * 3
    labels = [i % 7 for i in range(40)]
    got = zero_shot_metrics(images, classifier, labels)
    assert (got["acc1"], got["acc5"], got["mean_per_class_recall"]) == pytest.approx(
        _slow_metrics(images, slow, labels)
    )
    perfect = zero_shot_metrics(classifier.T[labels] * 2, classifier, labels)
    assert perfect == {"acc1": 1.0, "acc5": 1.0, "mean_per_class_recall": 1.0}


def _folders(root):
    colours = {"red_thing": (220, 20, 20), "green_thing": (20, 180, 40), "blue_thing": (30, 40, 220)}
    for name, colour in colours.items():
        (root / name / "deeper").mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (24, 24), colour).save(root / name / ("deeper" if i else "") / f"{i}.png")
    return root


def test_class_folders_and_their_errors(tmp_path):
    paths, labels, names = class_folders(_folders(tmp_path / "data"))
    assert names == ["blue thing", "green thing", "red thing"] and labels == [0, 0, 1, 1, 2, 2] and len(paths) == 6
    (tmp_path / "names.txt").write_text("azure\nlime\n")
    with pytest.raises(DsmdError, match="2 class names for 3 class folders"):
        class_folders(tmp_path / "data", tmp_path / "names.txt")
    (tmp_path / "empty" / "only").mkdir(parents=True)
    with pytest.raises(DsmdError, match="needs at least two"):
        class_folders(tmp_path / "empty")
    (tmp_path / "t.txt").write_text("a photo of a thing\n")
    with pytest.raises(DsmdError, match=r"needs \{c\}"):
        read_templates(tmp_path / "t.txt")


def test_dsmd_zero_shot_writes_clip_benchmarks_record(tiny_models, synthetic_manifest, tmp_path, capsys):
    from students import train_tiny

    run = train_tiny(tiny_models, synthetic_manifest, tmp_path / "run")
    data = _folders(tmp_path / "colours")
    with pytest.raises(SystemExit) as done:
        main(["zero-shot", "--quiet", str(data), "--model", str(run["checkpoint"]), "--out", str(tmp_path / "r.json")])
    assert done.value.code in (0, None)
    record = json.loads((tmp_path / "r.json").read_text())
    assert {k: record[k] for k in ("dataset", "task", "language", "images", "classes")} == {
        "dataset": "colours",
        "task": "zeroshot_classification",
        "language": "en",
        "images": 6,
        "classes": 3,
    }
    assert set(record["metrics"]) == {"acc1", "acc5", "mean_per_class_recall"} and record["metrics"]["acc5"] == 1.0
    assert "mean per-class recall" in capsys.readouterr().out
