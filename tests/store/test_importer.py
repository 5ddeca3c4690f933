"""Importing teacher features computed elsewhere: formats, the DSMD per-caption layout, checks, training, CLI."""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from dsmd.cli import main
from dsmd.config import load_config
from dsmd.errors import DsmdError
from dsmd.extraction.extractor import extract
from dsmd.extraction.importer import import_features
from dsmd.store.feature_store import FeatureStore
from dsmd.training import train

SPLITS = ("train", "val", "test")
QUIET = {"log": lambda *_: None}


def _cfg(overrides, *more):
    return load_config(None, [*overrides, *more])


def _write(fmt: str, feats: dict, root: Path) -> Path:
    """Write ``feats`` in format ``fmt``; returns the source (file or folder) to import."""
    root.mkdir(parents=True, exist_ok=True)
    if fmt == "npy":  # a folder, one array per split and modality
        for split in SPLITS:
            np.save(root / f"{split}_image.npy", feats[split]["image"].numpy())
            np.save(root / f"{split}_text.npy", feats[split]["text"].numpy())
        return root
    if fmt == "npz":  # a folder, one file per split with named arrays
        for split in SPLITS:
            np.savez(root / f"{split}.npz", image=feats[split]["image"].numpy(), text=feats[split]["text"].numpy())
        return root
    if fmt == "pt":  # one file, a nested dict of every split
        torch.save(
            {split: {"image": feats[split]["image"], "text": feats[split]["text"]} for split in SPLITS},
            root / "feats.pt",
        )
        return root / "feats.pt"
    if fmt == "safetensors":  # one file, flat split-prefixed entries with DSMD-style names
        save_file(
            {
                f"{split}/{m}_feats": feats[split][k].contiguous()
                for split in SPLITS
                for m, k in (("img", "image"), ("txt", "text"))
            },
            str(root / "feats.safetensors"),
        )
        return root / "feats.safetensors"
    if fmt == "pickle":  # a folder of pickles: a torch tensor, a numpy array, lists of rows
        for split in SPLITS:
            image, text = feats[split]["image"], feats[split]["text"]
            objs = {
                "train": (image, text.numpy()),
                "val": (image.tolist(), list(text)),
                "test": ({"image": image.numpy()}, {"text": text}),
            }[split]
            for name, obj in zip(("image", "text"), objs, strict=True):
                (root / f"{split}_{name}.pkl").write_bytes(pickle.dumps(obj))
        return root
    raise AssertionError(fmt)


@pytest.mark.parametrize("fmt", ["npy", "npz", "pt", "safetensors", "pickle"])
def test_each_format_imports_into_a_normal_store(fmt, imported_overrides, external_features, tmp_path):
    source = _write(fmt, external_features, tmp_path / "feats")
    cfg = _cfg(imported_overrides, f"teacher.name_or_path={source}")
    store = import_features(cfg, trust_pickle=fmt == "pickle", **QUIET)

    assert not Path(str(store.path) + ".partial").exists()
    for split in SPLITS:
        got, want = store.split(split), external_features[split]
        torch.testing.assert_close(got.image, F.normalize(want["image"], dim=-1))
        torch.testing.assert_close(got.text, F.normalize(want["text"], dim=-1))
        assert torch.equal(got.caption_image, want["caption_image"]) and got.image_views is None
    teacher = store.teacher
    assert teacher["kind"] == "imported" and teacher["source"] == str(source) and teacher["dim"] == 16
    assert store.manifest["normalized"] is True and store.dim == 16
    assert teacher["splits"]["train"]["layout"] == "per_image"
    assert teacher["splits"]["train"]["input_unit_norm"] == {"image": False, "text": False}
    record = teacher["files"]["val"]["text"]
    assert record["sha256"] == hashlib.sha256(Path(record["path"]).read_bytes()).hexdigest()
    # training's checks pass: the config's teacher and the dataset are the store's
    store.check_teacher(cfg.teacher.kind, cfg.teacher.name_or_path)
    for split in SPLITS:
        store.check_dataset(split, store.manifest["splits"][split]["fingerprint"])
    # a second import finds the store up to date
    assert import_features(cfg, trust_pickle=True, **QUIET).manifest == store.manifest


