"""The student: a dual encoder whose two towers are projected into the teacher's space.

docs/method.md: ``S^v = l2norm(W_v · vision_encoder(x))``, ``S^t = l2norm(W_t · text_encoder(c))``
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
from dsmd.models.text import CaptionTokenizer, TextTower, build_text_tower
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
        return self.caption_tokenizer()(texts)

    def caption_tokenizer(self) -> CaptionTokenizer:
        """:meth:`tokenize` as a small picklable object, for DataLoader workers."""
        return CaptionTokenizer(self.text.tokenizer, self.max_text_length)

    def encode_captions(self, texts: Sequence[str]) -> torch.Tensor:
        """Tokenize and embed captions on the student's device: ``(B, D)``."""
        tokens = self.tokenize(texts)
        device = self.text_proj.weight.device
        return self.encode_texts(tokens["input_ids"].to(device), tokens["attention_mask"].to(device))

    def image_transform(self, train: bool) -> ImageTransform:
        """The preprocessing the vision tower expects, at ``image_size``."""
        return self.vision.image_transform(train, self.image_size)

    def num_parameters(self) -> int:
        """All parameters: both towers and both projections (factorised layers count their factors)."""
        return sum(p.numel() for p in self.parameters())

    def parameter_counts(self) -> dict[str, int]:
        """Parameters per part: ``vision``, ``vision_proj``, ``text``, ``text_proj`` and their ``total``."""
        parts = {name: getattr(self, name) for name in ("vision", "vision_proj", "text", "text_proj")}
        counts = {name: sum(p.numel() for p in part.parameters()) for name, part in parts.items()}
        return {**counts, "total": self.num_parameters()}


def build_student(
    cfg: StudentConfig, dim: int, *, normalize: bool = True, vision_proj_init: torch.Tensor | None = None
) -> DualEncoder:
    """Build the student dual encoder described by ``cfg``, projecting into ``R^dim``.

    Args:
        cfg: the student section of the run config (checked when it was made).
        dim: the teacher's embedding width D (read it from the feature store).
        normalize: L2-normalise the student's outputs (``StudentConfig`` has no such field;
            pass the store's ``normalized`` so that both sides match).
        vision_proj_init: ``(C, D)``, the initial weight of ``vision_proj`` transposed (bias
            zero), e.g. the offline teacher's prompt matrix for
            ``vision_proj_init=imagenet_prompts`` (:func:`dsmd.teachers.offline.imagenet_prompt_embeddings`);
            None keeps PyTorch's init. Rebuilding from a checkpoint passes None.

    Raises:
        DsmdError: a tower that cannot be built (see :func:`build_vision_tower`,
            :func:`build_text_tower`), a caption length beyond the text model's positions, or a
            ``vision_proj_init`` of the wrong shape.
    """
    if dim < 1:
        raise DsmdError(f"the teacher's embedding width must be positive, got {dim}")
    vision = build_vision_tower(
        cfg.vision,
        pretrained=cfg.vision_pretrained,
        config_overrides=cfg.vision_config,
        blocks=cfg.vision_blocks,
        image_size=cfg.image_size,
        head=cfg.vision_head,
        head_rank=cfg.vision_head_rank,
    )
    text = build_text_tower(
        cfg.text,
        pretrained=cfg.text_pretrained,
        config_overrides=cfg.text_config,
        layers=cfg.text_layers,
        pooling=cfg.text_pooling,
        positions=cfg.text_positions,
        embedding_rank=cfg.text_embedding_rank,
    )
    if text.max_positions is not None and cfg.max_text_length > text.max_positions:
        raise DsmdError(
            f"student.max_text_length={cfg.max_text_length} exceeds the {text.max_positions} "
            f"positions of the text model '{cfg.text}'; lower it."
        )
    student = DualEncoder(
        vision, text, dim, normalize=normalize, image_size=cfg.image_size, max_text_length=cfg.max_text_length
    )
    if vision_proj_init is not None:
        expected = (vision.width, dim)
        if tuple(vision_proj_init.shape) != expected:
            raise DsmdError(
                f"student.vision_proj_init gives a {tuple(vision_proj_init.shape)} matrix, but the vision "
                f"tower is {vision.width} wide and the teacher {dim}: it needs {expected}. "
                "(imagenet_prompts fits the offline teacher only.)"
            )
        with torch.no_grad():
            student.vision_proj.weight.copy_(vision_proj_init.T)
            student.vision_proj.bias.zero_()
    return student
