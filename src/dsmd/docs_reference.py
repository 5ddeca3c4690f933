"""The documentation's two reference pages, generated from the code so that they cannot drift.

``docs/reference/cli.md`` is written from the command line's parser
(:func:`dsmd.cli_parser.build_parser`): every command with its usage, description, arguments
(defaults, choices, which are required) and examples. ``docs/reference/config.md`` is written
from the config schema (:mod:`dsmd.config.schema`): every key with its default, what it accepts
(its type, its ``Literal`` choices and its range, as :mod:`dsmd.config.checks` checks them) and
its meaning, taken from the ``Attributes:`` section of its section's docstring.

    python -m dsmd.docs_reference --write    # regenerate both pages
    python -m dsmd.docs_reference --check    # exit 1, naming the pages that differ

``tests/docs/test_reference.py`` fails when a committed page differs from what this writes.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
import sys
import types
import typing
from pathlib import Path
from typing import Any, Literal

from dsmd.cli_parser import build_parser
from dsmd.config import RunConfig
from dsmd.runtime.files import write_text_atomic

REGENERATE = "python -m dsmd.docs_reference --write"
CLI_PAGE = "reference/cli.md"
CONFIG_PAGE = "reference/config.md"
USAGE_WIDTH = 100  # usage lines wrap here, whatever the terminal's width


# -- shared -------------------------------------------------------------------------------------


def _cell(text: str) -> str:
    """One table cell: a single line, pipes escaped."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]


def rst_to_markdown(rst: str) -> str:
    """Docstring markup as Markdown: ``:role:`~a.b.c``` and ````x```` become code spans."""
    text = re.sub(r":\w+:`~[\w.]*?(\w+)`", r"`\1`", rst)
    text = re.sub(r":\w+:`([^`]+)`", r"`\1`", text)
    return re.sub(r"``([^`]+)``", r"`\1`", text)


def _generated_note(source: str) -> str:
    return (
        f"Generated from {source} by `{REGENERATE}`; do not edit it by hand "
        "(`tests/docs/test_reference.py` fails when it is out of date)."
    )


# -- the CLI --------------------------------------------------------------------------------------


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, tuple[argparse.ArgumentParser, str]]:
    """Each subcommand's parser and one-line help, in the order ``dsmd --help`` lists them."""
    found = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            found.update({name: (sub, helps.get(name, "")) for name, sub in action.choices.items()})
    return found


def _usage(parser: argparse.ArgumentParser) -> str:
    formatter = argparse.HelpFormatter(parser.prog, width=USAGE_WIDTH)
    formatter.add_usage(parser.usage, parser._actions, parser._mutually_exclusive_groups)
    return formatter.format_help().strip()


def _argument(action: argparse.Action) -> str:
    """``--images PATH [PATH ...]``, ``-k K``, ``key=value [key=value ...]``."""
    if action.metavar is not None:
        metavar = action.metavar
    elif action.choices is not None:
        metavar = "{" + ",".join(str(c) for c in action.choices) + "}"
    else:
        metavar = action.dest.upper() if action.option_strings else action.dest
    if isinstance(metavar, tuple):
        metavar = " ".join(metavar)
    nargs = action.nargs
    if nargs == 0:
        args = ""
    elif nargs is None:
        args = metavar
    elif nargs == "?":
        args = f"[{metavar}]"
    elif nargs == "*":
        args = f"[{metavar} ...]"
    elif nargs == "+":
        args = f"{metavar} [{metavar} ...]"
    elif isinstance(nargs, int):
        args = " ".join([metavar] * nargs)
    else:
        args = "..."
    names = ", ".join(action.option_strings)
    return f"`{' '.join(part for part in (names, args) if part)}`"


def _default(action: argparse.Action) -> str:
    if action.required and action.nargs not in ("?", "*"):  # argparse marks `*` positionals required
        return "required"
    if action.nargs == 0 and action.default is False:
        return "off"
    if action.default is None or action.default == argparse.SUPPRESS:
        return ""
    return f"`{action.default}`"


def _help(action: argparse.Action, prog: str) -> str:
    text = action.help or ""
    if "%(" in text:
        text = text % {**vars(action), "prog": prog}
    return text


