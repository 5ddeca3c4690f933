"""A student described in plain JSON, and rebuilt from that description without any download.

:func:`student_blueprint` records what :func:`~dsmd.models.student.build_student` made: each
tower's kind and, for a transformers tower, its whole model config (``config.to_dict()``,
truncation included: ``text_positions`` is its ``max_position_embeddings``), the factorised layers'
ranks (``embedding_rank`` of the text tower, ``head_rank`` of an EfficientNet's classifier; absent
when whole), the image preprocessing, the text pooling, the output width and whether outputs are
L2-normalised. :func:`student_from_blueprint` builds the same architecture with
random weights (no hub, no packaged weights needed; EfficientNet-Lite0 is built by name), ready
for a state dict. Exported students (:mod:`dsmd.export`) carry a blueprint, their weights and
their tokenizer, and nothing else.
"""

from __future__ import annotations

from typing import Any

from dsmd.errors import DsmdError
from dsmd.models.student import DualEncoder
from dsmd.models.text import TextTower
from dsmd.models.text_compact import factorize_word_embeddings
from dsmd.models.vision import EfficientNetLite0Tower, HFVisionTower
from dsmd.runtime.pretrained import load_hf_model

BLUEPRINT_VERSION = 1


def _tower_config(model) -> dict[str, Any]:
    config = model.config.to_dict()
    config.pop("_name_or_path", None)
    return config


def student_blueprint(student: DualEncoder) -> dict[str, Any]:
    """The JSON-serialisable description of ``student``'s architecture (not its weights)."""
    vision = student.vision
    if isinstance(vision, EfficientNetLite0Tower):
        vision_bp = {"kind": "efficientnet_lite0", **vision.spec}
    elif isinstance(vision, HFVisionTower):
        vision_bp = {
            "kind": "transformers",
            "config": _tower_config(vision.model),
            "mean": list(vision.mean),
            "std": list(vision.std),
            "resample": vision.resample,
            "crop": vision.crop,
        }
    else:
        raise DsmdError(f"cannot describe a vision tower of type {type(vision).__name__}")
    text_bp = {"kind": "transformers", "config": _tower_config(student.text.model), "pooling": student.text.pooling}
    if student.text.embedding_rank is not None:
        text_bp["embedding_rank"] = student.text.embedding_rank
    return {
        "version": BLUEPRINT_VERSION,
        "dim": student.dim,
        "normalize": student.normalize,
        "image_size": student.image_size,
        "max_text_length": student.max_text_length,
        "vision": vision_bp,
        "text": text_bp,
        "image_transform": student.image_transform(train=False).to_dict(),
    }


def _hf_model(config_dict: dict[str, Any], key: str):
    from transformers import AutoConfig

    config_dict = dict(config_dict)
    model_type = config_dict.pop("model_type", None)
    if not model_type:
        raise DsmdError(f"{key}: the blueprint's model config has no model_type.")
    try:
        config = AutoConfig.for_model(model_type, **config_dict)
    except (ValueError, KeyError) as exc:
        raise DsmdError(f"{key}: this transformers version cannot build a '{model_type}' model ({exc}).") from exc
    return load_hf_model("", config, pretrained=False, key=key)


def student_from_blueprint(blueprint: dict[str, Any], tokenizer: Any) -> DualEncoder:
    """A student with ``blueprint``'s architecture and random weights (load a state dict next).

    Args:
        blueprint: from :func:`student_blueprint`.
        tokenizer: the text tower's tokenizer (saved beside the weights).

    Raises:
        DsmdError: an unknown blueprint version or tower kind.
    """
    if blueprint.get("version") != BLUEPRINT_VERSION:
        raise DsmdError(
            f"student blueprint version {blueprint.get('version')!r}; this dsmd reads {BLUEPRINT_VERSION}. "
            "Export the student again with this version."
        )
    v = blueprint["vision"]
    if v["kind"] == "efficientnet_lite0":
        vision = EfficientNetLite0Tower(
            pretrained=False,
            blocks=v["blocks"],
            overrides=v["overrides"],
            head=v["head"],
            head_rank=v.get("head_rank"),
            head_from_weights=False,
        )
    elif v["kind"] == "transformers":
        vision = HFVisionTower(
            _hf_model(v["config"], "vision tower"), tuple(v["mean"]), tuple(v["std"]), v["resample"], v["crop"]
        )
    else:
        raise DsmdError(f"unknown vision tower kind {v['kind']!r} in the student blueprint.")
    t = blueprint["text"]
    if t["kind"] != "transformers":
        raise DsmdError(f"unknown text tower kind {t['kind']!r} in the student blueprint.")
    model = _hf_model(t["config"], "text tower")
    if t.get("embedding_rank") is not None:
        factorize_word_embeddings(model, t["embedding_rank"], from_weights=False)
    text = TextTower(model, tokenizer, t["pooling"])
    return DualEncoder(
        vision,
        text,
        blueprint["dim"],
        normalize=blueprint["normalize"],
        image_size=blueprint["image_size"],
        max_text_length=blueprint["max_text_length"],
    )