def _per_caption(image: torch.Tensor, caption_image: torch.Tensor, noise: float = 0.0, seed: int = 1) -> torch.Tensor:
    """DSMD's layout: row j = caption j's image, stored in float16 (with optional relative noise)."""
    rows = image[caption_image]
    g = torch.Generator().manual_seed(seed)
    rows = rows + noise * rows.abs().max(dim=1, keepdim=True).values * torch.randn(rows.shape, generator=g)
    return rows.half()


def _dsmd_pickles(feats: dict, root: Path, noise: float = 0.0, on_gpu: bool = False) -> dict[str, list[str]]:
    """Per split, the two pickled tensors the DSMD code loads (``*_image_feats.pkl``, ``*_text_feats.pkl``)."""
    root.mkdir(parents=True, exist_ok=True)
    files = {}
    for split in ("train", "val"):
        f = feats[split]
        image = _per_caption(f["image"], f["caption_image"], noise)
        paths = [root / f"f30k_{split}_image_feats.pkl", root / f"f30k_{split}_text_feats.pkl"]
        for path, tensor in zip(paths, (image, f["text"].half()), strict=True):
            if on_gpu:  # tag the storage as a CUDA one, as a tensor pickled on a GPU is
                import torch.serialization as ts

                real = ts.location_tag
                ts.location_tag = lambda storage: "cuda:0"
                try:
                    data = pickle.dumps(tensor)
                finally:
                    ts.location_tag = real
                path.write_bytes(data)
            else:
                path.write_bytes(pickle.dumps(tensor))
        files[split] = [str(p) for p in paths]
    return files


def test_dsmd_per_caption_layout_is_deduplicated(imported_overrides, external_features, tmp_path):
    # float16 per-image features, repeated per caption with float16 rounding noise on each copy
    feats = {s: {**f, "image": f["image"].half().float()} for s, f in external_features.items()}
    files = _dsmd_pickles(feats, tmp_path / "dsmd", noise=5e-5, on_gpu=True)
    with pytest.raises(RuntimeError, match="CUDA"):  # what pickle.load does on a machine without a GPU
        pickle.loads(Path(files["train"][0]).read_bytes())
    with pytest.raises(DsmdError, match="--trust-pickle"):
        import_features(_cfg(imported_overrides), files, **QUIET)
    store = import_features(_cfg(imported_overrides), files, trust_pickle=True, **QUIET)
    assert store.teacher["source"] == str(tmp_path / "dsmd") and set(store.manifest["splits"]) == {"train", "val"}
    assert store.teacher["splits"]["train"]["layout"] == "per_caption"
    assert store.teacher["splits"]["train"]["input_dtype"] == {"image": "float16", "text": "float16"}
    for split in ("train", "val"):
        got, want = store.split(split), feats[split]
        assert got.image.shape == want["image"].shape  # one row per image
        # the first caption's row of each image: its per-image row up to the noise
        torch.testing.assert_close(got.image, F.normalize(want["image"], dim=-1), rtol=0, atol=2e-3)
        first = [want["caption_image"].tolist().index(i) for i in range(len(want["image"]))]
        stored = F.normalize(_per_caption(want["image"], want["caption_image"], 5e-5).float()[first], dim=-1)
        torch.testing.assert_close(got.image, stored)
    # the per-image layout of the same rows gives the same store
    per_image = tmp_path / "per_image"
    per_image.mkdir()
    for split in ("train", "val"):
        torch.save(store.split(split).image, per_image / f"{split}_image.pt")
        torch.save(feats[split]["text"].half(), per_image / f"{split}_text.pt")
    other = import_features(
        _cfg(imported_overrides, f"store={tmp_path / 'store2'}", f"teacher.name_or_path={per_image}"), **QUIET
    )
    torch.testing.assert_close(other.split("train").image, store.split("train").image)
    assert other.teacher["splits"]["train"]["input_unit_norm"]["image"] is True


