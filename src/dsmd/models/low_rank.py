"""Low-rank factorisations of a pretrained embedding table and of a pretrained linear layer.

Both start from the truncated SVD of the pretrained matrix, so at initialisation the factorised
layer computes the best rank-``r`` approximation of the original (Eckart-Young) and, at full
rank, the original itself (to float32 rounding).

The split of ``M ~ U_r S_r V_r^T`` between the two factors: the factor *into* the bottleneck
carries the singular values and the factor *out of* it is orthonormal. For a table
``E (V x H) ~ U_r S_r V_r^T`` the small table is ``U_r S_r = E V_r`` (each token's coordinates in
the top-``r`` principal subspace of the embeddings, at their own scale) and the ``r -> H``
linear is ``V_r^T``; for a linear ``W (O x I) ~ U_r S_r V_r^T`` the ``I -> r`` linear is
``S_r V_r^T = U_r^T W`` and the ``r -> O`` linear is ``U_r``. So the bottleneck carries the
original output's coordinates, not a rescaled copy of them (splitting ``sqrt(S)`` into each
factor would rescale both by an arbitrary per-direction factor), and the map out of it is an
isometry, which keeps its gradients well scaled. The basis comes from the eigendecomposition of
the small Gram matrix in float64 (``H x H``: 384 x 384 for MiniLM): 0.6 s here against 4-10 s for a full
SVD of the 30522 x 384 table, and exact at full rank since ``V V^T = I``.
"""

from __future__ import annotations

import torch
from torch import nn

from dsmd.errors import DsmdError


def principal_basis(rows: torch.Tensor, rank: int) -> torch.Tensor:
    """The top-``rank`` right singular vectors of ``rows`` ``(N, d)``: ``(d, rank)``, orthonormal
    columns in float64, by decreasing singular value."""
    m = rows.detach().double()
    _, vectors = torch.linalg.eigh(m.T @ m)  # ascending eigenvalues
    return vectors.flip(1)[:, :rank].contiguous()


def check_rank(rank: int, shape: tuple[int, int], key: str, what: str) -> None:
    """``1 <= rank <= min(shape)``.

    Raises:
        DsmdError: naming ``key`` and the largest rank ``what`` (a ``shape`` matrix) allows.
    """
    top = min(shape)
    if not 1 <= rank <= top:
        raise DsmdError(
            f"{key}={rank}: {what} is {shape[0]} x {shape[1]}, so its rank is 1..{top}; "
            f"give a rank in 1..{top} (lower saves parameters) or null to keep it whole."
        )


class LowRankEmbedding(nn.Module):
    """A factorised embedding table: token -> ``table`` ``(V, r)`` -> ``up`` ``(r -> H)``, no bias.

    Args:
        num_embeddings: V, the vocabulary size.
        rank: r, the width of the small table.
        dim: H, the width of the embeddings it produces.
        padding_idx: the padding token, whose row of the small table gets no gradient.
    """

    def __init__(self, num_embeddings: int, rank: int, dim: int, padding_idx: int | None = None) -> None:
        super().__init__()
        self.table = nn.Embedding(num_embeddings, rank, padding_idx=padding_idx)
        self.up = nn.Linear(rank, dim, bias=False)
        self.rank, self.num_embeddings, self.embedding_dim = rank, num_embeddings, dim

    @classmethod
    def from_embedding(cls, embedding: nn.Embedding, rank: int) -> LowRankEmbedding:
        """The rank-``rank`` truncated SVD of ``embedding.weight`` (see the module docstring)."""
        weight = embedding.weight.detach()
        basis = principal_basis(weight, rank)  # (H, r)
        out = cls(weight.shape[0], rank, weight.shape[1], embedding.padding_idx)
        with torch.no_grad():
            out.table.weight.copy_(weight.double() @ basis)
            out.up.weight.copy_(basis)
        return out.to(weight.device)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Token ids ``(B, L)`` to embeddings ``(B, L, H)``."""
        return self.up(self.table(input_ids))


class LowRankLinear(nn.Module):
    """A factorised linear layer ``I -> r -> O``: ``down`` without bias, ``up`` with the bias.

    Args:
        in_features: I.
        rank: r, the bottleneck.
        out_features: O.
    """

    def __init__(self, in_features: int, rank: int, out_features: int) -> None:
        super().__init__()
        self.down = nn.Linear(in_features, rank, bias=False)
        self.up = nn.Linear(rank, out_features)
        self.rank, self.in_features, self.out_features = rank, in_features, out_features

    @classmethod
    def from_linear(cls, linear: nn.Linear, rank: int) -> LowRankLinear:
        """The rank-``rank`` truncated SVD of ``linear.weight``, its bias on ``up``."""
        weight = linear.weight.detach()  # (O, I)
        basis = principal_basis(weight.T, rank)  # (O, r): the top left singular vectors
        out = cls(linear.in_features, rank, linear.out_features)
        with torch.no_grad():
            out.down.weight.copy_(basis.T @ weight.double())
            out.up.weight.copy_(basis)
            if linear.bias is not None:
                out.up.bias.copy_(linear.bias.detach())
            else:
                out.up.bias.zero_()
        return out.to(weight.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., I)`` to ``(..., O)``."""
        return self.up(self.down(x))
