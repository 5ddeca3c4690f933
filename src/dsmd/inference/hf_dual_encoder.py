"""Loading an export whose weights are a transformers ``VisionTextDualEncoderModel``
(:mod:`dsmd.export.hf_dual_encoder` writes them) behind the student's two encode methods."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from dsmd.data.transforms import ImageTransform
from dsmd.errors import DsmdError
from dsmd.runtime.pretrained import load_hf_tokenizer, offline_hub, quiet_transformers


def _features(output) -> torch.Tensor:
    return output if isinstance(output, torch.Tensor) else output.pooler_output


class DualEncoderAdapter(torch.nn.Module):
    """``encode_images`` / ``encode_captions`` of a ``VisionTextDualEncoderModel``, L2-normalised
    when the student was."""

    def __init__(self, model, tokenizer: Any, max_length: int, normalize: bool):
        super().__init__()
        self.model, self.tokenizer, self.max_length, self.normalize = model, tokenizer, max_length, normalize

    def _finish(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=-1) if self.normalize else x

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self._finish(_features(self.model.get_image_features(pixel_values=pixel_values)))

    def encode_captions(self, texts: Sequence[str]) -> torch.Tensor:
        tokens = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        device = self.model.logit_scale.device
        out = self.model.get_text_features(
            input_ids=tokens["input_ids"].to(device), attention_mask=tokens["attention_mask"].to(device)
        )
        return self._finish(_features(out))


def load_dual_encoder(
    folder: Path, meta: dict[str, Any], device: torch.device
) -> tuple[DualEncoderAdapter, ImageTransform]:
    """The adapter over ``folder``'s model and the image preprocessing its blueprint records."""
    from transformers import VisionTextDualEncoderModel

    try:
        with offline_hub(), quiet_transformers():
            model = VisionTextDualEncoderModel.from_pretrained(str(folder), dtype=torch.float32)
    except (OSError, ValueError, RuntimeError) as exc:
        raise DsmdError(
            f"cannot load the transformers model in {folder} ({' '.join(str(exc).split())[:200]}). "
            "Export the student again."
        ) from exc
    bp = meta["blueprint"]
    tokenizer = load_hf_tokenizer(str(folder), f"export {folder}")
    adapter = DualEncoderAdapter(model.to(device).eval(), tokenizer, bp["max_text_length"], bp["normalize"])
    return adapter, ImageTransform(**bp["image_transform"])
