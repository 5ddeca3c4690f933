"""``dsmd search``: rank an index's items for a caption or an image, with the query's latency."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from dsmd.errors import DsmdError
from dsmd.inference import Encoder, load_student
from dsmd.search.shards import Searchable


def check_space(index: Searchable, encoder: Encoder) -> None:
    """Refuse a model whose features do not live in the index's feature space.

    A student distilled from teacher T shares T's space, so it may query an index of T's stored
    features (asymmetric retrieval) as well as one it built itself.
    """
    if encoder.space != index.space:
        raise DsmdError(
            f"{encoder.name} encodes into feature space {encoder.space}, but index {index.path} holds "
            f"features of space {index.space} ({index.meta['model'].get('name')}): their scores would "
            "mean nothing. Query with the model that built the index, or a student distilled from its "
            "teacher."
        )


def query_model(index: Searchable, model: str | None, device: str = "cpu", runtime: str = "torch") -> Encoder:
    """The query encoder: ``model`` when given, else the one recorded in the index, run by ``runtime``."""
    if model is None:
        recorded = index.meta["model"].get("name", "")
        if "store" in index.meta["model"] or not Path(recorded).exists():
            raise DsmdError(
                f"index {index.path} was built from {recorded or 'a feature store'}; give the query model "
                "with --model (an export folder or checkpoint of a student of that teacher)."
            )
        model = recorded
    encoder = load_student(model, device, runtime)
    check_space(index, encoder)
    return encoder


def run_query(
    index: Searchable, encoder: Encoder, text: str | None = None, image: str | None = None, k: int = 10
) -> dict[str, Any]:
    """``{"query", "results": [{"id", "path" | "text", "score"}], "ms"}`` for one query.

    ``ms`` covers encoding the query (tokenisation and the student's tower) and the index search.

    Raises:
        DsmdError: no query, an empty caption, both a caption and an image, ``k`` below 1.
    """
    if (text is None) == (image is None):
        raise DsmdError("give one query: --text CAPTION or --image PATH.")
    if text is not None and not text.strip():
        raise DsmdError('the query is empty: give a caption to search for (--text "a red kangaroo").')
    if k < 1:
        raise DsmdError(f"-k must be at least 1, got {k}.")
    t0 = time.perf_counter()
    query = encoder.encode_texts([text]) if text is not None else encoder.encode_images([image])
    scores, ids = index.search(query, k)
    ms = (time.perf_counter() - t0) * 1e3
    key = "path" if index.kind == "images" else "text"
    results = [
        {"id": int(i), key: index.label(int(i)), "score": round(float(s), 5)}
        for s, i in zip(scores[0], ids[0], strict=True)
        if i >= 0
    ]
    return {"query": text if text is not None else str(image), "results": results, "ms": round(ms, 2)}