def test_disagreeing_repeated_rows_are_refused(imported_overrides, external_features, tmp_path):
    files = _dsmd_pickles(external_features, tmp_path / "dsmd")
    train_image = files["train"][0]
    rows = pickle.loads(Path(train_image).read_bytes())
    rows[7] += 0.5  # caption 7 is image 3's second caption (2 captions per image)
    Path(train_image).write_bytes(pickle.dumps(rows))
    with pytest.raises(DsmdError) as err:
        import_features(_cfg(imported_overrides), files, trust_pickle=True, **QUIET)
    msg = str(err.value)
    assert train_image in msg and "rows 6 and 7" in msg and "image 3" in msg and "max |difference| 0.5" in msg
    assert not (tmp_path / "store").exists() and not (tmp_path / "store.partial").exists()
    # a tolerance that admits the difference imports it (the row of the first caption is kept)
    store = import_features(_cfg(imported_overrides), files, trust_pickle=True, tolerance=1.0, **QUIET)
    assert store.split("train").image.shape == (12, 16)


def test_bad_inputs_are_refused_with_the_file_and_the_counts(imported_overrides, external_features, tmp_path):
    source = _write("npy", external_features, tmp_path / "feats")
    cfg = _cfg(imported_overrides, f"teacher.name_or_path={source}")
    text = source / "val_text.npy"
    np.save(text, external_features["val"]["text"][:-1].numpy())
    with pytest.raises(
        DsmdError, match=rf"{text} has 11 rows of text features, but split 'val' of the dataset has 12 captions"
    ):
        import_features(cfg, **QUIET)
    np.save(text, external_features["val"]["text"].numpy())

    image = source / "train_image.npy"
    np.save(image, external_features["train"]["image"][:10].numpy())
    with pytest.raises(
        DsmdError,
        match=rf"{image} has 10 rows of image features, but split 'train' of the dataset has 12 images \(24 captions\)",
    ):
        import_features(cfg, **QUIET)
    bad = external_features["train"]["image"].clone()
    bad[4, 2] = float("nan")
    np.save(image, bad.numpy())
    with pytest.raises(DsmdError, match=r"row 4 is not finite"):
        import_features(cfg, **QUIET)
    np.save(image, external_features["train"]["image"][:, :8].numpy())
    with pytest.raises(DsmdError, match="image features are 8-d .* text features 16-d"):
        import_features(cfg, **QUIET)
    np.save(image, external_features["train"]["image"].numpy())
    (source / "val_image.npy").unlink()
    with pytest.raises(DsmdError, match="val_image.npy but no val_text|has val_text.npy but no val_image"):
        import_features(cfg, **QUIET)
    assert not (tmp_path / "store").exists() and not (tmp_path / "store.partial").exists()

    # a file with unexpected entry names says what it has and how to choose
    np.savez(tmp_path / "odd.npz", **{"train/a": np.zeros((12, 16)), "train/b": np.zeros((24, 16))})
    with pytest.raises(DsmdError, match=r"no image features for split 'train'.*it has: train/a, train/b.*--image-key"):
        import_features(_cfg(imported_overrides, f"teacher.name_or_path={tmp_path / 'odd.npz'}"), **QUIET)
    with pytest.raises(DsmdError, match="teacher.kind=imported"):
        import_features(_cfg(imported_overrides, "teacher.kind=offline", f"teacher.name_or_path={source}"), **QUIET)


def test_keys_named_explicitly_and_an_existing_store(imported_overrides, external_features, tmp_path):
    feats = external_features
    path = tmp_path / "all.npz"
    np.savez(path, **{f"{s}/{m}": feats[s][k].numpy() for s in SPLITS for m, k in (("v", "image"), ("t", "text"))})
    cfg = _cfg(imported_overrides, f"teacher.name_or_path={path}", "teacher.normalize=false", "store_dtype=float16")
    store = import_features(cfg, image_key="v", text_key="t", **QUIET)
    torch.testing.assert_close(store.split("test").text, feats["test"]["text"].half().float())
    assert store.manifest["normalized"] is False and store.manifest["dtype"] == "float16"
    # other features into the same store: refused, then replaced with overwrite
    np.savez(path, **{f"{s}/{m}": 2 * feats[s][k].numpy() for s in SPLITS for m, k in (("v", "image"), ("t", "text"))})
    with pytest.raises(DsmdError, match="built differently.*--overwrite"):
        import_features(cfg, image_key="v", text_key="t", **QUIET)
    store = import_features(cfg, image_key="v", text_key="t", overwrite=True, **QUIET)
    torch.testing.assert_close(store.split("test").text, 2 * feats["test"]["text"].half().float())


