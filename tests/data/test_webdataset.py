import io
import json
from collections import Counter

import numpy as np
import pytest
import torch
from format_writers import captions_of, image_bytes, image_of, shard_sample, write_plain_tar
from PIL import Image
from torch.utils.data import DataLoader

from dsmd.config import DataConfig
from dsmd.data.batches import PairCollator
from dsmd.data.datasets import load_dataset, load_split
from dsmd.data.formats.webdataset import expand_shards
from dsmd.data.images import load_image, parse_ref
from dsmd.data.loader import ImageCache, PairDataset
from dsmd.data.streaming import StreamingPairDataset
from dsmd.data.transforms import ImageTransform
from dsmd.errors import DsmdError
from pair_helpers import IndexTargets, count_words

TRANSFORM = ImageTransform(size=8, mean=(0, 0, 0), std=(1, 1, 1))


def _numbers(data):
    return [image_of(data.captions[data.caption_image.index(r)]) for r in range(data.num_images)]


def test_shard_names_give_the_splits_and_captions_are_lines(shards):
    splits = load_dataset(DataConfig(kind="webdataset", manifest=str(shards["folder"])))
    assert _numbers(splits["train"]) == list(range(9))  # the sample without image is skipped
    assert _numbers(splits["val"]) == [9, 10] and _numbers(splits["test"]) == [11, 12]
    train = splits["train"]
    assert len(train) == sum(2 + i % 2 for i in range(9))
    assert train.captions[:5] == captions_of(0, 2) + captions_of(1, 3)
    ref = parse_ref(train.image_paths[4])
    assert ref.container == str(shards["folder"] / "train-000001.tar") and ref.member == "000004.png"
    for data in splits.values():
        for caption, row in zip(data.captions, data.caption_image, strict=True):
            assert parse_ref(data.image_paths[row]).member.startswith(f"{image_of(caption):06d}.")
            fmt = "PNG" if image_of(caption) == 4 else "JPEG"
            original = Image.open(io.BytesIO(image_bytes(image_of(caption), fmt))).convert("RGB")
            assert np.array_equal(np.asarray(load_image(data.image_paths[row])), np.asarray(original))


def test_brace_patterns_globs_and_a_missing_shard(shards):
    folder = shards["folder"]
    pattern = str(folder / "train-{000000..000002}.tar")
    assert [p.rsplit("/", 1)[1] for p in expand_shards(pattern)] == [
        "train-000000.tar",
        "train-000001.tar",
        "train-000002.tar",
    ]
    both = pattern + "::" + str(folder / "val-{000000..000000}.tar")
    assert len(expand_shards(both)) == 4
    assert len(expand_shards(str(folder / "*.tar"))) == 5
    with pytest.raises(DsmdError, match=r"shard not found: .*train-000003.tar \(2 of the 5 shards"):
        expand_shards(str(folder / "train-{000000..000004}.tar"))
    with pytest.raises(DsmdError, match="no shard matches"):
        expand_shards(str(folder / "nothing-*.tar"))
    with pytest.raises(DsmdError, match="shard not found"):
        load_dataset(DataConfig(kind="webdataset", manifest=str(folder / "train-{000000..000004}.tar")))


def test_plain_tarfile_shard_with_json_captions_and_splits(tmp_path):
    entries = []
    for i, split in ((40, "train"), (41, "train"), (42, "test"), (43, "val")):
        meta = (
            {"captions": captions_of(i, 2), "split": split}
            if i % 2
            else {"caption": f"image {i} caption 0", "split": split}
        )
        entries += [(f"part/{i}.json", json.dumps(meta).encode()), (f"part/{i}.png", image_bytes(i))]
    entries.append(("part/44.json", b'{"caption": "image 44 caption 0"}'))  # no image: skipped
    write_plain_tar(tmp_path / "mixed.tar", entries)
    splits = load_dataset(DataConfig(kind="webdataset", manifest=str(tmp_path / "mixed.tar")))
    assert splits["train"].captions == ["image 40 caption 0"] + captions_of(41, 2)
    assert _numbers(splits["test"]) == [42] and _numbers(splits["val"]) == [43]
    assert parse_ref(splits["test"].image_paths[0]).member == "part/42.png"


