"""The demo's held-out kinds: the benchmark's emoji and clip art test lines written apart, a
missing package a one-line skip, the teacher's features read back only for the same data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dsmd.data.synthetic import write_synthetic_dataset
from dsmd.errors import DsmdError
from dsmd.reports import heldout


def _fake_benchmark(out: Path, log=None) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    records = [
        {"image": f"{source}_{split}.png", "captions": [f"{source} {split}"], "split": split, "source": source}
        for source in ("stamps", "emoji", "clipart")
        for split in ("train", "val", "test", "test")
    ]
    manifest = out / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in records))
    return manifest


def test_the_held_out_sets_are_the_emoji_and_clip_art_test_lines(tmp_path, monkeypatch):
    import dsmd.data.offline_benchmark as ob

    monkeypatch.setattr(ob, "build_offline_benchmark", _fake_benchmark)
    sets = heldout.build_heldout_sets(tmp_path / "heldout", log=lambda *_: None)
    assert set(sets) == {"emoji", "clipart"}
    for source, path in sets.items():
        lines = [json.loads(line) for line in path.read_text().splitlines()]
        assert len(lines) == 2 and {(r["source"], r["split"]) for r in lines} == {(source, "test")}
        assert lines[0]["image"] == str((tmp_path / "heldout" / "benchmark" / f"{source}_test.png").resolve())
    monkeypatch.setattr(ob, "build_offline_benchmark", lambda *a, **k: pytest.fail("built again"))
    assert heldout.build_heldout_sets(tmp_path / "heldout", log=lambda *_: None) == sets


def test_missing_packages_skip_the_held_out_kinds_in_one_line(tmp_path, monkeypatch):
    import dsmd.data.offline_benchmark as ob

    def missing(*args, **kwargs):
        raise DsmdError("/usr/share/openclipart not found: the offline benchmark needs the Debian packages ...")

    monkeypatch.setattr(ob, "build_offline_benchmark", missing)
    said = []
    assert heldout.build_heldout_sets(tmp_path, log=said.append) == {}
    assert len(said) == 1 and said[0].startswith("held-out kinds skipped: /usr/share/openclipart not found")


class _Teacher:
    image_transform = staticmethod(
        lambda img: torch.zeros(3, 8, 8) + float(img.convert("L").resize((1, 1)).getpixel((0, 0)))
    )

    def __init__(self, name: str):
        self.name, self.calls = name, 0

    def identity(self) -> dict:
        return {"name": self.name}

    def encode_images(self, pixels):
        self.calls += 1
        return pixels.flatten(1)[:, :4] + torch.arange(4.0)

    def encode_texts(self, texts):
        return torch.stack([torch.tensor([len(t), 1.0, 2.0, 3.0]) for t in texts])


def test_the_teachers_features_are_kept_for_the_same_data_and_teacher_only(tmp_path):
    manifest = write_synthetic_dataset(tmp_path / "set", num_images=3, captions_per_image=1, size=16, seed=1)
    lines = [{**json.loads(line), "split": "test"} for line in Path(manifest).read_text().splitlines()]
    Path(manifest).write_text("".join(json.dumps(r) + "\n" for r in lines))
    data = heldout.heldout_data(manifest)
    cache = tmp_path / "teacher_set.safetensors"
    first = _Teacher("a")
    image, text = heldout.teacher_features(first, data, cache, torch.device("cpu"))
    assert image.shape == (3, 4) and torch.allclose(image.norm(dim=1), torch.ones(3))
    again = _Teacher("a")
    assert torch.equal(heldout.teacher_features(again, data, cache, torch.device("cpu"))[1], text)
    assert again.calls == 0  # read back
    other = _Teacher("b")
    heldout.teacher_features(other, data, cache, torch.device("cpu"))
    assert other.calls > 0  # another teacher: computed again
    assert not list(tmp_path.glob("*.partial"))
