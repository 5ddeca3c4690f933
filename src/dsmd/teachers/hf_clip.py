"""Any transformers CLIP-family dual encoder as a teacher (CLIP, SigLIP, ALIGN, ...).

The model is loaded with ``AutoModel`` from a hub name or a local folder; what makes it usable
is a ``get_image_features(pixel_values=...)`` and a ``get_text_features(input_ids=...,
attention_mask=...)``. The image preprocessing is read from the folder's image-processor
config (``preprocessor_config.json``) as a plain dict, so no torchvision-backed fast processor
is ever instantiated.
"""

from __future__ import annotations

import contextlib
import inspect
from pathlib import Path
from typing import Any

import torch

from dsmd.data.transforms import ImageTransform
from dsmd.errors import DsmdError
from dsmd.runtime.pretrained import load_hf_auto_model, load_hf_tokenizer, offline_hub
from dsmd.teachers.base import Teacher, resolve_dtype

# Families trained on text padded to a fixed length, which their pooling relies on (SigLIP
# pools the last position); the others pad to the longest text of the batch.
PAD_TO_MAX_LENGTH = frozenset({"siglip"})
PADDINGS = ("longest", "max_length")
_REQUIRED_METHODS = ("get_image_features", "get_text_features")
# PIL's resampling codes (Image.Resampling), as transformers stores them.
_RESAMPLE_NAMES = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}


def _resolve_source(name_or_path: str) -> str:
    """A local folder (checked) or a hub name (left for ``from_pretrained`` to resolve)."""
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not path.is_dir():
            raise DsmdError(
                f"teacher path {path} is a file; hf_clip needs a model folder (config.json, "
                "weights, tokenizer files, preprocessor_config.json) or a hub name."
            )
        if not (path / "config.json").is_file():
            raise DsmdError(
                f"teacher folder {path} has no config.json. Point teacher.name_or_path at a "
                "folder written by model.save_pretrained(), or give a hub name."
            )
        return str(path)
    looks_like_path = name_or_path.startswith((".", "/", "~")) or "\\" in name_or_path or name_or_path.count("/") > 1
    if looks_like_path:
        raise DsmdError(
            f"teacher folder not found: {name_or_path}. Fix teacher.name_or_path, or give a hub "
            "name such as openai/clip-vit-base-patch32."
        )
    return name_or_path


def _square_side(value: Any, key: str, source: str) -> int:
    """The side length in an image-processor ``size``/``crop_size`` entry."""
    if isinstance(value, int):
        return value
    if isinstance(value, dict):
        if "shortest_edge" in value:
            return int(value["shortest_edge"])
        if "height" in value and "width" in value:
            if value["height"] != value["width"]:
                raise DsmdError(
                    f"teacher {source}: {key}={value} is not square; dsmd's ImageTransform produces square images only."
                )
            return int(value["height"])
    raise DsmdError(f"teacher {source}: cannot read an image size from {key}={value!r}")


