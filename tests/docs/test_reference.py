"""The generated reference pages match the code: docs/reference/cli.md (from the CLI's parser)
and docs/reference/config.md (from the config schema). Regenerate both with
``.venv/bin/python -m dsmd.docs_reference --write``."""

from __future__ import annotations

import dataclasses
import difflib
import typing
from pathlib import Path
from typing import Literal

import pytest

from dsmd import docs_reference
from dsmd.cli_parser import build_parser
from dsmd.config import RunConfig
from dsmd.config.checks import at_least, between

DOCS = Path(__file__).resolve().parents[2] / "docs"
COMMAND = f".venv/bin/{docs_reference.REGENERATE}"


@pytest.mark.parametrize("page", [docs_reference.CLI_PAGE, docs_reference.CONFIG_PAGE])
def test_committed_page_is_what_the_generator_writes(page):
    expected = docs_reference.pages()[page]
    path = DOCS / page
    assert path.is_file(), f"docs/{page} is missing; generate it with: {COMMAND}"
    actual = path.read_text(encoding="utf-8")
    if actual != expected:
        diff = difflib.unified_diff(
            actual.splitlines(), expected.splitlines(), f"docs/{page} (committed)", "(generated now)", lineterm=""
        )
        shown = "\n".join(list(diff)[:60])
        pytest.fail(f"docs/{page} is out of date with the code; regenerate it with: {COMMAND}\n{shown}")


def test_every_config_key_is_described():
    problems = docs_reference.description_problems()
    assert not problems, "\n".join(problems)


def _keys(cls: type, prefix: str = "") -> list[str]:
    """Every config key of dataclass ``cls``, nested sections walked."""
    keys = []
    for f in dataclasses.fields(cls):
        key = prefix + f.name
        tp = typing.get_type_hints(cls)[f.name]
        keys += _keys(tp, key + ".") if dataclasses.is_dataclass(tp) else [key]
    return keys


def test_config_page_lists_every_key_once():
    text = docs_reference.config_page()
    keys = _keys(RunConfig)
    assert len(keys) > 60 and "data.kind" in keys and "train.lr" in keys and "store" in keys
    for key in keys:
        assert text.count(f"| `{key}` |") == 1, key


def test_cli_page_lists_every_command_and_option():
    text = docs_reference.cli_page()
    parser = build_parser()
    commands = docs_reference._subcommands(parser)
    assert len(commands) >= 15
    for name, (sub, _) in commands.items():
        assert f"\n## dsmd {name}\n" in text
        for action in sub._actions:
            for option in action.option_strings:
                if option not in ("-h", "--help"):
                    section = text.split(f"\n## dsmd {name}\n", 1)[1].split("\n## dsmd ", 1)[0]
                    assert f"`{option}" in section, f"dsmd {name} {option}"


def test_the_page_does_not_depend_on_the_terminal(monkeypatch):
    monkeypatch.setenv("COLUMNS", "300")
    wide = docs_reference.cli_page()
    monkeypatch.setenv("COLUMNS", "40")
    assert docs_reference.cli_page() == wide


@dataclasses.dataclass
class _Example:
    """An example section.

    Attributes:
        mode: how it runs, over
            two lines.
        rate: a number in a range.
    """

    mode: Literal["a", "b"] = "a"
    rate: float = between(0, 1, 0.5, high_open=True)
    count: int | None = at_least(1, None)


def test_docstring_entries_types_and_defaults():
    prose, entries = docs_reference.section_doc(_Example)
    assert prose == "An example section."
    assert entries == {"mode": "how it runs, over two lines.", "rate": "a number in a range."}
    fields = {f.name: f for f in dataclasses.fields(_Example)}
    assert docs_reference.accepts(Literal["a", "b"], {}) == "one of `a`, `b`"
    assert docs_reference.accepts(float, fields["rate"].metadata) == "a number ≥ 0 and < 1"
    assert docs_reference.accepts(int | None, fields["count"].metadata) == "an integer ≥ 1, or `null`"
    assert docs_reference.accepts(list[int], {"ge": 0}) == "a list of integers ≥ 0"
    assert docs_reference.accepts(dict[str, float], {"gt": 0}) == "a mapping of names to numbers > 0"
    shown = [docs_reference.show_default(v) for v in (None, True, ["cd", "fd"], {}, "", 0.0001)]
    assert shown == ["`null`", "`true`", "`[cd, fd]`", "`{}`", '`""`', "`0.0001`"]
    assert docs_reference.rst_to_markdown(":class:`~dsmd.inference.Encoder` and ``x``") == "`Encoder` and `x`"


def test_check_names_the_stale_page_and_the_command(tmp_path, capsys):
    assert docs_reference.main(["--check", "--docs", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "reference/cli.md is out of date" in err and docs_reference.REGENERATE in err
    assert docs_reference.main(["--write", "--docs", str(tmp_path)]) == 0
    assert docs_reference.main(["--check", "--docs", str(tmp_path)]) == 0
    assert sorted(p.name for p in (tmp_path / "reference").iterdir()) == ["cli.md", "config.md"]
