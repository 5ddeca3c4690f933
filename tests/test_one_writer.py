"""One writer per folder, through the commands: a second ``dsmd train`` on a run in progress, and
``dsmd extract`` / ``import-features`` / ``index`` / ``export`` / ``build-benchmark`` on a folder another process writes, are refused
at once with one line naming the holder, exit 2, and leave the folder byte for byte as it was; a
lock whose holder was killed is taken over; readers are never blocked; two sweeps do not run the
same run. (Under torchrun: tests/training/test_distributed.py.)"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dsmd.cli import main
from dsmd.config import load_config
from dsmd.extraction import extract
from dsmd.runtime.lock import acquire_folder, lock_path
from students import train_tiny
from tiny_runs import tiny_run_overrides, write_base_config

pytestmark = pytest.mark.e2e
SIGNAL_SELF = Path(__file__).with_name("_signal_self.py")
SETTINGS = ["train.epochs=2", "train.batch_size=4", "train.checkpoint_every=2", "train.log_every=1"]
HOLDER = (
    "import sys; from dsmd.runtime.lock import acquire_folder; "
    "held = acquire_folder(sys.argv[1], 'store', role=sys.argv[2]); print('held', flush=True); sys.stdin.read()"
)


@pytest.fixture(scope="module")
def prepared(tiny_models, synthetic_manifest, tmp_path_factory) -> dict:
    """A tiny store (extracted once) and the overrides of 12-step runs on it."""
    root = tmp_path_factory.mktemp("one_writer")
    overrides = [*tiny_run_overrides(tiny_models, synthetic_manifest, root), *SETTINGS]
    extract(load_config(None, overrides), progress=False, log=lambda *_: None)
    return {"root": root, "overrides": overrides, "store": root / "store"}


@pytest.fixture(scope="module")
def trained_student(tiny_models, synthetic_manifest, tmp_path_factory) -> dict:
    """A one-epoch tiny run and its best checkpoint, to export."""
    return train_tiny(tiny_models, synthetic_manifest, tmp_path_factory.mktemp("to_export"))


def _contents(*folders: Path) -> dict[str, bytes]:
    """Every file under ``folders`` and their lock files, by path: what a refused command must not change."""
    files = {}
    for folder in folders:
        for p in [*folder.rglob("*"), lock_path(folder), lock_path(folder).with_name(lock_path(folder).name + ".json")]:
            if p.is_file():
                files[str(p)] = p.read_bytes()
    return files


def _hold(folder: Path, role: str = "") -> subprocess.Popen:
    """Another process holding ``folder``'s lock until its stdin closes."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(folder), role], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


def _release(proc: subprocess.Popen) -> None:
    proc.stdin.close()
    assert proc.wait(timeout=60) == 0


