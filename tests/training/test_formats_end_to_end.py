"""extract -> train 2 steps -> eval on the generated dataset written as Karpathy JSON, a Hugging
Face DatasetDict folder and (streamed) webdataset shards."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dsmd.cli import main
from dsmd.config import DataConfig, load_config
from dsmd.data.datasets import load_dataset
from dsmd.data.images import parse_ref
from dsmd.extraction.extractor import extract
from dsmd.training import train
from shard_writers import write_shards

pytestmark = pytest.mark.e2e  # whole commands on tiny models: the end-to-end tier

QUIET = dict(progress=False, log=lambda *_: None)


def _synthetic_splits(manifest: str) -> dict:
    """The generated dataset's splits (12 / 6 / 6 images, 2 captions each) as listed today."""
    return load_dataset(DataConfig(kind="manifest", manifest=manifest, val_fraction=0.25, test_fraction=0.25))


def _write_karpathy(splits: dict, folder: Path) -> list[str]:
    images = []
    for split, data in splits.items():
        for row, path in enumerate(data.image_paths):
            caps = [c for c, r in zip(data.captions, data.caption_image, strict=True) if r == row]
            images.append(
                {
                    "filepath": Path(path).parent.name,
                    "filename": Path(path).name,
                    "split": split,
                    "sentences": [{"raw": c, "tokens": c.split()} for c in caps],
                }
            )
    folder.mkdir()
    (folder / "dataset_flickr30k.json").write_text(json.dumps({"images": images, "dataset": "flickr30k"}))
    root = Path(splits["train"].image_paths[0]).parent.parent
    return ["data.kind=karpathy", f"data.manifest={folder / 'dataset_flickr30k.json'}", f"data.root={root}"]


def _write_hf(splits: dict, folder: Path) -> list[str]:
    import datasets

    features = datasets.Features({"image": datasets.Image(), "caption": datasets.Sequence(datasets.Value("string"))})
    parts = {}
    for split, data in splits.items():
        caps = [
            [c for c, r in zip(data.captions, data.caption_image, strict=True) if r == row]
            for row in range(data.num_images)
        ]
        parts["validation" if split == "val" else split] = datasets.Dataset.from_dict(
            {"image": data.image_paths, "caption": caps}, features=features
        )
    datasets.DatasetDict(parts).save_to_disk(str(folder))
    return ["data.kind=hf", f"data.manifest={folder}"]


def _write_shards(splits: dict, folder: Path) -> list[str]:
    write_shards(splits, folder)
    return [
        "data.kind=webdataset",
        f"data.manifest={folder / 'train-{000000..000002}.tar'}::"
        f"{folder / 'val-{000000..000001}.tar'}::{folder / 'test-{000000..000001}.tar'}",
        "data.streaming=true",
        "data.shuffle_buffer=5",
    ]


@pytest.mark.parametrize("fmt", ["karpathy", "hf", "webdataset"])
def test_extract_train_eval(fmt, tiny_overrides, synthetic_manifest, tmp_path, capsys):
    splits = _synthetic_splits(synthetic_manifest)
    writer = {"karpathy": _write_karpathy, "hf": _write_hf, "webdataset": _write_shards}[fmt]
    data_overrides = writer(splits, tmp_path / "data")
    overrides = [o for o in tiny_overrides if not o.startswith("data.")] + data_overrides + ["train.max_steps=2"]
    cfg = load_config(None, overrides)

    listed = load_dataset(cfg.data)
    assert {k: (v.num_images, len(v)) for k, v in listed.items()} == {
        "train": (12, 24),
        "val": (6, 12),
        "test": (6, 12),
    }
    assert listed["test"].captions == splits["test"].captions
    if fmt != "karpathy":
        assert all(parse_ref(p) is not None for p in listed["train"].image_paths)

    store = extract(cfg, **QUIET)
    assert store.split("train").image.shape == (12, 24) and store.split("test").text.shape == (12, 24)
    result = train(cfg, **QUIET)
    assert result.steps == 2

    run = Path(cfg.out_dir)
    steps = [json.loads(line) for line in (run / "steps.jsonl").read_text().splitlines()]
    assert len(steps) == 2 and all(step["total"] == step["total"] for step in steps)  # finite, not NaN
    with pytest.raises(SystemExit) as info:
        main(["eval", "--checkpoint", str(run / "checkpoints" / "last.pt"), "--split", "test", "--json"])
    out = capsys.readouterr().out
    assert info.value.code == 0 and {"rsum", "i2t_r1", "t2i_r10"} <= set(json.loads(out))