def test_train_on_imported_features(imported_overrides, external_features, tmp_path):
    source = _write("safetensors", external_features, tmp_path / "feats")
    cfg = _cfg(imported_overrides, f"teacher.name_or_path={source}", "train.max_steps=2", "train.epochs=1")
    import_features(cfg, **QUIET)
    result = train(cfg, progress=False, **QUIET)
    assert result.steps == 2 and result.best_checkpoint.is_file()
    # extraction with an imported teacher finds the store instead of running a model
    assert extract(cfg, progress=False, **QUIET).teacher["kind"] == "imported"
    with pytest.raises(DsmdError, match="dsmd import-features"):
        extract(
            _cfg(imported_overrides, f"teacher.name_or_path={source}", f"store={tmp_path / 'none'}"),
            progress=False,
            **QUIET,
        )
    # a training config naming other features is refused
    with pytest.raises(DsmdError, match="built by teacher imported"):
        train(
            _cfg(imported_overrides, "teacher.name_or_path=/elsewhere", f"out_dir={tmp_path / 'run2'}"),
            progress=False,
            **QUIET,
        )


def _cli(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    out = capsys.readouterr()
    return exit_info.value.code, out.out, out.err


def test_cli_import_features_round_trip(imported_overrides, external_features, tmp_path, capsys):
    files = _dsmd_pickles(external_features, tmp_path / "dsmd")
    overrides = [o for o in imported_overrides if not o.startswith("teacher.")]  # the CLI sets the kind

    code, _, err = _cli(["import-features", *overrides, "--train", *files["train"], "--val", *files["val"]], capsys)
    assert code == 2 and "--trust-pickle" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    # overrides after the files are still overrides
    code, out, err = _cli(
        [
            "import-features",
            "--trust-pickle",
            *overrides[:-2],
            "--train",
            *files["train"],
            "--val",
            *files["val"],
            *overrides[-2:],
        ],
        capsys,
    )
    assert code == 0, err
    source = str(tmp_path / "dsmd")
    assert f"teacher.kind=imported teacher.name_or_path={source}" in out
    store = FeatureStore.open(tmp_path / "store")
    assert store.teacher["source"] == source and store.split("train").image.shape == (12, 16)

    code, out, _ = _cli(["eval", "--store", str(tmp_path / "store"), "--split", "val", "--json"], capsys)
    assert code == 0 and '"rsum"' in out
    code, _, err = _cli(
        [
            "import-features",
            *overrides,
            "--trust-pickle",
            "--train",
            files["train"][0],
            files["val"][1],
            "--val",
            *files["val"],
        ],
        capsys,
    )
    assert code == 2 and "dsmd: error:" in err and "has 12 rows of text features" in err
    code, _, err = _cli(["import-features", *overrides, "teacher.name_or_path=/nonexistent/feats"], capsys)
    assert code == 2 and "features not found: /nonexistent/feats" in err
    code, out, _ = _cli(["import-features", "--help"], capsys)
    assert code == 0 and "example" in out and "dsmd import-features" in out


def test_large_formats_are_read_lazily(tmp_path):
    from dsmd.extraction.feature_files import SourceArray, read_entries

    x = torch.randn(10, 4)
    np.save(tmp_path / "a.npy", x.numpy())
    entry = read_entries(tmp_path / "a.npy")[""]()
    assert isinstance(entry, np.memmap)  # memory-mapped, not read
    save_file({"train/image": x.bfloat16()}, str(tmp_path / "b.safetensors"))
    entry = read_entries(tmp_path / "b.safetensors")["train/image"]()
    assert entry.get_shape() == [10, 4]  # a slice of the file: rows are read on demand
    rows = SourceArray(tmp_path / "b.safetensors", "train/image", entry)
    assert rows.dtype == "bfloat16" and rows.is_float()
    torch.testing.assert_close(rows.block(2, 5), x[2:5].bfloat16().float())
    with pytest.raises(DsmdError, match=r"unknown feature file format '\.h5'"):
        (tmp_path / "d.h5").write_bytes(b"")
        read_entries(tmp_path / "d.h5")
    torch.save({"image": x.numpy()}, tmp_path / "e.pt")  # not only tensors: needs full unpickling
    with pytest.raises(DsmdError, match="--trust-pickle"):
        read_entries(tmp_path / "e.pt")
    assert read_entries(tmp_path / "e.pt", trust_pickle=True)["image"]().shape == (10, 4)
