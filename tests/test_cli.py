"""The CLI: help with examples, and one clear line (no traceback) for each user error."""

from __future__ import annotations

import pytest

from dsmd.cli import main


def _run(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    out = capsys.readouterr()
    return exit_info.value.code, out.out + out.err


@pytest.mark.parametrize(
    "argv", [["--help"], ["demo", "--help"], ["extract", "--help"], ["train", "--help"], ["eval", "--help"]]
)
def test_help_shows_an_example(argv, capsys):
    code, text = _run(argv, capsys)
    assert code == 0 and "example" in text and "dsmd " in text


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["extract", "data.root=/nonexistent/stamps"], "apt-get install -y tuxpaint-stamps-default"),
        (["train", "train.lrr=1"], "unknown config key 'train.lrr'"),
        (["train", "--config", "/nonexistent.yaml"], "config file not found"),
        (["eval", "--checkpoint", "/nonexistent.pt"], "checkpoint not found"),
        (["eval", "--store", "/nonexistent_store"], "no feature store at /nonexistent_store"),
        (["train", "--resume", "out_dir=/nonexistent_run"], "nothing to resume"),
        (["extract", "teacher.kind=bert"], "'teacher.kind': 'bert' is not allowed"),
    ],
)
def test_user_errors_are_one_clear_line(argv, fragment, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, text = _run(argv, capsys)
    assert code == 2
    assert fragment in text
    assert "Traceback" not in text
    assert not any(tmp_path.iterdir()), "an error left files behind"


def test_corrupt_checkpoint_and_store(tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    code, text = _run(["eval", "--checkpoint", str(bad)], capsys)
    assert code == 2 and "cannot read checkpoint" in text and "Traceback" not in text
    store = tmp_path / "store"
    store.mkdir()
    (store / "manifest.json").write_text("{broken")
    code, text = _run(["eval", "--store", str(store)], capsys)
    assert code == 2 and "is corrupt" in text


def test_empty_caption_in_manifest(tmp_path, capsys):
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    (tmp_path / "m.csv").write_text("image,caption\na.png,\n")
    code, text = _run(
        ["extract", "data.kind=manifest", f"data.manifest={tmp_path / 'm.csv'}", f"store={tmp_path / 'store'}"], capsys
    )
    assert code == 2 and "empty caption" in text and not (tmp_path / "store").exists()