def _arguments(parser: argparse.ArgumentParser) -> list[str]:
    rows = [
        [_argument(a), _default(a), _help(a, parser.prog)]
        for a in parser._actions
        if not isinstance(a, argparse._HelpAction | argparse._SubParsersAction) and a.help != argparse.SUPPRESS
    ]
    lines = _table(["argument", "default", "meaning"], rows) if rows else []
    for group in parser._mutually_exclusive_groups:
        names = ", ".join(f"`{a.option_strings[0]}`" for a in group._group_actions)
        lines += ["", f"{'Exactly' if group.required else 'At most'} one of {names}."]
    return lines


def _examples(epilog: str | None) -> list[str]:
    if not epilog:
        return []
    return ["", "```text", epilog.strip("\n"), "```"]


def cli_page() -> str:
    """``docs/reference/cli.md``: every command and flag of ``dsmd``, from its parser."""
    parser = build_parser()
    commands = _subcommands(parser)
    lines = [
        "# CLI reference",
        "",
        _generated_note("the parser in `src/dsmd/cli_parser.py`")
        + " `dsmd --help` and `dsmd COMMAND --help` print the same.",
        "",
        "## dsmd",
        "",
        parser.description or "",
        "",
        "```text",
        _usage(parser),
        "```",
        "",
        *_arguments(parser),
        "",
        *_table(["command", "what it does"], [[f"[`{n}`](#dsmd-{n})", h] for n, (_, h) in commands.items()]),
        *_examples(parser.epilog),
    ]
    for name, (sub, _) in commands.items():
        lines += ["", f"## dsmd {name}", "", sub.description or "", "", "```text", _usage(sub), "```", ""]
        lines += _arguments(sub) + _examples(sub.epilog)
    return "\n".join(lines) + "\n"


# -- the config ------------------------------------------------------------------------------------


def section_doc(cls: type) -> tuple[str, dict[str, str]]:
    """A config dataclass's docstring: its prose, and its ``Attributes:`` entries by field name."""
    doc = inspect.cleandoc(cls.__doc__ or "")
    prose, _, attributes = doc.partition("\nAttributes:\n")
    entries: dict[str, str] = {}
    name = None
    for line in attributes.splitlines():
        entry = re.match(r"^    (\w+): (.*)$", line)
        if entry:
            name = entry[1]
            entries[name] = entry[2]
        elif line.startswith("        ") and name:
            entries[name] += " " + line.strip()
        elif line.strip():
            break  # the next docstring section
    return prose.strip(), entries


def _sections(prefix: str = "", cls: type = RunConfig) -> list[tuple[str, type]]:
    """``("", RunConfig)`` for the top-level keys, then every section (``data``,
    ``data.unpaired_images``, ...) by its key, depth first, in the order of declaration."""
    hints = typing.get_type_hints(cls)
    found = [(prefix, cls)]
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            found += _sections(f"{prefix}.{f.name}" if prefix else f.name, hints[f.name])
    return found


def description_problems() -> list[str]:
    """Config keys without a description, and descriptions of keys that do not exist."""
    problems = []
    for prefix, cls in _sections():
        _, entries = section_doc(cls)
        fields = {f.name for f in dataclasses.fields(cls)}
        for name in sorted(fields - set(entries)):
            key = f"{prefix}.{name}" if prefix else name
            problems.append(f"config key '{key}' has no description: add it to {cls.__name__}'s Attributes: section")
        for name in sorted(set(entries) - fields):
            problems.append(f"{cls.__name__}'s Attributes: section describes '{name}', which is not one of its fields")
    return problems


