"""The student: a dual encoder whose two towers are projected into the teacher's space.

ALGORITHM.md: ``S^v = l2norm(W_v · vision_encoder(x))``, ``S^t = l2norm(W_t · text_encoder(c))``
with ``W_v``, ``W_t`` fully-connected layers from the towers' widths to the teacher's width D.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from dsmd.config import StudentConfig
from dsmd.data.transforms import ImageTransform
from dsmd.errors import DsmdError
from dsmd.models.text import TEXT_POOLINGS, TextTower, build_text_tower
from dsmd.models.vision import VisionTower, build_vision_tower


class DualEncoder(nn.Module):
    """Vision tower + ``vision_proj`` and text tower + ``text_proj``, both into ``R^dim``.

    When the text tower's width equals ``dim``, ``text_proj`` starts as the identity with zero
    bias: the packaged MiniLM already lives in the offline teacher's text space, so the student
    starts from the teacher's text features instead of a random rotation of them. Otherwise
    both projections keep PyTorch's default init.

    Args:
        vision: the image encoder, ``(B, 3, H, W) -> (B, vision.width)``.
        text: the text encoder, ``(B, L), (B, L) -> (B, text.width)``.
        dim: the teacher's embedding width D.
        normalize: L2-normalise the outputs (the paper's default; off for the Table 6 ablation).
        image_size: side length of the images the vision tower is fed.
        max_text_length: captions are cut to this many tokens.
    """

    def __init__(
        self,
        vision: VisionTower,
        text: TextTower,
        dim: int,
        *,
        normalize: bool = True,
        image_size: int = 224,
        max_text_length: int = 32,
    ) -> None:
        super().__init__()
        if dim < 1:
            raise DsmdError(f"the student's embedding width must be positive, got {dim}")
        self.vision = vision
        self.text = text
        self.vision_proj = nn.Linear(vision.width, dim)
        self.text_proj = nn.Linear(text.width, dim)
        if text.width == dim:
            with torch.no_grad():
                nn.init.eye_(self.text_proj.weight)
                nn.init.zeros_(self.text_proj.bias)
        self.dim = dim
        self.normalize = normalize
        self.image_size = image_size
        self.max_text_length = max_text_length

    def _finish(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(features, dim=-1) if self.normalize else features

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Embed normalised images ``(B, 3, H, W)`` as ``(B, D)`` (unit rows if normalize)."""
        return self._finish(self.vision_proj(self.vision(pixel_values)))

    def encode_texts(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Embed token ids ``(B, L)`` with their mask ``(B, L)`` as ``(B, D)``."""
        return self._finish(self.text_proj(self.text(input_ids, attention_mask)))

    def forward(
        self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Embed a batch of pairs.

        Returns:
            ``(student_image, student_text)``, each ``(B, D)``.
        """
        return self.encode_images(pixel_values), self.encode_texts(input_ids, attention_mask)

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Tokenize captions; ``input_ids`` and ``attention_mask`` are ``(B, L)``,
        ``L <= max_text_length``."""
        return self.text.tokenize(texts, self.max_text_length)

    def image_transform(self, train: bool) -> ImageTransform:
        """The preprocessing the vision tower expects, at ``image_size``."""
        return self.vision.image_transform(train, self.image_size)

    def num_parameters(self) -> int:
        """All parameters: both towers and both projections."""
        return sum(p.numel() for p in self.parameters())


def _validate(cfg: StudentConfig) -> None:
    if cfg.text_pooling not in TEXT_POOLINGS:
        raise DsmdError(
            f"student.text_pooling must be one of {', '.join(TEXT_POOLINGS)}, "
            f"got {cfg.text_pooling!r}"
        )
    if cfg.image_size <= 0:
        raise DsmdError(f"student.image_size must be positive, got {cfg.image_size}")
    if cfg.max_text_length < 2:
        raise DsmdError(
            f"student.max_text_length must be at least 2 ([CLS] and [SEP]), got {cfg.max_text_length}"
        )
    if cfg.text_layers is not None and cfg.text_layers < 1:
        raise DsmdError(f"student.text_layers must be at least 1 or null, got {cfg.text_layers}")
    if cfg.vision_proj_init not in ("default", "imagenet_prompts"):
        raise DsmdError(f"student.vision_proj_init must be 'default' or 'imagenet_prompts', got {cfg.vision_proj_init!r}")
    if cfg.vision_blocks is not None and cfg.vision_blocks < 1:
        raise DsmdError(
            f"student.vision_blocks must be at least 1 or null, got {cfg.vision_blocks}"
        )


def build_student(cfg: StudentConfig, dim: int, *, normalize: bool = True, initialise: bool = True) -> DualEncoder:
    """Build the student dual encoder described by ``cfg``, projecting into ``R^dim``.

    Args:
        cfg: the student section of the run config.
        dim: the teacher's embedding width D (read it from the feature store).
        normalize: L2-normalise the student's outputs (``StudentConfig`` has no such field;
            pass the teacher's ``normalize`` so that both sides match).
        initialise: apply ``cfg.vision_proj_init``; off when a checkpoint's weights will
            replace it anyway (it builds the offline teacher's prompt matrix).

    Raises:
        DsmdError: an invalid ``cfg`` value, or a tower that cannot be built (see
            :func:`build_vision_tower`, :func:`build_text_tower`).
    """
    _validate(cfg)
    if dim < 1:
        raise DsmdError(f"the teacher's embedding width must be positive, got {dim}")
    vision = build_vision_tower(
        cfg.vision,
        pretrained=cfg.vision_pretrained,
        config_overrides=cfg.vision_config,
        blocks=cfg.vision_blocks,
        image_size=cfg.image_size,
        head=cfg.vision_head,
    )
    text = build_text_tower(
        cfg.text,
        pretrained=cfg.text_pretrained,
        config_overrides=cfg.text_config,
        layers=cfg.text_layers,
        pooling=cfg.text_pooling,
    )
    if text.max_positions is not None and cfg.max_text_length > text.max_positions:
        raise DsmdError(
            f"student.max_text_length={cfg.max_text_length} exceeds the {text.max_positions} "
            f"positions of the text model '{cfg.text}'; lower it."
        )
    student = DualEncoder(
        vision,
        text,
        dim,
        normalize=normalize,
        image_size=cfg.image_size,
        max_text_length=cfg.max_text_length,
    )
    if initialise and cfg.vision_proj_init == "imagenet_prompts":
        _init_from_prompts(student, dim)
    return student


def _init_from_prompts(student: DualEncoder, dim: int) -> None:
    """Start ``vision_proj`` from the offline teacher's prompt matrix ``P (1000, D)``.

    With ``vision_head=imagenet_probs`` the student's image feature is then
    ``l2norm(P^T softmax(logits))``: the offline teacher's image head at the student's
    resolution. Distillation refines it from there.
    """
    from dsmd.teachers.offline import imagenet_prompt_embeddings

    if student.vision.width != 1000:
        raise DsmdError("student.vision_proj_init=imagenet_prompts needs vision_head=imagenet_probs (1000 classes).")
    prompts = imagenet_prompt_embeddings()
    if prompts.shape[1] != dim:
        raise DsmdError(f"student.vision_proj_init=imagenet_prompts gives {prompts.shape[1]}-d features, "
                        f"but the teacher's width is {dim}; use it with the offline teacher.")
    with torch.no_grad():
        student.vision_proj.weight.copy_(prompts.T)
        student.vision_proj.bias.zero_()