def _refused(argv: list[str], capsys) -> str:
    """Run ``dsmd ARGV`` here; it must exit 2 with one line on stderr, which is returned."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as ended:
        main(argv)
    err = capsys.readouterr().err
    assert ended.value.code == 2, err
    assert len(err.splitlines()) == 1, err
    return err.strip()


def main_code(argv: list[str]) -> int:
    """Run ``dsmd ARGV`` here; its exit status."""
    with pytest.raises(SystemExit) as ended:
        main(argv)
    return ended.value.code


def test_a_second_train_is_refused_and_a_killed_holders_lock_is_taken_over(prepared):
    out = prepared["root"] / "run"
    holder = subprocess.Popen(  # a real run, paused after its step 3 (last.pt holds step 2)
        [sys.executable, str(SIGNAL_SELF), "train", "--quiet", *prepared["overrides"], f"out_dir={out}"],
        env={**os.environ, "DSMD_TEST_HOLD": "3"},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    while (line := holder.stdout.readline()) and line.strip() != "holding":
        pass
    assert line.strip() == "holding", "the run ended before its step 3"
    (out / "checkpoints" / "last.pt.tmp").write_bytes(b"a checkpoint being written")  # not the refused one's to remove
    before = _contents(out)
    refused = subprocess.run(
        [sys.executable, "-m", "dsmd", "train", "--quiet", "--resume", f"out_dir={out}"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert refused.returncode == 2, refused.stderr
    [line] = refused.stderr.splitlines()
    assert line.startswith(
        f"dsmd: error: out_dir={out} is in use by another dsmd command (pid {holder.pid} on host {socket.gethostname()}, "
    ), line
    assert " train --quiet " in line and ", since 20" in line, line
    assert _contents(out) == before  # byte for byte, the lock's description included

    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=60)
    assert lock_path(out).with_name(".run.lock.json").is_file()  # what the killed holder left
    resumed = subprocess.run(
        [sys.executable, "-m", "dsmd", "train", "--quiet", "--resume", f"out_dir={out}"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert (out / "result.json").is_file() and not list(out.rglob("*.tmp"))
    assert not lock_path(out).with_name(".run.lock.json").exists()


def test_a_store_being_written_is_refused_and_left_as_it_was(prepared, tmp_path, capsys):
    store = tmp_path / "store"
    partial = tmp_path / "store.partial"
    (partial / "chunks" / "train").mkdir(parents=True)
    (partial / "pending.json").write_text("{}")
    (partial / "chunks" / "train" / "image-00000.safetensors").write_bytes(b"a finished chunk")
    holder = _hold(store)
    try:
        before = _contents(store, partial)
        overrides = [*prepared["overrides"], f"store={store}"]
        line = _refused(["extract", "--quiet", *overrides], capsys)
        assert line.startswith(f"dsmd: error: store={store} is in use by another dsmd command (pid {holder.pid} ")
        _refused(["extract", "--quiet", "--overwrite", *overrides], capsys)
        imported = [o for o in overrides if not o.startswith("teacher.")]  # (the command sets teacher.kind)
        line = _refused(["import-features", "--quiet", *imported, "--train", "a.npy", "b.npy"], capsys)
        assert f"store={store} is in use" in line
        assert _contents(store, partial) == before and not store.exists()
    finally:
        _release(holder)


def test_an_index_being_written_is_refused_before_anything_is_read(prepared, tmp_path, capsys):
    index = tmp_path / "index"
    holder = _hold(index)
    try:
        line = _refused(
            ["index", "--quiet", "--out", str(index), "--teacher-store", str(tmp_path / "no_store"), "--split", "val"],
            capsys,
        )
        assert line.startswith(f"dsmd: error: --out={index} is in use by another dsmd command (pid {holder.pid} ")
        assert not index.exists() and not Path(f"{index}.partial").exists()
    finally:
        _release(holder)
    assert (
        main_code(
            ["index", "--quiet", "--out", str(index), "--teacher-store", str(prepared["store"]), "--split", "val"]
        )
        == 0
    )


def test_an_export_being_written_is_refused_and_its_partial_folder_left_alone(trained_student, tmp_path, capsys):
    out = tmp_path / "export"
    partial = Path(f"{out}.partial")
    partial.mkdir()
    (partial / "config.json").write_text("{}")  # the first export's half-written folder
    holder = _hold(out)
    try:
        before = _contents(out, partial)
        line = _refused(["export", "--checkpoint", str(trained_student["checkpoint"]), "--out", str(out)], capsys)
        assert line.startswith(f"dsmd: error: --out={out} is in use by another dsmd command (pid {holder.pid} ")
        assert _contents(out, partial) == before and not out.exists()
    finally:
        _release(holder)
    checkpoint = str(trained_student["checkpoint"])
    assert main_code(["export", "--checkpoint", checkpoint, "--out", str(out)]) == 0
    assert (out / "config.json").is_file() and not partial.exists()


def test_a_benchmark_being_built_is_refused_before_anything_is_read(tmp_path, capsys):
    out = tmp_path / "benchmark"
    holder = _hold(out)
    try:
        line = _refused(["build-benchmark", "--quiet", "--out", str(out)], capsys)
        assert line.startswith(f"dsmd: error: --out={out} is in use by another dsmd command (pid {holder.pid} ")
        assert not out.exists()
    finally:
        _release(holder)


def test_readers_are_never_blocked(prepared, tmp_path, capsys):
    store, out = prepared["store"], tmp_path / "reader_run"
    overrides = [*prepared["overrides"], f"out_dir={out}", "train.max_steps=2", "train.epochs=1"]
    with acquire_folder(store, "store"):  # as if another command were writing the store
        assert main_code(["train", "--quiet", *overrides]) == 0  # training reads the store
        assert main_code(["extract", "--quiet", *overrides]) == 0  # complete and up to date: only read
        assert main_code(["eval", "--quiet", "--store", str(store), "--split", "val", "--json"]) == 0
        with acquire_folder(out, "out_dir"):  # and the run
            checkpoint = out / "checkpoints" / "best.pt"
            assert main_code(["eval", "--quiet", "--checkpoint", str(checkpoint), "--split", "val", "--json"]) == 0
            index = tmp_path / "index"
            assert (
                main_code(["index", "--quiet", "--out", str(index), "--teacher-store", str(store), "--split", "val"])
                == 0
            )
            with acquire_folder(index, "--out"):
                assert (
                    main_code(
                        ["search", "--index", str(index), "--image", _an_image(index), "--model", str(checkpoint)]
                    )
                    == 0
                )


def _an_image(index: Path) -> str:
    return json.loads((index / "items.jsonl").read_text().splitlines()[0])["path"]


def _sweep_file(tmp_path: Path, overrides: list[str]) -> Path:
    write_base_config(tmp_path / "base.yaml", [*overrides, "train.epochs=1"])
    sweep = {
        "base": str(tmp_path / "base.yaml"),
        "out_dir": str(tmp_path / "sweep"),
        "grid": {"loss.margin": [0.0, 0.2]},
    }
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(sweep))
    return tmp_path / "sweep.yaml"


def test_a_sweep_skips_the_runs_another_sweep_or_command_is_running(prepared, tmp_path, capsys):
    from dsmd.sweeps import load_sweep

    path = _sweep_file(tmp_path, [o for o in prepared["overrides"] if not o.startswith("out_dir=")])
    first, second = load_sweep(path).runs
    claimed = _hold(first.folder, role="sweep")  # another sweep is running the first run
    trained = _hold(second.folder)  # a dsmd train holds the second
    try:
        capsys.readouterr()
        assert main_code(["sweep", "--quiet", str(path)]) == 2
        out, err = capsys.readouterr()
    finally:
        _release(claimed)
        _release(trained)
    assert f"skipped {first.variant}, seed 0: another sweep is running it (pid {claimed.pid} " in out
    assert f"skipped {second.variant}, seed 0: another command is training it (pid {trained.pid} " in out
    [line] = err.splitlines()
    assert (
        line.startswith("dsmd: error: 2 run(s) skipped: another sweep or command is running them")
        and "Run the sweep again" in line
    )
    assert not first.folder.exists() and not second.folder.exists()  # neither touched
