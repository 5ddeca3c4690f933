"""The export folder: a trained student that loads without dsmd's training config or store.

::

    OUT/config.json          {"dsmd_export": {...}}: format version, the student's blueprint
                             (:mod:`dsmd.models.blueprint`), its feature space (the teacher it
                             was distilled from), where it came from; for a student whose towers
                             are both transformers models, also a transformers
                             VisionTextDualEncoderModel config (:mod:`dsmd.export.hf_dual_encoder`)
    OUT/model.safetensors    the weights (dsmd's layout, or the VisionTextDualEncoderModel's)
    OUT/tokenizer.json ...   the text tower's tokenizer (save_pretrained)
    OUT/preprocessing.json   how images become pixels: decoding (transparency onto white), resize,
                             crop, mean / std (what an ONNX-only user must reproduce)
    OUT/image_encoder.onnx   with --onnx: pixels (B, 3, S, S) -> (B, D) features
    OUT/text_encoder.onnx    with --onnx: input_ids, attention_mask (B, L) -> (B, D)

Every file is written into ``OUT.partial/`` and the folder renamed when complete. config.json
records every other file's size and sha256 (``dsmd_export.files``) and its own, of the rest of its
content as canonical JSON (``dsmd_export.sha256``): loading an export checks config.json and the
sizes, and hashes the files the first time it is loaded at a place (stamps in the user's cache,
:mod:`dsmd.runtime.checksums`, so the folder stays as written); ``dsmd verify OUT`` hashes again.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

EXPORT_VERSION = 1
CONFIG = "config.json"
WEIGHTS = "model.safetensors"
PREPROCESSING = "preprocessing.json"
IMAGE_ONNX = "image_encoder.onnx"
TEXT_ONNX = "text_encoder.onnx"
REQUIRED = (CONFIG, WEIGHTS, PREPROCESSING)


def is_export(path: str | Path) -> bool:
    """Whether ``path`` is a folder that looks like a dsmd export."""
    return (Path(path) / CONFIG).is_file()


def read_export_config(folder: str | Path) -> dict[str, Any]:
    """The ``dsmd_export`` entry of an export's config.json, checked.

    Raises:
        DsmdError: a file is missing, config.json is not JSON, has no ``dsmd_export``, or is of
            another format version.
    """
    from dsmd.errors import DsmdError

    folder = Path(folder)
    missing = [name for name in REQUIRED if not (folder / name).is_file()]
    if missing:
        raise DsmdError(
            f"{folder} is not a complete dsmd export: {', '.join(missing)} missing. Export it again "
            "with `dsmd export --checkpoint CKPT --out DIR`."
        )
    try:
        config = json.loads((folder / CONFIG).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DsmdError(f"{folder / CONFIG} is corrupt ({exc}). Export the student again.") from exc
    meta = config.get("dsmd_export") if isinstance(config, dict) else None
    if not isinstance(meta, dict) or not isinstance(meta.get("blueprint"), dict):
        raise DsmdError(f"{folder / CONFIG} has no dsmd_export entry: {folder} was not written by `dsmd export`.")
    if ("files" in meta or "sha256" in meta) and meta.get("sha256") != _config_sha256(config):
        raise DsmdError(
            f"{folder / CONFIG} is damaged (its sha256 differs from its content). Export the student again "
            "with `dsmd export --checkpoint CKPT --out DIR --overwrite`."
        )
    if meta.get("version") != EXPORT_VERSION:
        raise DsmdError(
            f"{folder} is export format {meta.get('version')!r}; this dsmd reads {EXPORT_VERSION}. "
            "Export the student again with this version."
        )
    return meta


def _config_sha256(config: dict[str, Any]) -> str:
    """The sha256 of config.json's content without ``dsmd_export.sha256`` (canonical JSON)."""
    from dsmd.runtime.checksums import json_sha256

    rest = {k: v for k, v in config["dsmd_export"].items() if k != "sha256"}
    return json_sha256({**config, "dsmd_export": rest})


def seal_config(config: dict[str, Any]) -> dict[str, Any]:
    """config.json with ``dsmd_export.sha256`` set: the file checks itself when read."""
    return {**config, "dsmd_export": {**config["dsmd_export"], "sha256": _config_sha256(config)}}


def export_files(folder: str | Path) -> list[str]:
    """The files of an export folder that config.json records: all but config.json itself and dot files."""
    folder = Path(folder)
    return sorted(
        p.relative_to(folder).as_posix()
        for p in folder.rglob("*")
        if p.is_file() and p.name != CONFIG and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def check_export_files(folder: str | Path, meta: dict[str, Any], force: bool = False) -> int:
    """Check an export's files against ``meta["files"]`` (the bytes hashed; 0: all stamped).

    An export written before dsmd recorded checksums has none to check.

    Raises:
        DsmdError: a file missing, resized or changed, naming it.
    """
    from dsmd.errors import DsmdError
    from dsmd.runtime.checksums import check_files

    folder = Path(folder)
    files = meta.get("files", {})
    fix = "Export the student again with `dsmd export --checkpoint CKPT --out DIR --overwrite`."
    if not isinstance(files, dict) or not all(isinstance(r, dict) for r in files.values()):
        raise DsmdError(f"{folder / CONFIG} is damaged (its dsmd_export.files is not what dsmd wrote). {fix}")
    return check_files(folder, files, f"export {folder}", fix, force=force, in_folder=False)
