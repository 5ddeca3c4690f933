"""A gallery split into shards: which items a shard holds, and several shards searched as one.

``dsmd index --shard K/N`` keeps the items whose stable hash (:func:`shard_of`: sha256 of the
path or caption) is ``K`` modulo ``N``. The hash, not the position in the listing, decides, so
adding items later sends each to the shard it will always belong to; each shard is an ordinary
index (built with one process or many, of any kind), on whichever machine serves it.

``dsmd search --index S0 S1 ...`` and ``dsmd serve --index S0 S1 ...`` open the shards as one
:class:`ShardedIndex`: a query runs on every shard and the answers are merged by score
(:func:`merge_top_k`), which is what faiss's ``IndexShards`` does inside one process. The
scores are comparable across shards, since every shard holds features of one model, scored by
the exact inner product (an ``ivfpq`` shard re-ranks its candidates exactly). Ids run over the
shards in the order given: shard 0's items first.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from dsmd.errors import DsmdError
from dsmd.search.engine import MISSING_SCORE
from dsmd.search.index import Index
from dsmd.search.kinds import describe


def shard_of(value: str, shards: int) -> int:
    """The shard, ``0 .. shards - 1``, that the item named ``value`` (a path or a caption) belongs to."""
    return int.from_bytes(hashlib.sha256(value.encode("utf-8")).digest()[:8], "big") % shards


def parse_shard(text: str) -> tuple[int, int]:
    """``"K/N"`` -> ``(K, N)``, ``0 <= K < N``.

    Raises:
        DsmdError: not of that form.
    """
    k, sep, n = text.partition("/")
    if not (sep and k.strip().isdigit() and n.strip().isdigit() and int(k) < int(n)):
        raise DsmdError(f"--shard takes K/N, shard K of N counted from 0 (e.g. 0/4 ... 3/4); got {text!r}.")
    return int(k), int(n)


def shard_mark(shard: tuple[int, int] | None) -> dict[str, int] | None:
    """What ``meta.json`` records of shard ``(K, N)``: ``{"index": K, "of": N}`` (None: not a shard)."""
    return {"index": shard[0], "of": shard[1]} if shard else None


def shard_words(mark: dict[str, int] | None) -> str:
    """``shard K/N`` or ``not a shard``, for messages."""
    return f"shard {mark['index']}/{mark['of']}" if mark else "not a shard"


def merge_top_k(
    scores: list[np.ndarray], ids: list[np.ndarray], offsets: list[int], k: int
) -> tuple[np.ndarray, np.ndarray]:
    """The best ``k`` of several shards' answers to the same queries.

    Args:
        scores, ids: one ``(Q, k_s)`` pair per shard (id -1: none).
        offsets: added to each shard's ids (its first item's global id).

    Returns:
        Scores and global ids ``(Q, k)``, best first; ties keep the shards' order.
    """
    all_scores = np.concatenate(scores, axis=1)
    all_ids = np.concatenate([np.where(i >= 0, i + o, -1) for i, o in zip(ids, offsets, strict=True)], axis=1)
    all_scores = np.where(all_ids >= 0, all_scores, -np.inf)
    best = np.argsort(-all_scores, axis=1, kind="stable")[:, :k]
    top_scores = np.take_along_axis(all_scores, best, axis=1)
    top_ids = np.take_along_axis(all_ids, best, axis=1)
    return np.where(top_ids >= 0, top_scores, MISSING_SCORE).astype(np.float32), top_ids


def _check_shards(shards: list[Index]) -> None:
    """Refuse shards that cannot be merged: other item kinds or models, missing or repeated shards."""
    first = shards[0]
    for other in shards[1:]:
        model, theirs = first.meta["model"], other.meta["model"]
        if other.kind != first.kind or (model.get("model_id"), model.get("space")) != (
            theirs.get("model_id"),
            theirs.get("space"),
        ):
            raise DsmdError(
                f"shards {first.path} and {other.path} hold {first.kind} encoded by {model.get('name')} and "
                f"{other.kind} encoded by {theirs.get('name')}: their scores cannot be merged. Give shards "
                "of one gallery, built by one model."
            )
    marks = [s.meta.get("shard") for s in shards]
    if any(marks):
        counts = {m["of"] for m in marks if m}
        numbers = sorted(m["index"] for m in marks if m)
        if None in marks or len(counts) != 1 or numbers != list(range(counts.pop())):
            given = ", ".join(f"{m['index']}/{m['of']}" if m else "not a shard" for m in marks)
            raise DsmdError(
                f"the indexes given are shards {given}: give every shard of one gallery once "
                "(each built with `dsmd index --shard K/N`)."
            )


class ShardedIndex:
    """Several index folders (shards of one gallery) searched as one; the :class:`Index` interface."""

    def __init__(self, shards: list[Index]):
        _check_shards(shards)
        self.shards = shards
        self.offsets = list(np.cumsum([0] + [len(s) for s in shards[:-1]]).tolist())
        self.path: Path = shards[0].path
        self.meta: dict[str, Any] = shards[0].meta
        self.kind, self.space, self.dim = shards[0].kind, shards[0].space, shards[0].dim

    def __len__(self) -> int:
        return sum(len(s) for s in self.shards)

    @property
    def index_kind(self) -> str:
        kinds = sorted({s.index_kind for s in self.shards})
        return kinds[0] if len(kinds) == 1 else "+".join(kinds)

    @property
    def recall(self) -> float | None:
        """The lowest of the shards' recall@10 (None when one was not measured)."""
        values = [s.recall for s in self.shards]
        return None if None in values else min(values)

    def describe_search(self) -> str:
        if len({s.index_kind for s in self.shards}) == 1:
            params = self.shards[0].meta.get("index", {}).get("params", {})
            return f"{len(self.shards)} shards, each {describe(self.index_kind, params, self.recall)}"
        return f"{len(self.shards)} shards ({self.index_kind})"

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` of all shards for each query ``(Q, D)``: scores and global ids ``(Q, min(k, N))``."""
        answers = [s.search(queries, k) for s in self.shards]
        return merge_top_k([a[0] for a in answers], [a[1] for a in answers], self.offsets, min(k, len(self)))

    def _locate(self, i: int) -> tuple[Index, int]:
        shard = int(np.searchsorted(self.offsets, i, side="right")) - 1
        return self.shards[shard], i - self.offsets[shard]

    def label(self, i: int) -> str:
        shard, local = self._locate(i)
        return shard.label(local)

    def labels(self) -> Iterator[str]:
        """Every item's path or text, shard by shard."""
        for shard in self.shards:
            yield from shard.labels()


Searchable = Index | ShardedIndex


def open_index(paths: list[str] | str) -> Searchable:
    """One index folder, or several shards of one gallery searched as one."""
    paths = [paths] if isinstance(paths, str | Path) else list(paths)
    if len(set(map(str, paths))) != len(paths):
        raise DsmdError("an index folder is given twice: give each shard once.")
    return Index.open(paths[0]) if len(paths) == 1 else ShardedIndex([Index.open(p) for p in paths])