def image_transform_from_processor_config(config: dict[str, Any], source: str) -> ImageTransform:
    """The :class:`ImageTransform` equivalent to a transformers image-processor config.

    transformers computes ``((p * rescale_factor - offset) - mean) / std`` on pixels ``p`` in
    0..255 (``offset`` is 1 with ``rescale_offset``, as ALIGN's processor has); ImageTransform
    computes ``(p / 255 - mean') / std'``, so ``mean' = (offset + mean) / (255 *
    rescale_factor)`` and ``std' = std / (255 * rescale_factor)``.

    A processor that center-crops gets ImageTransform's short-side resize + center crop; one
    that squashes the whole image to a square without cropping (SigLIP) gets ``crop=False``,
    the same squash. Approximations: a resize before the crop larger than the crop (e.g. 256
    -> 224) is not reproduced, and resampling filters other than bilinear become bicubic.

    Args:
        config: the image-processor dict (``preprocessor_config.json``).
        source: the model's name, for error messages.
    """
    crop = config.get("crop_size")
    do_center_crop = config.get("do_center_crop", crop is not None)
    if do_center_crop and crop is not None:
        side = _square_side(crop, "crop_size", source)
    elif config.get("size") is not None:
        side = _square_side(config["size"], "size", source)
    else:
        raise DsmdError(f"teacher {source}: its image-processor config has no size or crop_size")

    scale = float(config.get("rescale_factor", 1 / 255)) if config.get("do_rescale", True) else 1.0
    offset = 1.0 if config.get("rescale_offset", False) else 0.0
    if config.get("do_normalize", True):
        try:
            mean = [float(m) for m in _three(config["image_mean"])]
            std = [float(s) for s in _three(config["image_std"])]
        except KeyError as exc:
            raise DsmdError(
                f"teacher {source}: its image-processor config lacks {exc.args[0]}; "
                "re-save the processor with processor.save_pretrained()."
            ) from exc
    else:
        mean, std = [0.0] * 3, [1.0] * 3
    mean = [(offset + m) / (255 * scale) for m in mean]
    std = [s / (255 * scale) for s in std]

    resample = config.get("resample", 3)
    resample_name = _RESAMPLE_NAMES.get(resample, str(resample)).lower()
    resample_name = "bilinear" if "bilinear" in resample_name else "bicubic"
    return ImageTransform(
        size=side, mean=tuple(mean), std=tuple(std), resample=resample_name, crop=bool(do_center_crop)
    )


def _three(value: Any) -> list[Any]:
    values = list(value) if isinstance(value, list | tuple) else [value] * 3
    if len(values) != 3:
        raise DsmdError(f"expected 3 channel statistics, got {value!r}")
    return values


def _features(output: Any, method: str) -> torch.Tensor:
    """The ``(B, D)`` features from a ``get_*_features`` result.

    transformers 5 returns a ``BaseModelOutputWithPooling`` whose ``pooler_output`` holds the
    projected features; older versions and some models return the tensor itself.
    """
    if isinstance(output, torch.Tensor):
        return output
    pooled = getattr(output, "pooler_output", None)
    if isinstance(pooled, torch.Tensor):
        return pooled
    if isinstance(output, tuple) and len(output) > 1 and isinstance(output[1], torch.Tensor):
        return output[1]
    raise DsmdError(f"{method} returned {type(output).__name__} without a features tensor")


