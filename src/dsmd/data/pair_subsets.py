"""Fewer captioned pairs: a manifest that keeps a fraction of its training images as pairs, and the
rest of the training split as pools of images and captions without pairs.

For a manifest ``M.jsonl`` (lines with ``image``, ``captions``, ``split``) and a fraction ``f``,
:func:`write_pair_subset` writes beside it:

- ``M_pairs_<100f>.jsonl``: every val and test line unchanged, and ``round(f * N)`` of the ``N``
  training lines (at least one), in their order;
- ``M_pairs_<100f>_pool_images.jsonl`` (``{"image": ...}``) and ``..._pool_captions.jsonl``
  (``{"caption": ...}``): the other training images and their captions, for
  ``data.unpaired_images.kind=jsonl`` / ``data.unpaired_texts.kind=jsonl``.

The training lines are drawn from one permutation of ``seed``, so a smaller fraction's pairs are
part of every larger one's, and every variant of a study sees the same pairs.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from dsmd.errors import DsmdError
from dsmd.runtime.files import write_text_atomic


def pair_subset(records: list[dict], fraction: float, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """``(kept, rest)``: the lines kept as pairs (val and test all, a fraction of train) and the other train lines."""
    if not 0 < fraction <= 1:
        raise DsmdError(f"a fraction of the pairs must be in (0, 1], got {fraction}.")
    train = [i for i, r in enumerate(records) if r.get("split") == "train"]
    if not train:
        raise DsmdError("the manifest has no training lines (split 'train') to keep a fraction of.")
    order = random.Random(seed).sample(train, len(train))
    chosen = set(order[: max(1, round(fraction * len(train)))])
    kept = [r for i, r in enumerate(records) if r.get("split") != "train" or i in chosen]
    rest = [r for i, r in enumerate(records) if r.get("split") == "train" and i not in chosen]
    return kept, rest


def subset_name(manifest: str | Path, fraction: float) -> Path:
    """``M_pairs_<100f>.jsonl`` beside ``M.jsonl`` (``manifest_pairs_10.jsonl`` for 0.1)."""
    manifest = Path(manifest)
    return manifest.with_name(f"{manifest.stem}_pairs_{100 * fraction:g}.jsonl")


def write_pair_subset(manifest: str | Path, fraction: float, seed: int = 0) -> dict[str, Path | int]:
    """Write the subset of ``manifest`` and its two pools (see the module docstring).

    Returns:
        ``{"manifest", "pool_images", "pool_captions", "pairs", "rest"}``: the three files and
        the training images kept as pairs and left to the pools.
    """
    manifest = Path(manifest)
    records = [json.loads(line) for line in manifest.read_text(encoding="utf-8").splitlines() if line.strip()]
    kept, rest = pair_subset(records, fraction, seed)
    out = subset_name(manifest, fraction)
    images, captions = out.with_name(out.stem + "_pool_images.jsonl"), out.with_name(out.stem + "_pool_captions.jsonl")
    write_text_atomic(out, "".join(json.dumps(r) + "\n" for r in kept))
    write_text_atomic(images, "".join(json.dumps({"image": r["image"]}) + "\n" for r in rest))
    write_text_atomic(captions, "".join(json.dumps({"caption": c}) + "\n" for r in rest for c in r["captions"]))
    return {
        "manifest": out,
        "pool_images": images,
        "pool_captions": captions,
        "pairs": sum(1 for r in kept if r.get("split") == "train"),
        "rest": len(rest),
    }
