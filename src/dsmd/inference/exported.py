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

Every file is written into ``OUT.partial/`` and the folder renamed when complete.
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
    if meta.get("version") != EXPORT_VERSION:
        raise DsmdError(
            f"{folder} is export format {meta.get('version')!r}; this dsmd reads {EXPORT_VERSION}. "
            "Export the student again with this version."
        )
    return meta
