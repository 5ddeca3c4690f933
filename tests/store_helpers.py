"""Hand-made feature stores for tests: a valid, sealed manifest around files a test wrote."""

from __future__ import annotations

from pathlib import Path

from dsmd.runtime.files import write_json_atomic
from dsmd.store.manifest import seal


def write_manifest(
    folder: Path,
    dim: int,
    counts: dict[str, tuple[int, int]],
    files: dict[str, list[dict]] | None,
    teacher: dict | None = None,
    **extra,
) -> dict:
    """Write ``folder/manifest.json`` for splits of ``(num_images, num_captions)``; returns it."""
    manifest = {
        "format_version": 1,
        "teacher": teacher or {"kind": "hf_clip"},
        "normalized": True,
        "dtype": "float32",
        "dim": dim,
        "views": {"train": 0},
        "splits": {
            s: {"fingerprint": "test", "num_images": n_i, "num_captions": n_t} for s, (n_i, n_t) in counts.items()
        },
        **({"files": files} if files is not None else {}),
        **extra,
    }
    manifest = seal(manifest)
    write_json_atomic(folder / "manifest.json", manifest)
    return manifest
