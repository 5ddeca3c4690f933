"""A shipped paper config, end to end, with tiny stand-ins for the downloads.

``dsmd extract/train/eval --config paper_f30k_beit3_base`` with the paths overridden to a
Karpathy JSON of generated images (5 captions each), a tiny BEiT-3 in the official checkpoint
layout with its sentencepiece tokenizer, and tiny ViT / BERT towers: the commands of the
GPU walkthrough of docs/paper.md, on CPU. Then the bad inputs a user meets: a split that does not
exist, an image listed but missing, a store built by another teacher.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from dsmd.cli import main
from dsmd.config import load_config
from dsmd.data.datasets import load_dataset
from dsmd.data.synthetic import write_synthetic_dataset
from dsmd.store.feature_store import FeatureStore
from dsmd.teachers import build_teacher

pytestmark = pytest.mark.e2e  # whole commands on tiny models: the end-to-end tier


def _cli(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    out = capsys.readouterr()
    return info.value.code, out.out, out.err


def _karpathy(folder: Path) -> Path:
    """A Flickr30k-style Karpathy JSON: 20 images (12 train, 4 val, 4 test), 5 sentences each."""
    manifest = write_synthetic_dataset(folder / "flickr30k-images", num_images=20, captions_per_image=5, size=32)
    rows = [json.loads(line) for line in Path(manifest).read_text().splitlines()]
    images = []
    for i, row in enumerate(rows):
        split = "train" if i < 12 else "val" if i < 16 else "test"
        images.append(
            {
                "filename": Path(row["image"]).name,
                "imgid": i,
                "split": split,
                "sentences": [{"raw": c, "tokens": c.lower().split()} for c in row["captions"]],
            }
        )
    path = folder / "dataset_flickr30k.json"
    path.write_text(json.dumps({"images": images, "dataset": "flickr30k"}))
    return path


@pytest.fixture
def paper_run(beit3_files, tiny_models, tmp_path) -> list[str]:
    """Overrides that point ``paper_f30k_beit3_base`` at the tiny stand-ins."""
    karpathy = _karpathy(tmp_path / "flickr30k")
    return [
        f"data.manifest={karpathy}",
        f"data.root={karpathy.parent / 'flickr30k-images'}",
        "data.num_workers=0",
        f"teacher.name_or_path={beit3_files.checkpoint}",
        f"teacher.tokenizer={beit3_files.tokenizer}",
        "teacher.batch_size=8",
        "teacher.device=cpu",
        f"student.vision={tiny_models['vit']}",
        f"student.text={tiny_models['bert']}",
        "student.image_size=32",
        "student.max_text_length=16",
        "loss.queue_size=32",
        "train.batch_size=8",
        "train.epochs=1",
        "train.max_steps=3",
        "train.eval_batch_size=16",
        "train.device=cpu",
        f"store={tmp_path / 'store'}",
        f"out_dir={tmp_path / 'run'}",
    ]


def test_paper_config_extract_train_eval(paper_run, beit3_files, tmp_path, capsys):
    config = ["--config", "paper_f30k_beit3_base"]
    code, out, err = _cli(["extract", "--quiet", *config, *paper_run], capsys)
    assert code == 0, err
    store = FeatureStore.open(tmp_path / "store")
    assert store.dim == beit3_files.config.embed_dim and store.teacher["kind"] == "beit3"
    assert store.manifest["normalized"] is True
    # Karpathy splits with all five captions: 12 / 4 / 4 images
    assert store.split("train").image.shape[0] == 12 and store.split("train").text.shape[0] == 60
    assert store.split("test").caption_image.tolist() == [i // 5 for i in range(20)]

    # The stored rows are the teacher's L2-normalised features of those captions and images.
    cfg = load_config("paper_f30k_beit3_base", paper_run)
    test = load_dataset(cfg.data)["test"]
    teacher = build_teacher(cfg.teacher)
    expected = F.normalize(teacher.encode_texts(test.captions[:3]), dim=-1)
    torch.testing.assert_close(store.split("test").text[:3], expected, rtol=1e-4, atol=1e-5)

    code, out, err = _cli(["train", "--quiet", *config, *paper_run], capsys)
    assert code == 0, err
    steps = (tmp_path / "run" / "steps.jsonl").read_text().splitlines()
    assert len(steps) == 3 and {"cd", "fd", "sd", "hnd", "w_cd"} <= set(json.loads(steps[-1]))

    best = tmp_path / "run" / "checkpoints" / "best.pt"
    code, out, err = _cli(["eval", "--checkpoint", str(best), "--split", "test", "--json"], capsys)
    assert code == 0, err
    metrics = json.loads(out)
    assert 0 <= metrics["rsum"] <= 600 and set(metrics) >= {"i2t_r1", "t2i_r10"}
    code, out, err = _cli(["eval", "--store", str(tmp_path / "store"), "--split", "test", "--json"], capsys)
    assert code == 0, err

    # A split that does not exist, and a store built by another teacher.
    code, _, err = _cli(["eval", "--checkpoint", str(best), "--split", "dev"], capsys)
    assert code == 2 and "unknown split 'dev'" in err
    code, _, err = _cli(
        ["train", "--quiet", *config, *paper_run, "teacher.kind=offline", f"out_dir={tmp_path / 'run2'}"], capsys
    )
    assert code == 2 and "teacher" in err and str(tmp_path / "store") in err


def test_paper_config_missing_image_names_the_json_file(paper_run, capsys):
    cfg = load_config("paper_f30k_beit3_base", paper_run)
    missing = Path(cfg.data.root) / "0003.png"
    first = sorted(Path(cfg.data.root).glob("*.png"))[3]
    first.rename(missing.with_suffix(".moved"))
    code, _, err = _cli(["extract", "--quiet", "--config", "paper_f30k_beit3_base", *paper_run], capsys)
    assert code == 2
    assert "dataset_flickr30k.json" in err and first.name in err
