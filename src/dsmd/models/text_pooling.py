"""Pooling of a text encoder's token states into one vector per sentence."""

from __future__ import annotations

import torch


def mean_pool(last_hidden_state: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of the token states over the attention mask (sentence-transformers' pooling).

    Args:
        last_hidden_state: token states, shape ``(B, L, H)``.
        attention_mask: 1 for real tokens, 0 for padding, shape ``(B, L)``.

    Returns:
        Sentence vectors, shape ``(B, H)``, in the dtype of ``last_hidden_state``. A row
        without any real token gives zeros rather than NaN.
    """
    if last_hidden_state.dim() != 3 or attention_mask.shape != last_hidden_state.shape[:2]:
        raise ValueError(
            f"mean_pool expects states (B, L, H) and a mask (B, L); got "
            f"{tuple(last_hidden_state.shape)} and {tuple(attention_mask.shape)}"
        )
    mask = attention_mask.unsqueeze(-1).to(last_hidden_state.dtype)
    summed = (last_hidden_state * mask).sum(dim=1)
    count = mask.sum(dim=1).clamp(min=1e-9)
    return summed / count
