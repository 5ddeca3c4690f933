"""The interface every teacher implements.

A teacher is a frozen image-text dual encoder. It runs once, before training, to fill the
feature store; the student never sees it otherwise. Features come back raw (not
L2-normalised) in float32: the caller normalises, because switching normalisation off is the
ablation of the paper's Table 6.
"""

from __future__ import annotations

import abc
import hashlib
from typing import Any, ClassVar

import torch
from torch import nn

from dsmd.data.transforms import ImageTransform
from dsmd.errors import DsmdError

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_dtype(name: str) -> torch.dtype:
    """The torch dtype for a config ``dtype`` string.

    Raises:
        DsmdError: the name is not one of float32, float16, bfloat16.
    """
    if name not in DTYPES:
        raise DsmdError(
            f"unknown teacher dtype {name!r}. Valid dtypes: {', '.join(DTYPES)}, auto "
            "(float16 and bfloat16 are meant for CUDA devices; auto picks float16 there)."
        )
    return DTYPES[name]


def state_dict_sha256(state_dict: dict[str, torch.Tensor]) -> str:
    """A deterministic fingerprint of a state dict.

    Hashes, in sorted key order, each key, its dtype, its shape and the tensor's raw bytes, so
    two models agree exactly when their weights do (whatever the file format they came from).
    """
    digest = hashlib.sha256()
    for key in sorted(state_dict):
        tensor = state_dict[key].detach().to("cpu").contiguous()
        digest.update(key.encode())
        digest.update(f"{tensor.dtype}{tuple(tensor.shape)}".encode())
        if tensor.numel():
            # A uint8 view gives the bytes of any dtype (bfloat16 has no numpy equivalent).
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().data)
    return digest.hexdigest()


def _jsonable(value: Any) -> Any:
    """Tuples become lists, so that an identity equals its own JSON round trip."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


class Teacher(nn.Module, abc.ABC):
    """A frozen image-text teacher: images and texts in, raw ``(B, D)`` features out.

    Subclasses load their weights, set :attr:`name`, :attr:`dim` and :attr:`image_transform`,
    implement :meth:`_encode_images` / :meth:`_encode_texts` / :meth:`_text_preprocessing`,
    and call :meth:`_finalize` at the end of their constructor.

    Attributes:
        kind: the registry name (``offline``, ``hf_clip``).
        name: what the teacher is (a hub name, a folder, a description).
        dim: the embedding width D.
        image_transform: the preprocessing this teacher's ``pixel_values`` expect.
    """

    kind: ClassVar[str] = ""
    name: str
    dim: int
    image_transform: ImageTransform

    def __init__(self) -> None:
        super().__init__()
        self._weights_sha256: str | None = None

    # -- what subclasses provide ------------------------------------------------------------

    @abc.abstractmethod
    def _encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` on the teacher's device and dtype -> ``(B, D)``."""

    @abc.abstractmethod
    def _encode_texts(self, texts: list[str]) -> torch.Tensor:
        """``B`` strings -> ``(B, D)`` on the teacher's device."""

    @abc.abstractmethod
    def _text_preprocessing(self) -> dict[str, Any]:
        """The tokenizer's name, max length and padding, for :meth:`identity`."""

    def _extra_identity(self) -> dict[str, Any]:
        """Anything else that changes the features (versions, prompts, temperatures)."""
        return {}

    def _finalize(self, dtype: torch.dtype) -> None:
        """Fingerprint the float32 weights, then cast, freeze and switch to eval mode.

        The fingerprint is taken before the cast so that a float16 teacher and a float32 one
        built from the same weights report the same ``weights_sha256``.
        """
        self.weights_sha256()
        # Casting the child modules, not ``self``, leaves buffers held by the teacher itself
        # (the offline teacher's prompt embeddings) in float32.
        for child in self.children():
            child.to(dtype)
        self.requires_grad_(False)
        self.eval()

    # -- the interface ----------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        """The device of the teacher's weights."""
        return next(self.parameters()).device

    @property
    def compute_dtype(self) -> torch.dtype:
        """The dtype the weights (and so the inputs) are in."""
        return next(self.parameters()).dtype

    def train(self, mode: bool = True) -> Teacher:
        """A teacher is always in eval mode (no dropout, frozen batch-norm statistics)."""
        return super().train(False)

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Embed a batch of preprocessed images (see :attr:`image_transform`).

        Args:
            pixel_values: shape ``(B, 3, H, W)``, any device and float dtype; moved to the
                teacher's device and dtype.

        Returns:
            Raw (un-normalised) features, float32, shape ``(B, D)``, on the teacher's device;
            an ordinary tensor (not an inference tensor), safe to use in autograd graphs.
        """
        if not isinstance(pixel_values, torch.Tensor) or pixel_values.dim() != 4:
            shape = tuple(pixel_values.shape) if isinstance(pixel_values, torch.Tensor) else None
            raise ValueError(f"encode_images expects a (B, 3, H, W) tensor, got shape {shape}")
        if pixel_values.shape[1] != 3:
            raise ValueError(f"encode_images expects 3 channels (B, 3, H, W), got {tuple(pixel_values.shape)}")
        with torch.inference_mode():
            x = pixel_values.to(device=self.device, dtype=self.compute_dtype)
            features = self._encode_images(x).to(torch.float32)
        # Cloning outside inference mode turns the inference tensor into an ordinary one.
        return features.clone()

    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        """Embed a batch of captions (tokenised here, truncated to the teacher's max length).

        Args:
            texts: ``B`` strings.

        Returns:
            Raw (un-normalised) features, float32, shape ``(B, D)``, on the teacher's device.
        """
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise ValueError("encode_texts expects a list of strings")
        texts = list(texts)
        if not texts:
            return torch.empty(0, self.dim, device=self.device)
        with torch.inference_mode():
            features = self._encode_texts(texts).to(torch.float32)
        return features.clone()

    def num_parameters(self) -> int:
        """The number of weights (parameters; buffers such as batch-norm statistics excluded)."""
        return sum(p.numel() for p in self.parameters())

    def weights_sha256(self) -> str:
        """A fingerprint of the weights (:func:`state_dict_sha256`), computed once."""
        if self._weights_sha256 is None:
            self._weights_sha256 = state_dict_sha256(self.state_dict())
        return self._weights_sha256

    def identity(self) -> dict[str, Any]:
        """A JSON-serialisable description for the feature-store manifest.

        Two teachers give equal identities exactly when they compute the same features: same
        weights, preprocessing and anything else that shapes the output.
        """
        identity = {
            "kind": self.kind,
            "name": self.name,
            "dim": self.dim,
            "weights_sha256": self.weights_sha256(),
            "dtype": str(self.compute_dtype).removeprefix("torch."),
            "preprocessing": {
                "image": self.image_transform.to_dict(),
                **self._text_preprocessing(),
            },
            "num_parameters": self.num_parameters(),
            **self._extra_identity(),
        }
        return _jsonable(identity)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, dim={self.dim}"
