"""Streaming training with the teacher's features read from the shards (``data.teacher_in_shards``)."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from dsmd.config import DataConfig, load_config
from dsmd.data.datasets import load_dataset
from dsmd.errors import DsmdError
from dsmd.extraction.extractor import extract
from dsmd.extraction.webdataset_teacher import write_teacher_shards
from dsmd.training import train
from shard_writers import write_shards

pytestmark = pytest.mark.e2e  # whole commands on tiny models: the end-to-end tier

QUIET = dict(progress=False, log=lambda *_: None)


def _write_shards(manifest: str, folder: Path) -> list[str]:
    """The generated dataset's splits (12 / 6 / 6 images, 2 captions each) as webdataset shards."""
    splits = load_dataset(DataConfig(kind="manifest", manifest=manifest, val_fraction=0.25, test_fraction=0.25))
    write_shards(splits, folder)
    return ["data.kind=webdataset", f"data.manifest={folder}", "data.streaming=true", "data.shuffle_buffer=5"]


def _rewrite(src: Path, dst: Path, change) -> None:
    """Copy the shards under ``src`` to ``dst``, passing each member's (name, bytes) through ``change``."""
    for shard in sorted(src.rglob("*.tar")):
        target = dst / shard.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        with tarfile.open(shard) as tin, tarfile.open(target, "w", format=tarfile.GNU_FORMAT) as tout:
            for member in tin:
                data = change(member.name, tin.extractfile(member).read())
                if data is None:
                    continue
                info = tarfile.TarInfo(member.name)
                info.size, info.mtime = len(data), member.mtime
                tout.addfile(info, io.BytesIO(data))


def _params(out_dir: Path) -> dict[str, torch.Tensor]:
    state = torch.load(out_dir / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)
    return state["model"]


@pytest.fixture(params=[0, 2], ids=["no_views", "views"])
def setup(request, tiny_overrides, synthetic_manifest, tmp_path):
    data = _write_shards(synthetic_manifest, tmp_path / "shards")
    base = (
        [o for o in tiny_overrides if not o.startswith(("data.", "out_dir=", "store_views="))]
        + data
        + [
            "train.max_steps=3",
            "train.epochs=1",
            "store_dtype=float16",
            f"store_views={request.param}",
            "train.augment=true",
        ]
    )
    cfg = load_config(None, [*base, f"out_dir={tmp_path / 'run_store'}"])
    extract(cfg, **QUIET)
    write_teacher_shards(cfg, tmp_path / "with_teacher", log=lambda *_: None)
    return base, cfg, tmp_path


def test_teacher_rows_from_the_shards_are_the_stores(setup):
    base, cfg, tmp_path = setup
    assert train(cfg, **QUIET).steps == 3
    from_store = _params(tmp_path / "run_store")

    shards = load_config(
        None,
        [
            *base,
            f"data.manifest={tmp_path / 'with_teacher'}",
            "data.teacher_in_shards=true",
            f"out_dir={tmp_path / 'run_shards'}",
        ],
    )
    assert train(shards, **QUIET).steps == 3
    from_shards = _params(tmp_path / "run_shards")
    assert from_store.keys() == from_shards.keys()
    for name in from_store:
        torch.testing.assert_close(from_shards[name], from_store[name], msg=name)

    # the rows really are read from the shards: other teacher_text rows give other parameters
    def perturb(name: str, data: bytes) -> bytes:
        if not name.endswith(".teacher_text.npy"):
            return data
        text = np.load(io.BytesIO(data))
        buf = io.BytesIO()
        np.save(buf, np.roll(text, 1, axis=-1))
        return buf.getvalue()

    _rewrite(tmp_path / "with_teacher", tmp_path / "perturbed", perturb)
    wrong = load_config(
        None,
        [
            *base,
            f"data.manifest={tmp_path / 'perturbed'}",
            "data.teacher_in_shards=true",
            f"out_dir={tmp_path / 'run_perturbed'}",
        ],
    )
    assert train(wrong, **QUIET).steps == 3
    from_wrong = _params(tmp_path / "run_perturbed")
    assert any(not torch.allclose(from_wrong[name], from_store[name]) for name in from_store)


def test_missing_teacher_members_and_no_streaming_are_refused(setup):
    base, _, tmp_path = setup
    _rewrite(
        tmp_path / "with_teacher",
        tmp_path / "no_text",
        lambda name, data: None if name.endswith(".teacher_text.npy") else data,
    )
    missing = load_config(
        None,
        [
            *base,
            f"data.manifest={tmp_path / 'no_text'}",
            "data.teacher_in_shards=true",
            f"out_dir={tmp_path / 'run_missing'}",
        ],
    )
    with pytest.raises(
        DsmdError,
        match=r"(?s)train-00000\d\.tar.*teacher_text\.npy.*write_teacher_shards"
        r".*data\.teacher_in_shards=false",
    ):
        train(missing, **QUIET)

    # the original shards, without any teacher member
    plain = load_config(None, [*base, "data.teacher_in_shards=true", f"out_dir={tmp_path / 'run_plain'}"])
    with pytest.raises(DsmdError, match="teacher_image.npy"):
        train(plain, **QUIET)

    # refused when the config is read, before anything is loaded
    with pytest.raises(DsmdError, match="'data.teacher_in_shards'.*needs data.streaming=true"):
        load_config(
            None,
            [
                *base,
                f"data.manifest={tmp_path / 'with_teacher'}",
                "data.teacher_in_shards=true",
                "data.streaming=false",
                f"out_dir={tmp_path / 'run_not_streaming'}",
            ],
        )
