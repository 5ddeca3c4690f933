"""An index's items, read from ``items.jsonl`` when asked: 8 bytes of memory an item.

A gallery of a million paths held as Python dicts would cost about 300 bytes an item, more
than a compressed index itself; :class:`ItemFile` keeps only where each line starts and reads
the lines a query returns (with ``pread``: thread-safe, no shared file position).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, overload

import numpy as np

from dsmd.errors import DsmdError


class ItemFile(Sequence):
    """The items of an ``items.jsonl`` (one JSON object a line), as a read-only sequence of dicts.

    A line that is not an item (damaged) raises :class:`~dsmd.errors.DsmdError` naming ``what``,
    the line and ``fix``.
    """

    def __init__(self, path: str | Path, what: str = "", fix: str = ""):
        self.path = Path(path)
        self.what, self.fix = what or str(self.path.parent), fix
        self._file = open(self.path, "rb")  # noqa: SIM115 - held as long as the index is open
        self._starts = _line_starts(self._file)  # line i: starts[i] .. starts[i + 1] - 2, and its newline

    def __len__(self) -> int:
        return len(self._starts) - 1

    @overload
    def __getitem__(self, i: int) -> dict[str, Any]: ...

    @overload
    def __getitem__(self, i: slice) -> list[dict[str, Any]]: ...

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        i = i % len(self)
        start, end = int(self._starts[i]), int(self._starts[i + 1]) - 1
        return self._parse(os.pread(self._file.fileno(), end - start, start), i)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        with open(self.path, "rb") as f:
            for i, line in enumerate(f):
                yield self._parse(line, i)

    def _parse(self, line: bytes, i: int) -> dict[str, Any]:
        """Item ``i`` from its line: ``{"id": i, "path" | "text": str}``."""
        try:
            item = json.loads(line)
        except ValueError:
            item = None
        if not (isinstance(item, dict) and isinstance(item.get("path", item.get("text")), str)):
            raise DsmdError(f"{self.what}: line {i + 1} of {self.path.name} is not an item (damaged). {self.fix}")
        return item


def _line_starts(file, block: int = 1 << 24) -> np.ndarray:
    """``(lines + 1,)`` int64: where each line of ``file`` starts, then the end of the file plus one
    (a last line without its newline counts as if it had one); read in blocks of ``block`` bytes."""
    ends, offset = [np.zeros(1, np.int64)], 0
    while data := file.read(block):
        ends.append(np.flatnonzero(np.frombuffer(data, np.uint8) == ord("\n")).astype(np.int64) + offset + 1)
        offset += len(data)
    starts = np.concatenate(ends)
    return starts if starts[-1] == offset else np.append(starts, offset + 1)