_PLURAL = {int: "integers", float: "numbers", str: "strings", bool: "booleans", Any: "values"}
_SINGULAR = {int: "an integer", float: "a number", str: "a string", bool: "`true` or `false`", Any: "any value"}
_BOUNDS = (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<"))


def _range(meta: typing.Mapping[str, Any]) -> str:
    return " and ".join(f"{sign} {meta[name]:g}" for name, sign in _BOUNDS if name in meta)


def accepts(tp: Any, meta: typing.Mapping[str, Any], plural: bool = False) -> str:
    """What a field of annotation ``tp`` and range metadata ``meta`` accepts, in words."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is Literal:
        return ("each one of " if plural else "one of ") + ", ".join(f"`{a}`" for a in args)
    if origin in (typing.Union, types.UnionType):
        some = " or ".join(accepts(a, meta, plural) for a in args if a is not type(None))
        return some + (", or `null`" if type(None) in args else "")
    if origin is list:
        return "a list of " + accepts(args[0], meta, plural=True)
    if origin is dict:
        return "a mapping of names to " + accepts(args[1], meta, plural=True)
    text = (_PLURAL if plural else _SINGULAR).get(tp, str(tp))
    bounds = _range(meta)
    return f"{text} {bounds}" if bounds else text


def show_default(value: Any) -> str:
    """A default as YAML writes it: ``null``, ``true``, ``[cd, fd]``, ``{}``."""
    if value is None:
        return "`null`"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, list):
        return "`[" + ", ".join(str(v) for v in value) + "]`"
    if isinstance(value, dict):
        return "`{" + ", ".join(f"{k}: {v}" for k, v in value.items()) + "}`"
    if value == "":
        return '`""`'
    return f"`{value}`"


def _default_of(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def _key_rows(prefix: str, cls: type) -> list[list[str]]:
    hints = typing.get_type_hints(cls)
    _, entries = section_doc(cls)
    rows = []
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            continue
        key = f"{prefix}.{f.name}" if prefix else f.name
        meaning = entries.get(f.name) or f"*(no description: add one to {cls.__name__}'s Attributes: section)*"
        rows.append([f"`{key}`", show_default(_default_of(f)), accepts(tp, f.metadata), rst_to_markdown(meaning)])
    return rows


def config_page() -> str:
    """``docs/reference/config.md``: every config key, its default, allowed values and meaning."""
    lines = [
        "# Config reference",
        "",
        _generated_note("the config schema in `src/dsmd/config/` (the dataclasses and their docstrings)"),
        "",
        "Every command reads one config: a YAML file or a packaged config named with `--config` "
        "(default: `demo`), then `key=value` overrides on the command line, whose values are YAML "
        "(`loss.losses=[cd,fd]`, `student.text_layers=null`). Every value is checked when the config is "
        "read, before anything is loaded: a value outside what its key accepts, or a rule between keys "
        "broken, is one line naming the key, the value and what is allowed (exit status 2).",
    ]
    header = ["key", "default", "accepts", "meaning"]
    for prefix, cls in _sections():
        prose, _ = section_doc(cls)
        title = f"`{prefix}`" if prefix else "Top level"
        intro = prose if prefix else prose.split("\n\n")[0]
        lines += ["", f"## {title}", "", rst_to_markdown(intro), "", *_table(header, _key_rows(prefix, cls))]
    return "\n".join(lines) + "\n"


# -- writing and checking -------------------------------------------------------------------------


def pages() -> dict[str, str]:
    """The generated pages by their path under the docs folder."""
    return {CLI_PAGE: cli_page(), CONFIG_PAGE: config_page()}


def stale_pages(docs: Path) -> list[str]:
    """The pages under ``docs`` whose content differs from what the generator writes now."""
    stale = []
    for rel, text in pages().items():
        path = docs / rel
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            stale.append(rel)
    return stale


def _default_docs() -> Path:
    root = Path(__file__).resolve().parents[2]  # the repository, for an editable install
    return root / "docs" if (root / "mkdocs.yml").is_file() else Path.cwd() / "docs"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dsmd.docs_reference",
        description="Write (or check) docs/reference/cli.md and docs/reference/config.md from the code.",
    )
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", action="store_true", help="write both pages")
    mode.add_argument("--check", action="store_true", help="exit 1 when a page differs from what --write writes")
    parser.add_argument("--docs", type=Path, default=None, help="the docs folder (default: the repository's docs/)")
    args = parser.parse_args(argv)
    docs = args.docs or _default_docs()
    if args.check:
        stale = stale_pages(docs)
        for rel in stale:
            print(f"{docs / rel} is out of date; regenerate it with: {REGENERATE}", file=sys.stderr)
        return 1 if stale else 0
    for rel, text in pages().items():
        path = docs / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, text)
        print(f"wrote {path}")
    for problem in description_problems():
        print(f"warning: {problem}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
