"""BEiT-3 for image-text retrieval, in plain torch, with the official checkpoints' keys.

A re-implementation of ``BEiT3ForRetrieval`` (microsoft/unilm ``beit3/modeling_finetune.py``)
on torchscale 0.2.0's ``BEiT3`` (``torchscale/model/BEiT3.py``), without torchscale, timm or
fairscale at run time. Module names mirror the originals so that ``state_dict()`` keys are
identical (``beit3.encoder.layers.0.self_attn.q_proj.A.weight``, ...).

What BEiT-3's retrieval configuration fixes (unilm ``_get_base_config`` /
``_get_large_config`` over torchscale's ``EncoderConfig``):

- a Multiway Transformer: every linear and layer norm of the encoder exists twice, ``A`` for
  image tokens and ``B`` for text tokens. The retrieval model encodes the two modalities
  separately, so a forward pass uses one branch throughout (torchscale's split position -1
  for an image, 0 for a text);
- pre-norm layers with sub-LN (``subln=True``): a layer norm inside the attention before its
  output projection (``inner_attn_ln``) and one inside the FFN after the activation
  (``ffn_layernorm``); residual weight 1 (no DeepNorm); exact (erf) GELU; LayerNorm eps 1e-5;
- a final multiway layer norm (``encoder.layer_norm``, ``normalize_output=True``);
- learned absolute positions starting at 2 (fairseq's offset): image token ``i`` gets row
  ``i + 2`` of ``embed_positions.A``, which therefore has ``num_patches + 1 + 2`` rows; text
  token ``i`` gets row ``i + 2`` of ``embed_positions.B`` (``max_source_positions`` = 1024
  rows); no embedding scale, no embedding layer norm, no relative position bias;
- the retrieval heads: bias-free ``vision_head`` / ``language_head`` on the CLS token
  (position 0) of the encoder output, and the unused ``logit_scale``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

Modality = Literal["vision", "text"]
# BEiT-3's two sizes both use 64-dimensional heads (768 / 12, 1024 / 16); a checkpoint's
# shapes do not record the head count, so it is inferred from this.
HEAD_DIM = 64
# Fairseq's position offset, kept by torchscale: the first position id is 2.
POSITION_OFFSET = 2


@dataclass(frozen=True)
class BEiT3Config:
    """The shape of a BEiT-3 retrieval model (defaults: base at 384 px).

    Attributes:
        embed_dim: width D.
        num_layers: encoder layers.
        num_heads: attention heads.
        ffn_dim: hidden width of the feed-forward networks.
        vocab_size: rows of the text embedding (64010 for the released checkpoints).
        img_size: image side in pixels.
        patch_size: patch side in pixels.
        max_source_positions: rows of the text position table.
        layernorm_eps: epsilon of every layer norm.
    """

    embed_dim: int = 768
    num_layers: int = 12
    num_heads: int = 12
    ffn_dim: int = 3072
    vocab_size: int = 64010
    img_size: int = 384
    patch_size: int = 16
    max_source_positions: int = 1024
    layernorm_eps: float = 1e-5

    def __post_init__(self) -> None:
        if self.num_heads <= 0 or self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if self.patch_size <= 0 or self.img_size % self.patch_size:
            raise ValueError(f"img_size {self.img_size} is not a multiple of patch_size {self.patch_size}")

    @classmethod
    def base(cls, img_size: int = 384) -> BEiT3Config:
        """BEiT-3 base: 768 wide, 12 layers, 12 heads, FFN 3072."""
        return cls(img_size=img_size)

    @classmethod
    def large(cls, img_size: int = 384) -> BEiT3Config:
        """BEiT-3 large: 1024 wide, 24 layers, 16 heads, FFN 4096."""
        return cls(embed_dim=1024, num_layers=24, num_heads=16, ffn_dim=4096, img_size=img_size)

    @property
    def grid_size(self) -> int:
        """Patches along one side of the image."""
        return self.img_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid_size**2

    @property
    def max_text_length(self) -> int:
        """The longest token sequence the text position table covers."""
        return self.max_source_positions - POSITION_OFFSET


class Multiway(nn.Module):
    """Two copies of a module, ``A`` for image tokens and ``B`` for text tokens.

    torchscale's ``MultiwayNetwork`` splits one sequence at a position; the retrieval model
    only ever encodes one modality at a time, so the branch is chosen by ``modality``.
    """

    def __init__(self, a: nn.Module, b: nn.Module) -> None:
        super().__init__()
        self.A = a
        self.B = b

    def forward(self, x: torch.Tensor, modality: Modality) -> torch.Tensor:
        return self.A(x) if modality == "vision" else self.B(x)


def _multiway_linear(d_in: int, d_out: int, bias: bool = True) -> Multiway:
    return Multiway(nn.Linear(d_in, d_out, bias=bias), nn.Linear(d_in, d_out, bias=bias))


def _multiway_layer_norm(dim: int, eps: float) -> Multiway:
    return Multiway(nn.LayerNorm(dim, eps=eps), nn.LayerNorm(dim, eps=eps))


class MultiwayAttention(nn.Module):
    """Multi-head self-attention with sub-LN (torchscale ``MultiheadAttention``)."""

    def __init__(self, config: BEiT3Config) -> None:
        super().__init__()
        dim = config.embed_dim
        self.num_heads = config.num_heads
        self.head_dim = dim // config.num_heads
        # Declared in torchscale's order (k, v, q, out), which fixes the state-dict order.
        self.k_proj = _multiway_linear(dim, dim)
        self.v_proj = _multiway_linear(dim, dim)
        self.q_proj = _multiway_linear(dim, dim)
        self.out_proj = _multiway_linear(dim, dim)
        self.inner_attn_ln = _multiway_layer_norm(dim, config.layernorm_eps)

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor | None, modality: Modality) -> torch.Tensor:
        """``(B, L, D)`` and a ``(B, L)`` padding mask (True = padding) -> ``(B, L, D)``."""
        batch, length, dim = x.shape

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)

        q = heads(self.q_proj(x, modality))
        k = heads(self.k_proj(x, modality))
        v = heads(self.v_proj(x, modality))
        # Padded keys get no weight; the CLS token is never padding, so no row is all masked.
        keep = None if padding_mask is None else ~padding_mask[:, None, None, :]
        # The default scale is head_dim ** -0.5, torchscale's ``scaling``.
        attn = F.scaled_dot_product_attention(q, k, v, attn_mask=keep)
        attn = attn.transpose(1, 2).reshape(batch, length, dim)
        return self.out_proj(self.inner_attn_ln(attn, modality), modality)


class FeedForward(nn.Module):
    """fc1, GELU, sub-LN, fc2 (torchscale ``FeedForwardNetwork`` with ``subln``)."""

    def __init__(self, config: BEiT3Config) -> None:
        super().__init__()
        self.fc1 = nn.Linear(config.embed_dim, config.ffn_dim)
        self.fc2 = nn.Linear(config.ffn_dim, config.embed_dim)
        self.ffn_layernorm = nn.LayerNorm(config.ffn_dim, eps=config.layernorm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.fc1(x)
        # torchscale applies the activation in float32 whatever the weights' dtype.
        x = F.gelu(x.float()).type_as(x)
        return self.fc2(self.ffn_layernorm(x))


class EncoderLayer(nn.Module):
    """A pre-norm Multiway Transformer layer (torchscale ``EncoderLayer``)."""

    def __init__(self, config: BEiT3Config) -> None:
        super().__init__()
        self.self_attn = MultiwayAttention(config)
        self.self_attn_layer_norm = _multiway_layer_norm(config.embed_dim, config.layernorm_eps)
        self.ffn = Multiway(FeedForward(config), FeedForward(config))
        self.final_layer_norm = _multiway_layer_norm(config.embed_dim, config.layernorm_eps)

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor | None, modality: Modality) -> torch.Tensor:
        """``(B, L, D)`` -> ``(B, L, D)``."""
        x = x + self.self_attn(self.self_attn_layer_norm(x, modality), padding_mask, modality)
        return x + self.ffn(self.final_layer_norm(x, modality), modality)


class Encoder(nn.Module):
    """Positions, the layers and the final layer norm (torchscale ``Encoder``)."""

    def __init__(self, config: BEiT3Config) -> None:
        super().__init__()
        dim = config.embed_dim
        self.embed_positions = Multiway(
            nn.Embedding(config.num_patches + 1 + POSITION_OFFSET, dim),
            nn.Embedding(config.max_source_positions, dim),
        )
        self.layers = nn.ModuleList(EncoderLayer(config) for _ in range(config.num_layers))
        self.layer_norm = _multiway_layer_norm(dim, config.layernorm_eps)

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor | None, modality: Modality) -> torch.Tensor:
        """Token embeddings ``(B, L, D)`` -> encoder output ``(B, L, D)``."""
        table = self.embed_positions.A if modality == "vision" else self.embed_positions.B
        length = x.shape[1]
        if length + POSITION_OFFSET > table.num_embeddings:
            raise ValueError(
                f"{length} {modality} tokens exceed the {table.num_embeddings - POSITION_OFFSET} positions of the model"
            )
        positions = torch.arange(POSITION_OFFSET, length + POSITION_OFFSET, device=x.device)
        x = x + table(positions)
        if padding_mask is not None:
            x = x * (~padding_mask).unsqueeze(-1).to(x.dtype)
        for layer in self.layers:
            x = layer(x, padding_mask, modality)
        return self.layer_norm(x, modality)


class VisionEmbedding(nn.Module):
    """Patchify with a strided convolution and prepend the CLS token.

    ``mask_token`` (masked image modelling) is unused here but kept: it is in the checkpoints.
    """

    def __init__(self, config: BEiT3Config) -> None:
        super().__init__()
        self.img_size = config.img_size
        self.proj = nn.Conv2d(3, config.embed_dim, kernel_size=config.patch_size, stride=config.patch_size)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, config.embed_dim))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.embed_dim))

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``(B, 3, S, S)`` -> ``(B, 1 + (S / patch) ** 2, D)``."""
        height, width = pixel_values.shape[-2:]
        if (height, width) != (self.img_size, self.img_size):
            raise ValueError(f"BEiT-3 expects {self.img_size}x{self.img_size} images, got {height}x{width}")
        x = self.proj(pixel_values).flatten(2).transpose(1, 2)
        return torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)


