"""Making a transformers text model smaller in place: fewer position embeddings
(``student.text_positions``) and a factorised word-embedding table (``student.text_embedding_rank``).

For all-MiniLM-L6-v2 the word embeddings (30522 x 384 = 11.72M) are most of a one-layer text
tower (13.69M); a rank-``r`` table needs ``30522 r + 384 r`` (r = 64: 1.98M).
"""

from __future__ import annotations

import torch
from torch import nn

from dsmd.errors import DsmdError
from dsmd.models.low_rank import LowRankEmbedding, check_rank


def keep_first_positions(model: nn.Module, n: int, key: str = "student.text_positions") -> None:
    """Keep the first ``n`` absolute position embeddings of ``model`` (and ``max_position_embeddings``).

    The ``(1, P)`` position and token-type buffers of BERT-style embeddings are cut to match.

    Raises:
        DsmdError: the model has no absolute position table, or ``n`` is not in 1..P.
    """
    config, embeddings = model.config, getattr(model, "embeddings", None)
    table = getattr(embeddings, "position_embeddings", None)
    kind = getattr(config, "position_embedding_type", "absolute")
    if not isinstance(table, nn.Embedding) or kind != "absolute":
        raise DsmdError(
            f"{key}: the '{config.model_type}' text model has no table of absolute position embeddings "
            f"to cut; set {key}=null."
        )
    total = table.num_embeddings
    if not 1 <= n <= total:
        raise DsmdError(f"{key}={n}: the text model has {total} position embeddings; give 1..{total} or null.")
    kept = nn.Embedding(n, table.embedding_dim, padding_idx=table.padding_idx)
    with torch.no_grad():
        kept.weight.copy_(table.weight[:n])
    embeddings.position_embeddings = kept.to(table.weight.device)
    for name in ("position_ids", "token_type_ids"):
        buffer = getattr(embeddings, name, None)
        if isinstance(buffer, torch.Tensor) and buffer.dim() == 2 and buffer.shape[1] == total:
            setattr(embeddings, name, buffer[:, :n].clone())  # stays a buffer, as persistent as it was
    config.max_position_embeddings = n


def factorize_word_embeddings(
    model: nn.Module, rank: int, *, from_weights: bool = True, key: str = "student.text_embedding_rank"
) -> LowRankEmbedding:
    """Replace ``model``'s word-embedding table ``(V, H)`` by a :class:`LowRankEmbedding` of ``rank``.

    Args:
        from_weights: start from the truncated SVD of the table (the best rank-``rank``
            approximation of the pretrained embeddings); False: PyTorch's init (a state dict
            is loaded next, as when rebuilding from a blueprint).

    Raises:
        DsmdError: the model's input embeddings are not one table, or ``rank`` is not in
            1..min(V, H).
    """
    table = model.get_input_embeddings()
    if isinstance(table, LowRankEmbedding):
        raise DsmdError(f"{key}: the text model's word embeddings are factorised already.")
    if not isinstance(table, nn.Embedding):
        raise DsmdError(
            f"{key}: the '{model.config.model_type}' text model's input embeddings are a "
            f"{type(table).__name__}, not one table; set {key}=null."
        )
    check_rank(rank, tuple(table.weight.shape), key, "the word-embedding table")
    if from_weights:
        factorised = LowRankEmbedding.from_embedding(table, rank)
    else:
        factorised = LowRankEmbedding(table.num_embeddings, rank, table.embedding_dim, table.padding_idx)
    model.set_input_embeddings(factorised)
    return factorised


def embedding_rank(model: nn.Module) -> int | None:
    """The rank of ``model``'s factorised word embeddings (None: one full table)."""
    table = model.get_input_embeddings()
    return table.rank if isinstance(table, LowRankEmbedding) else None
