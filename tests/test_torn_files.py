"""The fuzz tier of damaged files: every file dsmd writes and later reads, damaged at places drawn
with fixed seeds (the middle of the file always among them) by a flipped byte, an overwritten run
of bytes or a cut, is refused by the command that reads it in one ``dsmd: error:`` line naming the
file, exit 2; or, where the damage does not reach what is read, the command gives exactly the
answer of the undamaged file. Never a traceback, never another answer.

The artefacts are a tiny run's store, finished run folder and best checkpoint, its export and a
caption index built by that export. (A run that has not finished tolerates a last log line torn
by a crash: tests/training.)
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import pytest

from dsmd.cli import main
from dsmd.export.writer import export_student
from students import train_tiny

DAMAGES = 6  # per file: seed 0 damages the middle byte; the kinds cycle flip, garbage, cut
CAPTIONS = [
    f"a {c} {s} on a {b} background"
    for c in ("red", "green", "blue")
    for s in ("circle", "square")
    for b in ("white", "black")
]


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    """Stamps of verified files go to a cache of this test's own (never the user's)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def made(tiny_models, synthetic_manifest, tmp_path_factory):
    """A tiny run (store, run folder, best checkpoint), its export, and a caption index."""
    run = train_tiny(tiny_models, synthetic_manifest, tmp_path_factory.mktemp("torn"), "student.text_pooling=cls")
    root = run["root"]
    export_student(run["checkpoint"], root / "export", log=lambda *_: None)
    (root / "captions.txt").write_text("".join(c + "\n" for c in CAPTIONS))
    code, _, err = _run(
        ["index", "--model", str(root / "export"), "--texts", str(root / "captions.txt"), "--out", str(root / "index")]
    )
    assert code == 0, err
    return {**run, "export": root / "export", "index": root / "index", "run": Path(run["cfg"].out_dir)}


def _run(argv: list[str]) -> tuple[int, str, str]:
    """``dsmd ARGV`` in this process: exit status, stdout, stderr."""
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main([argv[0], "--quiet", *argv[1:]])
            code = 0
        except SystemExit as exc:
            code = exc.code
    return code, out.getvalue(), err.getvalue()


def damaged(data: bytes, seed: int) -> bytes:
    """``data`` with one damage drawn by ``seed`` (seed 0: at the middle byte)."""
    rng = random.Random(seed)
    pos = len(data) // 2 if seed == 0 else rng.randrange(len(data))
    kind = ("flip", "garbage", "cut")[seed % 3]
    if kind == "flip":
        return data[:pos] + bytes([data[pos] ^ 0xFF]) + data[pos + 1 :]
    if kind == "garbage":
        run = bytes(rng.randrange(0x80, 0x100) for _ in range(8))
        return data[:pos] + run + data[pos + len(run) :] if data[pos : pos + 8] != run else data[:pos]
    return data[:pos]


def _fuzz(source: Path, name: str, argv, tmp_path: Path, must_refuse: bool) -> None:
    """Damage ``source/name`` in copies of ``source`` (always at the same path) and run ``argv(copy)``."""
    copy = tmp_path / "copy"
    shutil.copytree(source, copy)
    want = _run(argv(copy))
    assert want[0] == 0, want[2]
    original = (copy / name).read_bytes()
    for seed in range(DAMAGES):
        shutil.rmtree(copy)
        shutil.copytree(source, copy)
        (copy / name).write_bytes(damaged(original, seed))
        code, out, err = _run(argv(copy))
        lines = err.strip().splitlines()
        if code == 0 and not must_refuse:
            assert (out, err) == want[1:], f"{name}, damage {seed}: another answer"
            continue
        assert code == 2, f"{name}, damage {seed}: exit {code}\n{err}"
        assert len(lines) == 1 and lines[0].startswith("dsmd: error: "), f"{name}, damage {seed}:\n{err}"
        assert Path(name).name in lines[0], f"{name}, damage {seed}: the line does not name the file: {lines[0]}"


INDEX_FILES = ["meta.json", "items.jsonl", "vectors.npy", "index.faiss", "skipped.txt"]


@pytest.mark.parametrize("name", INDEX_FILES)
def test_a_damaged_index_file_is_refused_by_search_and_verify(made, name, tmp_path):
    if name == "skipped.txt":  # empty for this gallery: give it content to damage
        (made["index"] / name).write_text("photos/broken.png: cannot be decoded\n")
        _rebuild_records(made["index"])
    _fuzz(
        made["index"],
        name,
        lambda c: ["search", "--index", str(c), "--text", "a red circle", "-k", "3", "--json"],
        tmp_path,
        True,
    )
    shutil.rmtree(tmp_path / "copy")
    _fuzz(made["index"], name, lambda c: ["verify", str(c)], tmp_path, True)


def _rebuild_records(index: Path) -> None:
    """Record the index's files again after a test changed one (as dsmd would have written them)."""
    import json

    from dsmd.runtime.checksums import file_records, sealed

    meta = json.loads((index / "meta.json").read_text())
    meta["files"] = file_records(index, meta["files"])
    (index / "meta.json").write_text(json.dumps(sealed(meta)))


def _export_files(export: Path) -> list[str]:
    return sorted(p.name for p in export.iterdir() if p.is_file() and not p.name.startswith("."))


def test_every_export_file_is_recorded(made):
    import json

    meta = json.loads((made["export"] / "config.json").read_text())["dsmd_export"]
    assert sorted(meta["files"]) == [n for n in _export_files(made["export"]) if n != "config.json"]


@pytest.mark.parametrize(
    "name", ["config.json", "model.safetensors", "preprocessing.json", "tokenizer.json", "tokenizer_config.json"]
)
def test_a_damaged_export_file_is_refused_when_loaded(made, name, tmp_path):
    index = str(made["index"])
    _fuzz(
        made["export"],
        name,
        lambda c: ["search", "--index", index, "--model", str(c), "--text", "a red circle", "--json"],
        tmp_path,
        True,
    )
    shutil.rmtree(tmp_path / "copy")
    _fuzz(made["export"], name, lambda c: ["verify", str(c)], tmp_path, True)


def test_a_damaged_checkpoint_is_refused_or_reads_the_same(made, tmp_path):
    run = made["checkpoint"].parent
    name = made["checkpoint"].name
    _fuzz(run, name, lambda c: ["eval", "--checkpoint", str(c / name), "--split", "val", "--json"], tmp_path, False)
    shutil.rmtree(tmp_path / "copy")
    _fuzz(run, name, lambda c: ["verify", str(c / name)], tmp_path, False)


@pytest.mark.parametrize("name", ["manifest.json", "train.safetensors"])
def test_a_damaged_store_file_is_refused_by_verify(made, name, tmp_path):
    _fuzz(made["store"], name, lambda c: ["verify", str(c)], tmp_path, True)


@pytest.mark.parametrize("name", ["steps.jsonl", "epochs.jsonl", "result.json"])
def test_a_damaged_file_of_a_finished_run_is_refused_by_report(made, name, tmp_path):
    _fuzz(made["run"], name, lambda c: ["report", str(c), "--no-measure"], tmp_path, True)
