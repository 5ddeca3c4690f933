"""``dsmd index``: build or extend an index from images, captions, or a store's teacher features.

One writer per index: each function holds the lock of ``--out`` (:mod:`dsmd.runtime.lock`) from
its start, before anything is read or written, so a second ``dsmd index`` on the same folder is
refused at once and changes nothing; ``dsmd search`` and ``dsmd serve`` read without a lock.
Ctrl-C and SIGTERM stop a build at once: the chunks saved so far are whole, and the same command
continues from them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from dsmd.config import DataConfig, from_dict
from dsmd.data.datasets import load_split
from dsmd.errors import DsmdError
from dsmd.inference import Encoder
from dsmd.runtime.files import check_writable, write_json_atomic
from dsmd.runtime.lock import exclusive_folder
from dsmd.search.index import CHUNK, META, SKIPPED, Index, recover, swap_into_place, write_index
from dsmd.search.listing import list_images, list_texts
from dsmd.store import FeatureStore
from dsmd.store.manifest import teacher_space

Encode = Callable[[list[dict[str, Any]]], tuple[np.ndarray, list[int], list[str]]]


def _existing(out: Path, kind: str, model: dict[str, Any]) -> Index | None:
    recover(out)
    if not (out / META).is_file():
        if out.exists() and any(out.iterdir()):
            raise DsmdError(f"{out} exists and is not an index. Choose another --out.")
        return None
    index = Index.open(out)
    if index.kind != kind:
        raise DsmdError(f"index {out} holds {index.kind}, not {kind}. Choose another --out.")
    old = index.meta["model"]
    if (old.get("model_id"), old.get("space")) != (model.get("model_id"), model.get("space")):
        raise DsmdError(
            f"index {out} was built by {old.get('name')} (weights {old.get('model_id')}); adding items "
            f"encoded by {model.get('name')} (weights {model.get('model_id')}) would mix two models' "
            "features. Use the same model, or another --out."
        )
    return index


def _chunks(partial: Path, new: list[dict[str, Any]], encode: Encode, progress: bool, what: str) -> list[Path]:
    """Encode ``new`` in chunks saved under ``partial`` (those saved before are kept)."""
    plan = {"items": hashlib.sha256(json.dumps(new).encode()).hexdigest(), "chunk": CHUNK}
    plan_file = partial / "plan.json"
    if partial.exists() and (not plan_file.is_file() or json.loads(plan_file.read_text()) != plan):
        shutil.rmtree(partial)
    partial.mkdir(parents=True, exist_ok=True)
    write_json_atomic(plan_file, plan)
    files = []
    with tqdm(total=len(new), desc=f"indexing {what}", unit=what[:-1], disable=not progress, leave=False) as bar:
        for k, start in enumerate(range(0, len(new), CHUNK)):
            file = partial / f"chunk-{k:05d}.npz"
            if not file.is_file():
                vectors, ok, failed = encode(new[start : start + CHUNK])
                tmp = partial / f"chunk-{k:05d}.tmp.npz"
                np.savez(tmp, vectors=vectors, ok=np.array(ok, dtype=np.int64), failed=np.array(failed, dtype=str))
                tmp.rename(file)
            files.append(file)
            bar.update(min(CHUNK, len(new) - start))
    return files


def _build(
    out: Path,
    kind: str,
    model: dict[str, Any],
    items: list[dict[str, Any]],
    encode: Encode,
    approximate: bool,
    progress: bool,
    log,
) -> Index:
    out = Path(out)
    check_writable(out.parent, "--out")
    existing = _existing(out, kind, model)
    key = "path" if kind == "images" else "text"
    seen = {item[key] for item in existing.items} if existing else set()
    new = [item for item in items if item[key] not in seen]
    partial = Path(str(out) + ".partial")
    files = _chunks(partial, new, encode, progress, kind)
    vectors = [np.asarray(existing.vectors)] if existing else []
    kept = list(existing.items) if existing else []
    retried = {item[key] for item in new}  # images skipped before are tried again: they may be fixed now
    before = (out / SKIPPED).read_text().splitlines() if existing and (out / SKIPPED).is_file() else []
    skipped = [line for line in before if line.split("\t", 1)[0] not in retried]
    new_skipped = 0
    for k, file in enumerate(files):
        with np.load(file, allow_pickle=False) as chunk:
            vectors.append(chunk["vectors"])
            kept += [new[k * CHUNK + int(i)] for i in chunk["ok"]]
            skipped += [str(line) for line in chunk["failed"]]
            new_skipped += len(chunk["failed"])
    kept = [{"id": i, key: item[key]} for i, item in enumerate(kept)]
    if not kept:
        shutil.rmtree(partial, ignore_errors=True)
        raise DsmdError(
            f"none of the {len(items)} {kind} could be read (e.g. {skipped[0] if skipped else '?'}); no index written."
        )
    all_vectors = np.concatenate(vectors) if vectors else np.zeros((0, model["dim"]), np.float32)
    write_index(partial / "index", {"kind": kind, "model": model}, kept, all_vectors, skipped, approximate)
    swap_into_place(partial / "index", out)
    shutil.rmtree(partial, ignore_errors=True)
    log(
        f"index {out}: {len(new) - new_skipped} new {kind} added, {new_skipped} skipped"
        + (f" (unreadable, listed in {out / SKIPPED})" if new_skipped else "")
        + f"; {len(kept)} in all"
    )
    return Index.open(out)


@contextlib.contextmanager
def _writing(out: str | Path) -> Iterator[None]:
    """Hold the lock of the index folder ``out`` (checked writable first, for a clear message)."""
    check_writable(Path(out).parent, "--out")
    with exclusive_folder(out, "--out"):
        yield


def index_images(
    out: str | Path, encoder: Encoder, sources: list[str], approximate: bool = False, progress: bool = True, log=print
) -> Index:
    """Index every image under ``sources`` (folders, image files, or lists of images) with ``encoder``.

    Unreadable images are skipped and named in ``skipped.txt``; images already in the index are
    not encoded again.
    """
    with _writing(out):
        items = [{"path": path} for path in list_images(sources)]

        def encode(chunk):
            return encoder.encode_image_files([item["path"] for item in chunk])

        return _build(Path(out), "images", encoder.describe(), items, encode, approximate, progress, log)


def index_texts(
    out: str | Path, encoder: Encoder, file: str, approximate: bool = False, progress: bool = True, log=print
) -> Index:
    """Index the captions of ``file`` (one a line) with ``encoder``."""
    with _writing(out):
        items = [{"text": text} for text in list_texts(file)]

        def encode(chunk):
            return encoder.encode_texts([item["text"] for item in chunk], progress=False), list(range(len(chunk))), []

        return _build(Path(out), "texts", encoder.describe(), items, encode, approximate, progress, log)


def index_teacher_store(
    out: str | Path, store_path: str, split: str, approximate: bool = False, progress: bool = True, log=print
) -> Index:
    """An image gallery of the teacher's stored features of ``split``: nothing is encoded.

    The images are listed from the store's own data config (they must still be where they
    were); the store is verified first.
    """
    with _writing(out):
        return _index_teacher_store(out, store_path, split, approximate, progress, log)


def _index_teacher_store(out: str | Path, store_path: str, split: str, approximate: bool, progress: bool, log) -> Index:
    """The work of :func:`index_teacher_store`, the index's lock held."""
    store = FeatureStore.open(store_path)
    data_cfg = from_dict(DataConfig, store.manifest.get("data") or {}, "data.")
    data = load_split(data_cfg, split)
    store.check_dataset(split, data.fingerprint())
    store.verify([split], progress=progress)
    features = store.split(split).image.numpy()
    teacher = store.teacher
    model = {
        "name": f"teacher {teacher.get('name') or teacher.get('kind')} (store {store.path})",
        "model_id": str(teacher.get("weights_sha256", ""))[:12],
        "space": teacher_space(teacher),
        "dim": store.dim,
        "normalized": bool(store.manifest["normalized"]),
        "store": str(store.path),
        "split": split,
    }
    items = [{"path": path} for path in data.image_paths]
    rows = {path: i for i, path in enumerate(data.image_paths)}

    def encode(chunk):
        return features[[rows[item["path"]] for item in chunk]], list(range(len(chunk))), []

    return _build(Path(out), "images", model, items, encode, approximate, progress, log)
