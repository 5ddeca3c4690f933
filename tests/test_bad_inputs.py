"""The catalogue of bad inputs: each gets exit status 2, one `dsmd: error:` line that names the
problem and the fix, and leaves nothing half-written (no ``*.tmp``, no ``*.partial``, no new run
or store folder). Rows that are not errors (a CSV with a byte-order mark, a torn log line on
resume) must simply work.

Each case builds its bad input under ``tmp_path`` from a shared tiny store and run, then calls
the command line in this process.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from dsmd.cli import main
from dsmd.config import load_config
from dsmd.extraction import extract
from dsmd.store.manifest import seal
from dsmd.store.safetensors_mmap import file_sha256
from dsmd.training import train
from tiny_runs import tiny_run_overrides


@pytest.fixture(scope="module")
def base(tiny_models, synthetic_manifest, tmp_path_factory):
    """A tiny store and a one-epoch run, shared (read-only) by the cases."""
    root = tmp_path_factory.mktemp("bad_inputs")
    overrides = [*tiny_run_overrides(tiny_models, synthetic_manifest, root), "train.epochs=1"]
    cfg = load_config(None, overrides)
    extract(cfg, progress=False, log=lambda *_: None)
    train(cfg, progress=False, log=lambda *_: None)
    data = [o for o in overrides if not o.startswith(("store=", "out_dir="))]
    return {"root": root, "store": root / "store", "run": root / "run", "overrides": data}


def _cli(argv: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main(["--quiet", *argv] if argv and argv[0].startswith("-") else [argv[0], "--quiet", *argv[1:]])
    captured = capsys.readouterr()
    return info.value.code, captured.out, captured.err


def _files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")} if folder.exists() else set()


def _refused(argv, capsys, folder: Path, *fragments: str) -> str:
    """Run ``argv``; it must fail with one error line holding ``fragments`` and write nothing under ``folder``."""
    before = _files(folder)
    code, _, err = _cli(argv, capsys)
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("dsmd: error: "), err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    after = _files(folder)
    assert after <= before, f"left behind: {sorted(after - before)}"
    assert not [f for f in after if f.endswith((".tmp", ".partial"))]
    return lines[0]


class _Payload:
    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _reseal(store: Path, split: str, change) -> None:
    """Rewrite ``split``'s file with ``change(tensors)`` applied and a manifest that matches it
    again (what a hostile sender could do: every checksum consistent)."""
    file = store / f"{split}.safetensors"
    tensors = {k: v.clone() for k, v in load_file(str(file)).items()}
    change(tensors)
    save_file(tensors, str(file))
    manifest = json.loads((store / "manifest.json").read_text())
    for record in manifest["files"][split]:
        record["bytes"], record["sha256"] = file.stat().st_size, file_sha256(file)
    (store / "manifest.json").write_text(json.dumps(seal(manifest)))


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _jsonl(path: Path, lines: list) -> Path:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def _image(folder: Path, name: str = "a.png", size: tuple[int, int] = (8, 8)) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (200, 10, 10)).save(folder / name)
    return name


# -- must not happen: code from a file ---------------------------------------------------------


def test_crafted_checkpoint_is_refused_by_eval_without_running_its_payload(tmp_path, capsys):
    marker = tmp_path / "payload-ran"
    torch.save({"config": {}, "model": _Payload(marker), "dim": 24}, tmp_path / "evil.pt")
    _refused(["eval", "--checkpoint", str(tmp_path / "evil.pt")], capsys, tmp_path, "pickles a Python object")
    assert not marker.exists()


def test_crafted_checkpoint_is_refused_by_resume_without_running_its_payload(base, tmp_path, capsys):
    run = _copy(base["run"], tmp_path / "run")
    marker = tmp_path / "payload-ran"
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    torch.save({**state, "balancer": _Payload(marker)}, run / "checkpoints" / "last.pt")
    _refused(["train", "--resume", f"out_dir={run}"], capsys, tmp_path, "pickles a Python object", "Refused")
    assert not marker.exists()


# -- must not happen: silently wrong results ---------------------------------------------------


def test_store_with_flipped_bytes_is_refused(base, tmp_path, capsys):
    store = _copy(base["store"], tmp_path / "store")
    file = store / "train.safetensors"
    raw = bytearray(file.read_bytes())
    raw[len(raw) // 2] ^= 0x40
    file.write_bytes(bytes(raw))
    _refused(["eval", "--store", str(store), "--split", "train"], capsys, tmp_path, "train.safetensors is corrupt")
    _refused(["verify", str(store)], capsys, tmp_path, "train.safetensors is corrupt", "sha256")
    out = tmp_path / "run"
    _refused(["train", *base["overrides"], f"store={store}", f"out_dir={out}"], capsys, tmp_path, "is corrupt")
    assert not out.exists()


def test_an_untouched_copy_of_a_store_verifies(base, tmp_path, capsys):
    store = _copy(base["store"], tmp_path / "store")
    code, out, err = _cli(["verify", str(store)], capsys)
    assert code == 0 and "every file matches its manifest" in out, err


def test_edited_manifest_is_refused(base, tmp_path, capsys):
    store = _copy(base["store"], tmp_path / "store")
    manifest = json.loads((store / "manifest.json").read_text())
    manifest["normalized"] = False  # would train an unnormalised student on unit-norm targets
    (store / "manifest.json").write_text(json.dumps(manifest))
    _refused(
        ["train", *base["overrides"], f"store={store}", f"out_dir={tmp_path / 'run'}"],
        capsys,
        tmp_path,
        "was modified after the store was written",
    )


def test_nan_rows_in_a_store_are_refused_before_training_writes_anything(base, tmp_path, capsys):
    store = _copy(base["store"], tmp_path / "store")
    _reseal(store, "train", lambda t: t["text"][3].fill_(float("nan")))
    _refused(
        ["train", *base["overrides"], f"store={store}", f"out_dir={tmp_path / 'run'}"],
        capsys,
        tmp_path,
        "holds NaN or inf",
    )


def test_caption_owners_out_of_range_are_refused(base, tmp_path, capsys):
    store = _copy(base["store"], tmp_path / "store")
    _reseal(store, "test", lambda t: t["caption_image"].__setitem__(2, 99))
    _refused(["eval", "--store", str(store), "--split", "test"], capsys, tmp_path, "caption 2 the image row 99")


def test_manifest_without_splits_is_refused(base, tmp_path, capsys):
    store = _copy(base["store"], tmp_path / "store")
    manifest = json.loads((store / "manifest.json").read_text())
    del manifest["splits"]
    (store / "manifest.json").write_text(json.dumps(seal(manifest)))
    _refused(["eval", "--store", str(store)], capsys, tmp_path, "not a valid store manifest: it has no 'splits'")


@pytest.mark.parametrize(
    "line, fragment",
    [
        ({"image": 12, "captions": ["a red kite"]}, "'image' must be a string"),
        ({"image": "a.png", "captions": 5}, "'captions' must be a string or a list of strings"),
        ({"image": "a.png", "captions": {"a": "b"}}, "'captions' must be a string or a list of strings, not an object"),
    ],
)
def test_manifest_fields_of_the_wrong_type_are_refused(tmp_path, capsys, line, fragment):
    _image(tmp_path)
    manifest = _jsonl(tmp_path / "m.jsonl", [line])
    _refused(
        ["extract", "data.kind=manifest", f"data.manifest={manifest}", f"store={tmp_path / 'store'}"],
        capsys,
        tmp_path,
        "m.jsonl:1",
        fragment,
    )


@pytest.mark.parametrize(
    "name, content",
    [
        ("m.jsonl", '{"image": "a.png", "captions": ["caf\xe9"]}\n'.encode("latin-1")),
        ("m.csv", "image,caption\na.png,caf\xe9\n".encode("latin-1")),
    ],
)
def test_text_that_is_not_utf8_is_refused(tmp_path, capsys, name, content):
    _image(tmp_path)
    (tmp_path / name).write_bytes(content)
    _refused(
        ["extract", "data.kind=manifest", f"data.manifest={tmp_path / name}", f"store={tmp_path / 'store'}"],
        capsys,
        tmp_path,
        f"{name}:",
        "not UTF-8",
    )


@pytest.mark.parametrize(
    "line, fragment",
    [
        ('{"image": "a.png", "captions": ["a red \\udcff kite"]}', "the caption 'a red \\udcff kite' holds \\udcff"),
        ('{"image": "a\\ud800.png", "captions": ["a red kite"]}', "the image path"),
    ],
)
def test_text_that_cannot_be_written_as_utf8_is_refused_by_line_before_extraction(tmp_path, capsys, line, fragment):
    _image(tmp_path)
    (tmp_path / "m.jsonl").write_text('{"image": "a.png", "captions": ["a blue kite"]}\n' + line + "\n")
    _refused(
        ["extract", "data.kind=manifest", f"data.manifest={tmp_path / 'm.jsonl'}", f"store={tmp_path / 'store'}"],
        capsys,
        tmp_path,
        "m.jsonl:2",
        fragment,
        "lone surrogate",
    )
    assert not (tmp_path / "store").exists()


def test_an_image_under_two_splits_is_refused(tmp_path, capsys):
    _image(tmp_path)
    manifest = _jsonl(
        tmp_path / "m.jsonl",
        [
            {"image": "a.png", "captions": ["one"], "split": "train"},
            {"image": "a.png", "captions": ["two"], "split": "test"},
        ],
    )
    _refused(
        ["extract", "data.kind=manifest", f"data.manifest={manifest}", f"store={tmp_path / 'store'}"],
        capsys,
        tmp_path,
        "listed under two splits",
        "'train' and 'test'",
    )


def test_a_decompression_bomb_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50)  # (a 20000 x 20000 PNG, scaled down)
    _image(tmp_path, size=(20, 20))
    manifest = _jsonl(
        tmp_path / "m.jsonl",
        [{"image": "a.png", "captions": ["a red square"]}]
        + [{"image": f"b{i}.png", "captions": ["small"]} for i in range(0)],
    )
    _refused(
        [
            "extract",
            "data.kind=manifest",
            f"data.manifest={manifest}",
            "data.val_fraction=0",
            "data.test_fraction=0",
            "teacher.batch_size=1",
            f"store={tmp_path / 'store'}",
        ],
        capsys,
        tmp_path,
        "a.png is too large",
        "MAX_IMAGE_PIXELS",
    )


def test_a_csv_with_a_byte_order_mark_is_read(tmp_path):
    from dsmd.config import DataConfig
    from dsmd.data.datasets import load_dataset

    _image(tmp_path)
    (tmp_path / "m.csv").write_bytes("\ufeffimage,caption\na.png,a red square\n".encode())
    data = load_dataset(DataConfig(kind="manifest", manifest=str(tmp_path / "m.csv"), val_fraction=0, test_fraction=0))
    assert data["train"].captions == ["a red square"]


# -- config values, one line before anything is loaded -----------------------------------------


@pytest.mark.parametrize(
    "override, fragments",
    [
        ("train.epochs=0", ("'train.epochs': must be at least 1, got 0",)),
        ("train.batch_size=0", ("'train.batch_size': must be at least 1, got 0",)),
        ("loss.losses=[cd,fd", ("override 'loss.losses=[cd,fd': the value is not valid YAML",)),
        ("balancer.mode=dynmic", ("'balancer.mode': 'dynmic' is not allowed", "dynamic, static, reference")),
        ("loss.temperature=0", ("'loss.temperature': must be greater than 0",)),
    ],
)
def test_bad_config_values_fail_before_anything_is_loaded(tmp_path, capsys, override, fragments):
    # the store does not exist: the config error must come first
    _refused(
        ["train", override, f"store={tmp_path / 'none'}", f"out_dir={tmp_path / 'run'}"], capsys, tmp_path, *fragments
    )


def test_eval_refuses_overrides_it_would_ignore(base, tmp_path, capsys):
    ckpt = base["run"] / "checkpoints" / "best.pt"
    _refused(
        ["eval", "--checkpoint", str(ckpt), "student.image_size=224"],
        capsys,
        tmp_path,
        "'student.image_size' cannot be changed",
        "data.*",
    )


def test_eval_says_what_it_scored(base, tmp_path, capsys):
    ckpt = base["run"] / "checkpoints" / "best.pt"
    code, out, err = _cli(["eval", "--checkpoint", str(ckpt), "--split", "val"], capsys)
    assert code == 0, err
    assert "best.pt on manifest" in out and "split val: 6 images, 12 captions" in out


# -- runs that cannot be written -----------------------------------------------------------


def test_out_dir_that_is_a_file(base, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    _refused(
        ["train", *base["overrides"], f"store={base['store']}", f"out_dir={tmp_path / 'file' / 'run'}"],
        capsys,
        tmp_path,
        "is a file, not a folder",
    )


def _mount(args: list[str], target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or subprocess.run(["mount", *args, str(target)], capture_output=True).returncode:
        pytest.skip("needs root and mount (CI and the development machines have both)")


def test_read_only_output_and_store_folders(base, tmp_path, capsys):
    ro = tmp_path / "ro"
    src = tmp_path / "src"
    src.mkdir()
    _mount(["--bind", "-o", "ro", str(src)], ro)
    try:
        _refused(
            ["train", *base["overrides"], f"store={base['store']}", f"out_dir={ro / 'run'}"],
            capsys,
            tmp_path,
            "is not writable",
        )
        _refused(["extract", *base["overrides"], f"store={ro / 'store'}"], capsys, tmp_path, "is not writable")
    finally:
        subprocess.run(["umount", "-l", str(ro)], check=True)


def test_a_full_disk_leaves_no_temporary_file(base, tmp_path, capsys):
    full = tmp_path / "full"
    _mount(["-t", "tmpfs", "-o", "size=128k", "tmpfs"], full)  # the checkpoint (~0.5 MB) does not fit
    try:
        code, _, err = _cli(["train", *base["overrides"], f"store={base['store']}", f"out_dir={full / 'run'}"], capsys)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and "no space left on the device" in lines[0], err
        assert "--resume" in lines[0]
        assert not list(full.rglob("*.tmp")) and not (full / "run" / "checkpoints" / "last.pt").exists()
    finally:
        subprocess.run(["umount", "-l", str(full)], check=True)


# -- resuming --------------------------------------------------------------------------------------


def test_resuming_with_another_architecture_is_one_line(base, tmp_path, capsys):
    run = _copy(base["run"], tmp_path / "run")
    line = _refused(
        ["train", "--resume", f"out_dir={run}", "student.text_layers=2"],
        capsys,
        tmp_path,
        "student.text_layers (1 -> 2) cannot change when a run resumes",
        "start a new run (another out_dir=)",
    )
    assert len(line) < 600


def test_a_torn_log_line_and_a_leftover_temporary_do_not_stop_a_resume(base, tmp_path, capsys):
    run = _copy(base["run"], tmp_path / "run")
    with (run / "steps.jsonl").open("a") as f:
        f.write('{"step": 99, "tot')
    (run / "checkpoints" / "best.pt.tmp").write_bytes(b"left by a kill")
    code, _, err = _cli(["train", "--resume", f"out_dir={run}", "train.epochs=2"], capsys)
    assert code == 0, err
    steps = [json.loads(line)["step"] for line in (run / "steps.jsonl").read_text().splitlines()]
    assert steps == list(range(1, len(steps) + 1)) and not (run / "checkpoints" / "best.pt.tmp").exists()