class BEiT3(nn.Module):
    """The backbone (torchscale ``BEiT3``), encoding one modality at a time."""

    def __init__(self, config: BEiT3Config) -> None:
        super().__init__()
        self.text_embed = nn.Embedding(config.vocab_size, config.embed_dim)
        self.vision_embed = VisionEmbedding(config)
        self.encoder = Encoder(config)

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``(B, 3, S, S)`` -> ``(B, 1 + N, D)``, all through the vision branches."""
        return self.encoder(self.vision_embed(pixel_values), None, "vision")

    def encode_texts(self, input_ids: torch.Tensor, padding_mask: torch.Tensor) -> torch.Tensor:
        """``(B, L)`` token ids and padding mask (True = padding) -> ``(B, L, D)``."""
        return self.encoder(self.text_embed(input_ids), padding_mask, "text")


class BEiT3ForRetrieval(nn.Module):
    """BEiT-3 with its retrieval heads (unilm ``BEiT3ForRetrieval``).

    Args:
        config: the model's shape.
    """

    def __init__(self, config: BEiT3Config) -> None:
        super().__init__()
        self.config = config
        self.beit3 = BEiT3(config)
        self.language_head = nn.Linear(config.embed_dim, config.embed_dim, bias=False)
        self.vision_head = nn.Linear(config.embed_dim, config.embed_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``(B, 3, S, S)`` -> raw (un-normalised) ``(B, D)``: ``vision_head`` on the CLS token."""
        return self.vision_head(self.beit3.encode_images(pixel_values)[:, 0])

    def text_features(self, input_ids: torch.Tensor, padding_mask: torch.Tensor) -> torch.Tensor:
        """``(B, L)`` ids (``<s>`` first) and padding mask -> raw ``(B, D)`` (``language_head``)."""
        return self.language_head(self.beit3.encode_texts(input_ids, padding_mask)[:, 0])
