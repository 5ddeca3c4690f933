import json

from dsmd.data import offline_benchmark as ob


def test_clip_art_test_images_by_top_level_category(tmp_path, monkeypatch):
    monkeypatch.setattr(ob, "OPENCLIPART", tmp_path / "openclipart")
    rows = []
    for category, sub, count, split in (
        ("animals", "birds", 2, "test"),
        ("food", "", 3, "test"),
        ("tools", "", 1, "test"),
        ("food", "", 2, "train"),
    ):
        for i in range(count):
            image = tmp_path / "openclipart" / "png" / category / sub / f"{split}{i}.png"
            image.parent.mkdir(parents=True, exist_ok=True)
            image.write_bytes(b"png")
            rows.append({"image": str(image), "captions": [f"c{i}"], "split": split, "source": "clipart"})
    rows.append({"image": str(image), "captions": ["x"], "split": "test", "source": "emoji"})
    (tmp_path / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    counts = ob.write_zero_shot_folders(tmp_path / "out", tmp_path / "manifest.jsonl")
    assert counts == {"animals": 2, "food": 3}  # tools: one test image, no class; train images left out
    links = sorted(p.relative_to(tmp_path / "out" / "zero_shot" / "clipart") for p in (tmp_path / "out").rglob("*.png"))
    assert [str(p) for p in links] == [
        "animals/test0.png",
        "animals/test1.png",
        "food/test0.png",
        "food/test1.png",
        "food/test2.png",
    ]
    assert ob.write_zero_shot_folders(tmp_path / "out", tmp_path / "manifest.jsonl") == counts  # again: the same
