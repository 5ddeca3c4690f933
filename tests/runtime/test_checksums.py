import hashlib
import json
import os

import pytest

from dsmd.errors import DsmdError
from dsmd.runtime.checksums import STAMPS, check_files, file_records, json_sha256, seal_holds, sealed, sha256_file


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def test_sha256_file_is_hashlib_over_the_bytes(tmp_path):
    data = os.urandom(5 << 20)  # more than one block
    (tmp_path / "f").write_bytes(data)
    assert sha256_file(tmp_path / "f") == hashlib.sha256(data).hexdigest()


def test_a_sealed_mapping_checks_itself_whatever_its_key_order_and_spacing():
    data = sealed({"b": [1, 2.5, "é"], "a": {"x": None}})
    assert data["sha256"] == json_sha256({"a": {"x": None}, "b": [1, 2.5, "é"]})
    reread = json.loads(json.dumps(data, indent=3))
    assert seal_holds(reread)
    reread["b"][1] = 2.25
    assert not seal_holds(reread)
    assert not seal_holds({k: v for k, v in data.items() if k != "sha256"})


def test_checked_files_are_stamped_and_a_changed_one_is_refused(tmp_path):
    for name, text in (("a.txt", "alpha\n"), ("b.bin", "beta" * 1000)):
        (tmp_path / name).write_text(text)
    records = file_records(tmp_path, ["a.txt", "b.bin"])
    assert records["a.txt"] == {"bytes": 6, "sha256": hashlib.sha256(b"alpha\n").hexdigest()}
    assert check_files(tmp_path, records, "folder x", "Fix it.") == 4006
    assert (tmp_path / STAMPS).is_file()
    assert check_files(tmp_path, records, "folder x", "Fix it.") == 0  # stamped: nothing hashed
    assert check_files(tmp_path, records, "folder x", "Fix it.", force=True) == 4006
    (tmp_path / "b.bin").write_text("beta" * 999 + "bet!")  # same size, other bytes
    with pytest.raises(DsmdError, match=r"^folder x: b.bin is damaged \(its sha256 differs.*Fix it.$"):
        check_files(tmp_path, records, "folder x", "Fix it.")
    (tmp_path / "a.txt").write_text("alpha")
    with pytest.raises(DsmdError, match=r"a.txt is damaged \(5 bytes where 6 were written\)"):
        check_files(tmp_path, records, "folder x", "Fix it.")
    (tmp_path / "a.txt").unlink()
    with pytest.raises(DsmdError, match="a.txt is missing"):
        check_files(tmp_path, records, "folder x", "Fix it.")


def test_stamps_kept_out_of_the_folder_go_to_the_users_cache(tmp_path):
    folder = tmp_path / "export"
    folder.mkdir()
    (folder / "w").write_bytes(b"weights")
    records = file_records(folder, ["w"])
    assert check_files(folder, records, "export", "", in_folder=False) == 7
    assert sorted(p.name for p in folder.iterdir()) == ["w"]
    assert list((tmp_path / "cache" / "dsmd" / "verified").iterdir())
    assert check_files(folder, records, "export", "", in_folder=False) == 0
