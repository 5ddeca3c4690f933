"""What ``dsmd serve`` answers, apart from HTTP: queries, thumbnails, and the paths it shows.

Paths are shown relative to the deepest folder that holds every indexed file (the folder given
to ``dsmd index``, or the common parent of several), so that answers do not reveal where the
server keeps its files; ``show_paths=True`` (``dsmd serve --show-paths``) shows them as the
index stores them. A label ``CONTAINER::MEMBER`` (an image inside a tar shard or a table) is
shown as the container's relative path with its member.
"""

from __future__ import annotations

import io
import os
import threading
from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from dsmd.data.images import load_image
from dsmd.errors import DsmdError
from dsmd.inference import Encoder
from dsmd.search.query import run_query
from dsmd.search.shards import Searchable

THUMB_SIDE = 256
THUMB_CACHE = 512
CONTAINER_SEP = "::"


def common_folder(labels: Iterable[str]) -> str | None:
    """The deepest folder holding every file among ``labels`` (absolute), or None for no label."""
    folders = {os.path.dirname(os.path.abspath(label.partition(CONTAINER_SEP)[0])) for label in labels}
    return os.path.commonpath(sorted(folders)) if folders else None


def relative_label(label: str, root: str) -> str:
    """``label`` relative to the folder ``root`` (its member after ``::`` kept as it is)."""
    file, sep, member = label.partition(CONTAINER_SEP)
    return Path(os.path.relpath(os.path.abspath(file), root)).as_posix() + sep + member


class SearchService:
    """The index, the query encoder and a thumbnail cache.

    :meth:`search` and :meth:`thumbnail` do CPU work (the model, image decoding): the server
    calls them from its worker threads, never from its event loop. They are thread-safe.

    Args:
        show_paths: show the index's paths as stored (absolute, as a rule) instead of relative
            to the indexed folders.
    """

    def __init__(self, index: Searchable, encoder: Encoder, show_paths: bool = False):
        self.index, self.encoder, self.show_paths = index, encoder, show_paths
        self._model_lock = threading.Lock()  # one query at a time through the model
        self._cache_lock = threading.Lock()
        self._thumbs: OrderedDict[int, bytes] = OrderedDict()
        self._root = None if show_paths or index.kind != "images" else common_folder(index.labels())

    def shown(self, label: str) -> str:
        """How an indexed path is shown in answers (see the module docstring)."""
        return label if self._root is None else relative_label(label, self._root)

    def search(self, text: str, k: int) -> dict[str, Any]:
        """``{"query", "results": [{"id", "path" | "text", "score"}], "ms"}`` for a caption.

        Raises:
            DsmdError: an empty caption or ``k`` below 1.
        """
        with self._model_lock:
            result = run_query(self.index, self.encoder, text=text, k=k)
        for hit in result["results"]:
            if "path" in hit:
                hit["path"] = self.shown(hit["path"])
        return result

    def info(self) -> dict[str, Any]:
        """What the index holds, which model answers and which faiss index (``index_kind``: flat, hnsw or
        ivfpq, with ``recall_at_10`` against exact search measured when built; folder names only,
        unless ``show_paths``)."""
        return {
            "index": str(self.index.path) if self.show_paths else self.index.path.name,
            "kind": self.index.kind,
            "count": len(self.index),
            "model": self.encoder.name if self.show_paths else Path(self.encoder.name).name,
            "index_kind": self.index.index_kind,
            "recall_at_10": self.index.recall,
        }

    def has_thumbnail(self, item: int) -> bool:
        """Whether ``item`` is an indexed image (only those are ever read)."""
        return self.index.kind == "images" and 0 <= item < len(self.index)

    def cached_thumbnail(self, item: int) -> bytes | None:
        """The JPEG of ``item`` when the cache holds it (cheap: fit for the event loop)."""
        with self._cache_lock:
            if item in self._thumbs:
                self._thumbs.move_to_end(item)
                return self._thumbs[item]
        return None

    def thumbnail(self, item: int) -> bytes:
        """JPEG bytes, at most ``THUMB_SIDE`` a side, of indexed image ``item``.

        Raises:
            IndexError: no such item, or not an image index.
            DsmdError: the file cannot be read now (its message names the path).
        """
        if not self.has_thumbnail(item):
            raise IndexError(item)
        cached = self.cached_thumbnail(item)
        if cached is not None:
            return cached
        img = load_image(self.index.label(item))
        img.thumbnail((THUMB_SIDE, THUMB_SIDE))
        buf = io.BytesIO()
        try:
            img.save(buf, format="JPEG", quality=85)
        except OSError as exc:
            raise DsmdError(f"cannot make a thumbnail of {self.index.label(item)}: {exc}") from exc
        with self._cache_lock:
            self._thumbs[item] = buf.getvalue()
            while len(self._thumbs) > THUMB_CACHE:
                self._thumbs.popitem(last=False)
        return buf.getvalue()