class HFClipTeacher(Teacher):
    """A transformers image-text dual encoder.

    Args:
        name_or_path: a hub name (loaded from the hub or its local cache) or a folder with the
            model, its tokenizer and ``preprocessor_config.json``.
        dtype: ``float32``, ``float16`` or ``bfloat16`` (the half types are for CUDA).
        max_length: token limit; default: the smaller of the tokenizer's ``model_max_length``
            and the text model's ``max_position_embeddings``.
        padding: ``longest`` or ``max_length``; default ``max_length`` for SigLIP (how it was
            trained) and ``longest`` otherwise.

    Raises:
        DsmdError: the folder does not exist or cannot be loaded, or the model has no
            ``get_image_features`` / ``get_text_features``.
    """

    kind = "hf_clip"

    def __init__(
        self,
        name_or_path: str,
        dtype: str = "float32",
        max_length: int | None = None,
        padding: str | None = None,
    ) -> None:
        super().__init__()
        name_or_path = str(name_or_path)
        torch_dtype = resolve_dtype(dtype)
        source = _resolve_source(name_or_path)
        from transformers.image_processing_base import ImageProcessingMixin

        model = load_hf_auto_model(source, "teacher.name_or_path")
        missing = [m for m in _REQUIRED_METHODS if not callable(getattr(model, m, None))]
        if missing:
            raise DsmdError(
                f"teacher {name_or_path!r} loads as {type(model).__name__}, which has no "
                f"{' / '.join(missing)}. hf_clip needs an image-text dual encoder such as "
                "CLIPModel, SiglipModel or AlignModel; use teacher.kind=offline otherwise."
            )
        self.tokenizer = load_hf_tokenizer(source, "teacher.name_or_path")
        try:
            with offline_hub() if Path(source).is_dir() else contextlib.nullcontext():
                processor_config, _ = ImageProcessingMixin.get_image_processor_dict(source)
        except (OSError, ValueError) as exc:
            raise DsmdError(
                f"teacher {name_or_path!r} has no image-processor config "
                f"(preprocessor_config.json): {exc}. Save the model's image processor next to "
                "it (processor.save_pretrained(folder))."
            ) from exc

        self.model = model.eval()
        self.name = name_or_path
        self.model_type = str(getattr(model.config, "model_type", type(model).__name__))
        self.image_transform = image_transform_from_processor_config(processor_config, name_or_path)
        self.padding = padding or ("max_length" if self.model_type in PAD_TO_MAX_LENGTH else "longest")
        if self.padding not in PADDINGS:
            raise ValueError(f"padding must be one of {PADDINGS}, got {padding!r}")
        self.max_length = self._resolve_max_length(max_length)
        self._text_inputs = self._accepted_inputs()

        # One probe of each tower gives D and checks that both agree and accept these inputs.
        side = self.image_transform.size
        with torch.inference_mode():
            text_dim = self._encode_texts(["a photo"]).shape[-1]
            try:
                image_dim = self._encode_images(torch.zeros(1, 3, side, side)).shape[-1]
            except (TypeError, ValueError, RuntimeError) as exc:
                raise DsmdError(
                    f"teacher {name_or_path!r}: get_image_features fails on a (1, 3, {side}, "
                    f"{side}) batch: {exc}. hf_clip supports models that take plain "
                    "pixel_values."
                ) from exc
        if text_dim != image_dim:
            raise DsmdError(
                f"teacher {name_or_path!r} embeds texts in {text_dim} and images in "
                f"{image_dim} dimensions; a teacher needs one shared space."
            )
        self.dim = int(text_dim)
        self._finalize(torch_dtype)

    def _resolve_max_length(self, max_length: int | None) -> int:
        text_config = getattr(self.model.config, "text_config", self.model.config)
        positions = getattr(text_config, "max_position_embeddings", None)
        if max_length is not None:
            if max_length < 1 or (positions is not None and max_length > positions):
                raise ValueError(f"max_length must be in 1..{positions} for {self.name!r}, got {max_length}")
            return int(max_length)
        limits = [positions]
        model_max = getattr(self.tokenizer, "model_max_length", None)
        if isinstance(model_max, int) and model_max < 100_000:  # unset means ~1e30
            limits.append(model_max)
        limits = [limit for limit in limits if limit]
        return int(min(limits)) if limits else 64

    def _accepted_inputs(self) -> set[str]:
        """Tokenizer outputs that get_text_features names (BERT's token_type_ids may not be)."""
        params = inspect.signature(self.model.get_text_features).parameters.values()
        named = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        return named & {"input_ids", "attention_mask", "token_type_ids"}

    def _encode_texts(self, texts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(
            texts,
            padding=self.padding,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        inputs = {k: v.to(self.device) for k, v in tokens.items() if k in self._text_inputs}
        return _features(self.model.get_text_features(**inputs), "get_text_features")

    def _encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        output = self.model.get_image_features(pixel_values=pixel_values)
        return _features(output, "get_image_features")

    def _text_preprocessing(self) -> dict[str, Any]:
        return {
            "tokenizer": f"{type(self.tokenizer).__name__}:{self.name}",
            "max_length": self.max_length,
            "padding": self.padding,
        }

    def _extra_identity(self) -> dict[str, Any]:
        return {"model_class": type(self.model).__name__, "model_type": self.model_type}