def test_no_split_anywhere_falls_back_to_the_seeded_split(tmp_path):
    import webdataset as wds

    with wds.TarWriter(str(tmp_path / "shard-0.tar")) as sink:
        for i in range(10):
            sink.write(shard_sample(f"{i:04d}", i, captions=captions_of(i, 1)))
    cfg = DataConfig(kind="webdataset", manifest=str(tmp_path / "shard-0.tar"), val_fraction=0.2, test_fraction=0.2)
    assert [load_dataset(cfg)[k].num_images for k in ("train", "val", "test")] == [6, 2, 2]


def test_fingerprint_is_stable_and_follows_captions(tmp_path):
    import webdataset as wds

    def write(caption):
        with wds.TarWriter(str(tmp_path / "train-0.tar")) as sink:
            sink.write(shard_sample("a", 1, captions=["one", caption]))
            sink.write(shard_sample("b", 2, captions=["three"]))

    cfg = DataConfig(kind="webdataset", manifest=str(tmp_path / "train-0.tar"))
    write("two")
    before = load_split(cfg, "train").fingerprint()
    assert load_split(cfg, "train").fingerprint() == before
    write("TWO")
    assert load_split(cfg, "train").fingerprint() != before


def _stream_order(ds, seed, num_workers=0):
    ds.set_epoch(seed)
    loader = DataLoader(ds, batch_size=4, collate_fn=PairCollator(count_words), num_workers=num_workers)
    return [j for batch in loader for j in batch.caption_index.tolist()]


def test_streaming_yields_pair_dataset_items_once_per_epoch(shards):
    train = load_split(DataConfig(kind="webdataset", manifest=str(shards["folder"])), "train")
    stream = StreamingPairDataset(train, TRANSFORM, IndexTargets(), shuffle_buffer=5)
    assert len(stream) == len(train)
    reference = PairDataset(train, TRANSFORM, IndexTargets())
    items = list(stream)
    assert sorted(item.caption_index for item in items) == list(range(len(train)))
    for item in items:
        expected = reference[item.caption_index]
        assert (item.caption, item.image_index, item.view) == (expected.caption, expected.image_index, expected.view)
        assert torch.equal(item.pixels, expected.pixels)
        assert torch.equal(item.teacher_image, expected.teacher_image)
        assert torch.equal(item.teacher_text, expected.teacher_text)
    cached = StreamingPairDataset(train, TRANSFORM, IndexTargets(), ImageCache(), shuffle_buffer=5)
    for _ in range(2):  # the second epoch takes the images from the cache, not the shards
        again = {item.caption_index: item for item in cached}
        assert all(torch.equal(again[j].pixels, reference[j].pixels) for j in range(len(train)))
    first = _stream_order(stream, 1)
    assert _stream_order(stream, 1) == first  # reproducible from the seed
    assert _stream_order(stream, 2) != first  # another epoch, another order
    assert sorted(_stream_order(stream, 2)) == list(range(len(train)))


@pytest.mark.parametrize("world", [1, 2])
def test_streaming_splits_across_workers_and_ranks(shards, monkeypatch, world):
    import torch.distributed as dist

    train = load_split(DataConfig(kind="webdataset", manifest=str(shards["folder"])), "train")
    stream = StreamingPairDataset(train, TRANSFORM, IndexTargets(), shuffle_buffer=4)
    # 3 shards: 2 workers split them by shard; 2 ranks x 2 workers (4 readers) by sample
    seen = Counter()
    for rank in range(world):
        if world > 1:
            monkeypatch.setattr(dist, "is_initialized", lambda: True)
            monkeypatch.setattr(dist, "get_rank", lambda r=rank: r)
            monkeypatch.setattr(dist, "get_world_size", lambda: world)
        got = _stream_order(stream, 7, num_workers=2)
        assert got == _stream_order(stream, 7, num_workers=2)
        seen.update(got)
    assert seen == Counter(range(len(train)))


def test_streaming_needs_shards(hf_dataset_dict):
    data = load_split(DataConfig(kind="hf", manifest=str(hf_dataset_dict["folder"])), "train")
    with pytest.raises(DsmdError, match="data.streaming=true reads webdataset shards"):
        StreamingPairDataset(data, TRANSFORM, IndexTargets())
