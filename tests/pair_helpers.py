"""Stand-ins for the feature store and the tokenizer when testing pair datasets."""

from __future__ import annotations

import torch


class IndexTargets:
    """Teacher "features" that spell out their indices: image ``[image, view]``, text ``[caption, 0]``."""

    def pair_rows(self, image: int, view: int, caption: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.tensor([float(image), float(view)]), torch.tensor([float(caption), 0.0])


def count_words(captions: list[str]) -> dict[str, torch.Tensor]:
    """A "tokenizer" whose first id is the caption's word count (picklable: a module function)."""
    ids = torch.tensor([[len(c.split()), 0] for c in captions])
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
