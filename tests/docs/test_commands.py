"""The shell commands of the documentation run as shown.

Every ```bash, ```sh or ```shell block of README.md and of the pages in docs/ is either run
here or marked as not run by an HTML comment on the line right before its fence, saying why:

    <!-- not run: trains for minutes -->
    ```bash
    dsmd train --config demo
    ```

A block that is run runs as one bash script (``set -euo pipefail``) in an empty temporary
folder, with the Python environment of the tests (``.venv``) linked there as ``.venv`` and its
``bin`` first on PATH, so ``dsmd ...``, ``python ...`` and ``.venv/bin/dsmd ...`` all work.
Blocks that are run must finish in seconds (``--help``, ``python -c``); mark everything else:
commands that train, download, install, serve, need data or a GPU, or write into the
repository. A fence without a language whose first line looks like a command is refused, so no
shell block escapes both.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from subprocess import PIPE

import pytest

ROOT = Path(__file__).resolve().parents[2]
SHELL = {"bash", "sh", "shell"}
FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([^\s`]*)")
MARKER = re.compile(r"^\s*<!--\s*not run:\s*(\S.*?)\s*-->\s*$")
COMMAND = re.compile(r"^\s*(\$ )?(dsmd|\.venv/|bash|python3?|torchrun|pip|mkdocs)\b")


@dataclass
class Block:
    page: str  # relative to the repository
    line: int  # of the opening fence
    lang: str
    code: str
    not_run: str | None  # the marker's reason


def blocks(path: Path) -> list[Block]:
    """The fenced blocks of a Markdown file (nested fences stay inside their block)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    found, i = [], 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        indent, fence, lang = opening.groups()
        closing = re.compile(rf"^\s*{re.escape(fence[0])}{{{len(fence)},}}\s*$")
        end = i + 1
        while end < len(lines) and not closing.match(lines[end]):
            end += 1
        code = "\n".join(line.removeprefix(indent) for line in lines[i + 1 : end])
        marker = MARKER.match(lines[i - 1]) if i else None
        found.append(Block(str(path.relative_to(ROOT)), i + 1, lang, code, marker[1] if marker else None))
        i = end + 1
    return found


def _all_blocks() -> list[Block]:
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    return [block for page in pages for block in blocks(page)]


def _first_line(block: Block) -> str:
    return next((line.strip() for line in block.code.splitlines() if line.strip()), "")


def _to_run() -> list[Block]:
    return [b for b in _all_blocks() if b.lang in SHELL and b.not_run is None]


def test_the_parser_finds_blocks_and_markers(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    page = tmp_path / "p.md"
    page.write_text(
        "<!-- not run: slow -->\n```bash\ndsmd demo\n```\n\n````markdown\n```bash\nnested\n```\n````\n"
        "- item\n\n    ```sh\n    dsmd --help\n    ```\n"
    )
    found = blocks(page)
    assert [(b.line, b.lang, b.code, b.not_run) for b in found] == [
        (2, "bash", "dsmd demo", "slow"),
        (6, "markdown", "```bash\nnested\n```", None),
        (13, "sh", "dsmd --help", None),
    ]


def test_every_command_block_is_labelled_and_every_marker_used():
    problems = []
    for block in _all_blocks():
        where = f"{block.page}:{block.line}"
        if not block.lang and COMMAND.match(_first_line(block)):
            problems.append(f"{where}: a fence without a language holds commands; write ```bash (and run or mark it)")
        if block.not_run is not None and block.lang not in SHELL:
            problems.append(f"{where}: a `not run` marker before a ```{block.lang} block, which is never run")
    assert not problems, "\n".join(problems)


def test_some_blocks_are_run():
    assert len(_to_run()) >= 3


def _stop_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@pytest.mark.parametrize("block", _to_run(), ids=lambda b: f"{b.page}:{b.line}")
def test_command_block_runs(block, tmp_path):
    venv = Path(sys.executable).parent.parent
    (tmp_path / ".venv").symlink_to(venv)
    env = {**os.environ, "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}", "VIRTUAL_ENV": str(venv)}
    script = ["bash", "-c", "set -euo pipefail\n" + block.code]
    # its own process group, so that a block that overruns is stopped with everything it started
    run = subprocess.Popen(script, cwd=tmp_path, env=env, text=True, stdout=PIPE, stderr=PIPE, start_new_session=True)
    try:
        out, err = run.communicate(timeout=300)  # a generous limit that only a failure reaches
    except subprocess.TimeoutExpired:
        _stop_group(run.pid)
        out, err = run.communicate()
    _stop_group(run.pid)  # anything the block left running in the background
    fix = "fix the block, or mark it `<!-- not run: REASON -->` on the line before its fence"
    assert run.returncode == 0, (
        f"{block.page}:{block.line} failed (exit {run.returncode}); {fix}:\n"
        f"{block.code}\n--- output ---\n{out[-2000:]}{err[-3000:]}"
    )
