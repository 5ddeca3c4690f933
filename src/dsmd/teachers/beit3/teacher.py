"""BEiT-3 (the DSMD paper's teacher) from an official retrieval checkpoint."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from dsmd.data.transforms import ImageTransform
from dsmd.errors import DsmdError
from dsmd.teachers.base import Teacher, resolve_dtype
from dsmd.teachers.beit3.checkpoint import (
    build_model,
    config_from_state_dict,
    load_state_dict,
    resize_image_positions,
)
from dsmd.teachers.beit3.tokenizer import BEiT3Tokenizer

TOKENIZER_FILE = "beit3.spm"
MAX_TEXT_LENGTH = 64  # unilm's --num_max_bpe_tokens for retrieval
# The released checkpoints pad the text embedding past the tokenizer's ids (64010 rows for
# beit3.spm's 64002); a tokenizer outside this margin belongs to another model.
VOCAB_MARGIN = 64
# unilm's retrieval evaluation: Resize((384, 384), bicubic), ToTensor, Normalize(0.5, 0.5).
BEIT3_MEAN = (0.5, 0.5, 0.5)
BEIT3_STD = (0.5, 0.5, 0.5)


def _resolve_tokenizer(checkpoint: Path, tokenizer: str | None) -> Path:
    if tokenizer is not None:
        return Path(tokenizer).expanduser()
    beside = checkpoint.parent / TOKENIZER_FILE
    if not beside.is_file():
        raise DsmdError(
            f"BEiT-3 tokenizer not found: teacher.tokenizer is unset and there is no "
            f"{TOKENIZER_FILE} next to {checkpoint}. Set teacher.tokenizer to the path of "
            "beit3.spm (microsoft/unilm, beit3) or put it beside the checkpoint."
        )
    return beside


class BEiT3Teacher(Teacher):
    """BEiT-3 retrieval model: the CLS embeddings of its vision and language heads.

    Features are ``vision_head(x[:, 0])`` and ``language_head(x[:, 0])`` of
    ``BEiT3ForRetrieval`` (its ``only_infer`` path), before its L2 normalisation.

    Args:
        checkpoint: an official ``beit3_*_retrieval.pth``; base or large, the image size and
            the vocabulary are read from its shapes.
        tokenizer: ``beit3.spm``; default: ``beit3.spm`` in the checkpoint's folder.
        image_size: side in pixels (default: the checkpoint's, 384); another size resizes the
            image position table bicubically, as unilm does.
        max_text_length: tokens per caption, ``<s>`` and ``</s>`` included (default 64, as
            unilm's retrieval fine-tuning and evaluation use).
        dtype: ``float32``, ``float16`` or ``bfloat16`` (the half types are for CUDA).

    Raises:
        DsmdError: a missing or foreign checkpoint or tokenizer, a tokenizer whose vocabulary
            does not fit the checkpoint, or an image size / text length the model cannot take.
    """

    kind = "beit3"

    def __init__(
        self,
        checkpoint: str | Path,
        tokenizer: str | Path | None = None,
        image_size: int | None = None,
        max_text_length: int | None = None,
        dtype: str = "float32",
    ) -> None:
        super().__init__()
        torch_dtype = resolve_dtype(dtype)
        path = Path(checkpoint).expanduser()
        state_dict = load_state_dict(path)
        config = config_from_state_dict(state_dict, str(path))
        self.tokenizer = BEiT3Tokenizer(_resolve_tokenizer(path, None if tokenizer is None else str(tokenizer)))
        rows = config.vocab_size
        if not self.tokenizer.vocab_size <= rows <= self.tokenizer.vocab_size + VOCAB_MARGIN:
            raise DsmdError(
                f"tokenizer {self.tokenizer.path} has {self.tokenizer.vocab_size} token ids but "
                f"checkpoint {path} embeds {rows}: they belong to different models. Use the "
                "beit3.spm released with BEiT-3 (64002 ids for the checkpoints' 64010 rows)."
            )
        if image_size is not None:
            try:
                state_dict, config = resize_image_positions(state_dict, config, int(image_size))
            except ValueError as exc:
                raise DsmdError(f"teacher.image_size: {exc}.") from exc
        self.max_length = (
            min(MAX_TEXT_LENGTH, config.max_text_length) if max_text_length is None else int(max_text_length)
        )
        if not 2 <= self.max_length <= config.max_text_length:
            raise DsmdError(
                f"teacher.max_text_length must be in 2..{config.max_text_length} for {path} "
                f"(<s> and </s> included), got {self.max_length}."
            )

        self.model = build_model(state_dict, config, str(path))
        self.config = config
        self.name = str(checkpoint)
        self.dim = config.embed_dim
        self.image_transform = ImageTransform(
            size=config.img_size, mean=BEIT3_MEAN, std=BEIT3_STD, resample="bicubic", crop=False
        )
        self._finalize(torch_dtype)

    def _encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model.image_features(pixel_values)

    def _encode_texts(self, texts: list[str]) -> torch.Tensor:
        input_ids, padding_mask = self.tokenizer(texts, self.max_length)
        return self.model.text_features(input_ids.to(self.device), padding_mask.to(self.device))

    def _text_preprocessing(self) -> dict[str, Any]:
        return {
            "tokenizer": f"BEiT3Tokenizer:sha256={self.tokenizer.sha256}",
            "max_length": self.max_length,
            "padding": "longest",
        }

    def _extra_identity(self) -> dict[str, Any]:
        return {"model_class": "BEiT3ForRetrieval", "architecture": asdict(self.config)}
