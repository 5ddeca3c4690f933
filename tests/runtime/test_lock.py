"""Folder locks: a second writer refused with the holder's description, a lock left by a killed
process taken over, the description written and removed, the probe."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from dsmd.errors import DsmdError
from dsmd.runtime.lock import (
    FolderInUse,
    acquire_folder,
    describe_holder,
    exclusive_folder,
    holder_of,
    lock_path,
)

# A process that takes the lock of argv[1] (role argv[2]), says so, and holds it until its stdin closes.
HOLDER = (
    "import sys; from dsmd.runtime.lock import acquire_folder; "
    "held = acquire_folder(sys.argv[1], 'out_dir', role=sys.argv[2]); print('held', flush=True); sys.stdin.read()"
)


def _hold(folder: Path, role: str = "") -> subprocess.Popen:
    """Another process holding ``folder``'s lock (returns once it holds it)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(folder), role],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "held", proc.communicate()[1]
    return proc


def _description(folder: Path, role: str = "") -> dict:
    return json.loads(lock_path(folder, role).with_name(lock_path(folder, role).name + ".json").read_text())


def test_the_lock_sits_beside_the_folder(tmp_path):
    assert lock_path(tmp_path / "run") == tmp_path / ".run.lock"
    assert lock_path(tmp_path / "run", role="sweep") == tmp_path / ".run.sweep.lock"
    assert lock_path(tmp_path / "a" / "store/") == tmp_path / "a" / ".store.lock"


def test_a_second_writer_is_refused_naming_the_holder(tmp_path):
    folder = tmp_path / "run"
    holder = _hold(folder)
    try:
        info = _description(folder)
        assert info["pid"] == holder.pid and info["host"] == socket.gethostname()
        assert "-c" in info["command"] and info["since"][:4].isdigit()
        assert holder_of(folder) == info
        with pytest.raises(FolderInUse) as refused:
            acquire_folder(folder, "out_dir")
        message = str(refused.value)
        assert f"out_dir={folder} is in use by another dsmd command (pid {holder.pid} on host" in message
        assert info["since"] in message and "\n" not in message
        assert refused.value.holder == info
        assert not folder.exists()  # the folder itself is never created by its lock
    finally:
        holder.stdin.close()
        assert holder.wait(timeout=60) == 0
    assert holder_of(folder) is None
    with acquire_folder(folder, "out_dir") as held:  # free again
        assert _description(folder)["pid"] == os.getpid()
    assert not held.path.with_name(held.path.name + ".json").exists()  # removed on release,
    assert not held.path.exists()  # and so is the lock file


def test_a_lock_left_by_a_killed_process_is_taken_over(tmp_path):
    folder = tmp_path / "store"
    holder = _hold(folder)
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=60)
    assert lock_path(folder).is_file() and _description(folder)["pid"] == holder.pid  # left behind
    assert holder_of(folder) is None  # the kernel let the lock go with its process
    held = acquire_folder(folder, "store")
    assert _description(folder)["pid"] == os.getpid()
    held.release()
    held.release()  # idempotent
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing of either is left


def test_folders_made_for_the_lock_go_with_it_unless_used(tmp_path):
    with acquire_folder(tmp_path / "a" / "b" / "run", "out_dir"):
        assert (tmp_path / "a" / "b" / ".run.lock").is_file()
    assert not (tmp_path / "a").exists()  # a command that failed leaves nothing behind
    with acquire_folder(tmp_path / "a" / "b" / "run", "out_dir"):
        (tmp_path / "a" / "b" / "run").mkdir()  # what the command wrote
    assert sorted(p.name for p in (tmp_path / "a" / "b").iterdir()) == ["run"]


def test_a_stale_description_is_not_shown_as_the_holder(tmp_path):
    folder = tmp_path / "run"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    held = acquire_folder(folder, "out_dir")
    try:  # as if a killed holder's description were still there while a live one takes the lock
        lock_path(folder).with_name(".run.lock.json").write_text(
            json.dumps({"pid": dead.pid, "host": socket.gethostname(), "command": "dsmd train", "since": "then"})
        )
        with pytest.raises(FolderInUse, match="a process that has not described itself yet") as refused:
            acquire_folder(folder, "out_dir")
        assert refused.value.holder == {}
    finally:
        held.release()
    assert describe_holder({}) == "a process that has not described itself yet"


def test_roles_are_independent_locks(tmp_path):
    folder = tmp_path / "run"
    holder = _hold(folder, role="sweep")
    try:
        assert holder_of(folder, role="sweep")["pid"] == holder.pid
        with acquire_folder(folder, "out_dir"):  # training the run is another lock than claiming it
            pass
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)


def test_exclusive_folder_alone(tmp_path):
    folder = tmp_path / "index"
    with exclusive_folder(folder, "--out"):
        assert holder_of(folder)["pid"] == os.getpid()
        with pytest.raises(FolderInUse, match=r"--out=.* is in use"), exclusive_folder(folder, "--out"):
            pass
        with exclusive_folder(folder, "--out", needed=False):  # a command that will only read
            pass
    assert holder_of(folder) is None


def test_a_lock_that_cannot_be_created_is_one_error(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(DsmdError) as refused:
        acquire_folder(tmp_path / "file" / "run", "out_dir")
    assert not isinstance(refused.value, FolderInUse)
