import json

import pytest

from dsmd.data.pair_subsets import pair_subset, write_pair_subset
from dsmd.errors import DsmdError

RECORDS = [{"image": f"i{i}.png", "captions": [f"caption {i}"], "split": "train"} for i in range(40)] + [
    {"image": "v.png", "captions": ["val"], "split": "val"},
    {"image": "t.png", "captions": ["test"], "split": "test"},
]


def _train(records):
    return {r["image"] for r in records if r["split"] == "train"}


def test_a_fraction_keeps_that_share_of_train_nested_and_the_rest_for_the_pools():
    small, rest = pair_subset(RECORDS, 0.1)
    large, _ = pair_subset(RECORDS, 0.5)
    assert len(_train(small)) == 4 and len(_train(large)) == 20 and _train(small) <= _train(large)
    assert _train(small) | {r["image"] for r in rest} == _train(RECORDS) and not _train(small) & {
        r["image"] for r in rest
    }
    assert [r for r in small if r["split"] != "train"] == RECORDS[-2:]
    assert [r["image"] for r in small] == [
        r["image"] for r in RECORDS if r["image"] in _train(small) or r["split"] != "train"
    ]
    assert pair_subset(RECORDS, 0.1, seed=1)[0] != small and pair_subset(RECORDS, 0.1)[0] == small
    assert len(_train(pair_subset(RECORDS, 0.001)[0])) == 1 and pair_subset(RECORDS, 1.0)[1] == []
    for bad in (0, 1.5):
        with pytest.raises(DsmdError, match=r"in \(0, 1\]"):
            pair_subset(RECORDS, bad)


def test_the_files_beside_the_manifest(tmp_path):
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    made = write_pair_subset(manifest, 0.25)
    assert made["manifest"] == tmp_path / "manifest_pairs_25.jsonl" and (made["pairs"], made["rest"]) == (10, 30)
    pool = [json.loads(line) for line in made["pool_images"].read_text().splitlines()]
    captions = [json.loads(line)["caption"] for line in made["pool_captions"].read_text().splitlines()]
    assert len(pool) == 30 and captions == [f"caption {p['image'][1:-4]}" for p in pool]
