"""The store's ``manifest.json``: what it must hold, its checksum, and comparing two of them.

A manifest records the teacher's identity, whether the features are L2-normalised, their dtype
and width, each split's dataset fingerprint and counts, and every file with its row ranges,
size and sha256 (layout in :mod:`dsmd.store.feature_store`), and, when the store holds pools of
unpaired data, under ``unpaired`` each pool's table (:data:`UNPAIRED_TABLES`) with its fingerprint
and counts. It ends with ``checksum``, the
sha256 of the rest of the manifest (keys sorted, compact JSON), so an edited manifest (say
``normalized`` switched to false, which would train an unnormalised student) is refused when
the store is opened. :func:`check_manifest` checks every field's type before anything uses it.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

from dsmd.errors import DsmdError
from dsmd.runtime.checksums import seal_holds, sealed

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SPLIT_NAMES = ("train", "val", "test")
# The tables of the pools of unpaired data (docs/method.md "Unpaired data"), by modality: images
# without captions, captions without images. A store without pools has no ``unpaired`` entry.
UNPAIRED_TABLES = {"image": "unpaired_image", "text": "unpaired_text"}
# What two stores must share to be the same store (extraction resumes, imports are reused); the
# pools are compared apart (:func:`pools_mismatch`): a store may hold pools a config does not use.
COMPARED = ("format_version", "teacher", "normalized", "dtype", "dim", "views", "splits")
_FILE_NAME = re.compile(r"[A-Za-z0-9_.-]+\.safetensors")
_SHA256 = re.compile(r"[0-9a-f]{64}")


def seal(manifest: dict[str, Any]) -> dict[str, Any]:
    """``manifest`` with its ``checksum`` (added last): the sha256 of the rest as canonical JSON."""
    return sealed(manifest, "checksum")


def teacher_space(teacher: dict[str, Any]) -> str:
    """The id of the feature space a teacher's features live in: a hash of its identity (weights,
    preprocessing, width), without where it was loaded from. A student distilled from a store
    lives in that store's teacher space, so its queries can search the teacher's gallery."""
    body = {k: v for k, v in teacher.items() if k not in ("source", "name")}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def describe_mismatch(found: dict, expected: dict, keys: tuple[str, ...] = COMPARED) -> list[str]:
    """Human-readable differences between two manifests on ``keys``."""
    return [
        f"{key}: store has {found.get(key)!r}, expected {expected[key]!r}"
        for key in keys
        if key in expected and found.get(key) != expected[key]
    ]


def pools_mismatch(found: dict, expected: dict) -> tuple[list[str], list[str]]:
    """How a store's pools differ from the pools a config expects (``expected``: table -> info).

    Returns:
        ``(missing, different)``: the expected tables the store lacks, and messages for those it
        holds with another fingerprint or other counts. Tables the store holds and the config does
        not name are neither.
    """
    have = found.get("unpaired") or {}
    missing = [table for table in expected if table not in have]
    different = [
        f"{table}: store has {have[table]!r}, expected {info!r}"
        for table, info in expected.items()
        if table in have and have[table] != info
    ]
    return missing, different


def _is_int(value: Any, low: int = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _range_ok(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and all(_is_int(v) for v in value) and value[0] <= value[1]


def _record_problem(record: Any) -> str | None:
    if not isinstance(record, dict):
        return "a file record is not a mapping"
    name = record.get("file")
    if not isinstance(name, str) or not _FILE_NAME.fullmatch(name):
        return f"file name {name!r} is not a plain NAME.safetensors"
    if not _range_ok(record.get("images")) or not _range_ok(record.get("captions")):
        return f"{name}: 'images' and 'captions' must be [start, stop] row ranges"
    if "bytes" in record and not _is_int(record["bytes"]):
        return f"{name}: 'bytes' must be a non-negative integer"
    if "sha256" in record and not (isinstance(record["sha256"], str) and _SHA256.fullmatch(record["sha256"])):
        return f"{name}: 'sha256' must be 64 hex digits"
    return None


def _problem(m: Any) -> str | None:
    """What is wrong with manifest ``m`` (None: nothing)."""
    if not isinstance(m, dict):
        return "it is not a JSON object"
    checks = [
        ("format_version", lambda v: _is_int(v), "an integer"),
        ("teacher", lambda v: isinstance(v, dict), "an object"),
        ("normalized", lambda v: isinstance(v, bool), "true or false"),
        ("dtype", lambda v: v in ("float32", "float16"), "float32 or float16"),
        ("dim", lambda v: _is_int(v, 1), "a positive integer"),
        ("splits", lambda v: isinstance(v, dict) and bool(v), "an object with at least one split"),
    ]
    for key, ok, what in checks:
        if key not in m:
            return f"it has no '{key}'"
        if not ok(m[key]):
            return f"'{key}' must be {what}, got {m[key]!r}"
    unpaired = m.get("unpaired", {})
    if not isinstance(unpaired, dict):
        return "'unpaired' must map pool tables to their fingerprints and counts"
    unknown = [f"split {s!r}" for s in m["splits"] if s not in SPLIT_NAMES]
    unknown += [f"pool table {t!r}" for t in unpaired if t not in UNPAIRED_TABLES.values()]
    if unknown:
        return f"unknown {unknown[0]}"
    for split, info in [*m["splits"].items(), *unpaired.items()]:
        if (
            not isinstance(info, dict)
            or not isinstance(info.get("fingerprint"), str)
            or not _is_int(info.get("num_images"))
            or not _is_int(info.get("num_captions"))
        ):
            return f"split '{split}' needs a fingerprint (string) and num_images / num_captions (integers)"
    files = m.get("files", {})
    if not isinstance(files, dict) or any(not isinstance(v, list) for v in files.values()):
        return "'files' must map each split to a list of file records"
    for split, records in files.items():
        if split not in m["splits"] and split not in unpaired:
            return f"'files' lists split {split!r}, which 'splits' does not"
        for record in records:
            if (problem := _record_problem(record)) is not None:
                return problem
    return None


def read_manifest(path: str | Path, fix: str) -> dict[str, Any]:
    """Read and check ``path`` (a store's manifest.json).

    Args:
        fix: what to do about a bad manifest (appended to the message).

    Raises:
        DsmdError: unreadable, not JSON, missing or mistyped fields, another format version, or
            a checksum that does not match (the manifest was edited).
    """
    path = Path(path)
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DsmdError(f"{path} is corrupt ({exc}). {fix}") from exc
    if isinstance(manifest, dict) and manifest.get("format_version") not in (None, FORMAT_VERSION):
        raise DsmdError(
            f"{path.parent} has store format {manifest.get('format_version')}, this dsmd reads "
            f"{FORMAT_VERSION}. Extract it again with this version."
        )
    problem = _problem(manifest)
    if problem is not None:
        raise DsmdError(f"{path} is not a valid store manifest: {problem}. {fix}")
    if "checksum" in manifest and not seal_holds(manifest, "checksum"):
        raise DsmdError(
            f"{path} was modified after the store was written (its checksum does not match). "
            f"Restore the original manifest. {fix}"
        )
    return manifest
