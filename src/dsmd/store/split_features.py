"""One split of teacher features, in memory or memory-mapped from a store's files."""

from __future__ import annotations

import numpy as np
import torch

from dsmd.errors import DsmdError
from dsmd.store.safetensors_mmap import StoredRows, as_index


class SplitFeatures:
    """Teacher features of one split, in memory or memory-mapped from a store.

    Attributes (each read in full, as float32, on first access when memory-mapped):
        image: ``(N_i, D)`` float32.
        text: ``(N_t, D)`` float32.
        caption_image: ``(N_t,)`` int64, row in ``image`` of each caption's image (-1 in a pool
            of captions without images).
        image_views: ``(N_i, V, D)`` float32 features of ``V`` fixed augmented views of each
            image (:func:`dsmd.data.transforms.view_of`), or None.

    Training reads rows with :meth:`image_rows` and :meth:`text_rows`, which touch only the
    rows asked for; :attr:`num_images`, :attr:`num_captions`, :attr:`dim` and
    :attr:`num_views` read nothing.

    Args:
        image: ``(N_i, D)`` tensor, or :class:`StoredRows` (lazy).
        text: ``(N_t, D)`` tensor, or :class:`StoredRows` (lazy).
        caption_image: ``(N_t,)`` integer tensor, or :class:`StoredRows` (int64, lazy).
        image_views: ``(N_i, V, D)`` tensor, :class:`StoredRows` (lazy), or None.
    """

    def __init__(
        self,
        image: torch.Tensor | StoredRows,
        text: torch.Tensor | StoredRows,
        caption_image: torch.Tensor | StoredRows,
        image_views: torch.Tensor | StoredRows | None = None,
    ):
        self._image = image
        self._text = text
        self._caption_image = caption_image
        self._image_views = image_views

    def __repr__(self) -> str:
        lazy = isinstance(self._image, StoredRows)
        return (
            f"SplitFeatures(num_images={self.num_images}, num_captions={self.num_captions}, dim={self.dim}, "
            f"num_views={self.num_views}, {'memory-mapped' if lazy else 'in memory'})"
        )

    @staticmethod
    def _full(value: torch.Tensor | StoredRows | None) -> torch.Tensor | None:
        return value.read_all() if isinstance(value, StoredRows) else value

    @property
    def image(self) -> torch.Tensor:
        self._image = self._full(self._image)
        return self._image

    @image.setter
    def image(self, value: torch.Tensor) -> None:
        self._image = value

    @property
    def text(self) -> torch.Tensor:
        self._text = self._full(self._text)
        return self._text

    @text.setter
    def text(self, value: torch.Tensor) -> None:
        self._text = value

    @property
    def caption_image(self) -> torch.Tensor:
        if isinstance(self._caption_image, StoredRows):
            owners = self._caption_image.read_all()
            bad = (owners < 0) | (owners >= self.num_images)
            if self.num_images == 0:  # a pool of captions without images: each has -1, no image
                bad = owners != -1
            if bool(bad.any()):
                j = int(bad.nonzero()[0, 0])
                raise DsmdError(
                    f"the store's caption_image gives caption {j} the image row {int(owners[j])}, "
                    f"outside 0..{self.num_images - 1}: the store is corrupt. Extract it again."
                )
            self._caption_image = owners
        return self._caption_image

    @caption_image.setter
    def caption_image(self, value: torch.Tensor) -> None:
        self._caption_image = value

    @property
    def image_views(self) -> torch.Tensor | None:
        self._image_views = self._full(self._image_views)
        return self._image_views

    @image_views.setter
    def image_views(self, value: torch.Tensor | None) -> None:
        self._image_views = value

    @property
    def num_images(self) -> int:
        """``N_i``."""
        return int(self._image.shape[0])

    @property
    def num_captions(self) -> int:
        """``N_t``."""
        return int(self._text.shape[0])

    @property
    def dim(self) -> int:
        """``D``."""
        return int(self._text.shape[-1] if len(self._text.shape) == 2 else self._image.shape[-1])

    @property
    def num_views(self) -> int:
        """``V``, the stored augmented views per image (0 without)."""
        return 0 if self._image_views is None else int(self._image_views.shape[1])

    @property
    def memory_mapped(self) -> bool:
        """True while ``image`` is still read lazily from the store's files."""
        return isinstance(self._image, StoredRows)

    def image_rows(self, image_index: torch.Tensor, view_index: torch.Tensor | None = None) -> torch.Tensor:
        """Teacher image features of a batch, ``(B, D)`` float32 on the CPU.

        Args:
            image_index: ``(B,)`` int64 image rows.
            view_index: ``(B,)`` int64; 0 is the plain image (``image[i]``), ``v >= 1`` the
                stored view ``v - 1`` (``image_views[i, v - 1]``). None: all 0.

        Raises:
            IndexError: an image row is out of range, or a view above :attr:`num_views`.
        """
        idx = as_index(image_index)
        views = np.zeros_like(idx) if view_index is None else as_index(view_index)
        if views.shape != idx.shape:
            raise ValueError(f"image_index {tuple(idx.shape)} and view_index {tuple(views.shape)} differ in shape")
        if len(views) and (views.min() < 0 or views.max() > self.num_views):
            raise IndexError(
                f"view index out of range [0, {self.num_views}] (0 is the plain image; the store "
                f"holds {self.num_views} views)"
            )
        plain = views == 0
        if plain.all():
            return self._take(self._image, idx)
        out = torch.empty(len(idx), self.dim, dtype=torch.float32)
        if plain.any():
            out[torch.from_numpy(plain)] = self._take(self._image, idx[plain])
        other = ~plain
        out[torch.from_numpy(other)] = self._take(self._image_views, idx[other], views[other] - 1)
        return out

    def pair_rows(self, image: int, view: int, caption: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The teacher's rows of one training pair: image row ``image`` seen as ``view`` (0: the
        plain image) and caption row ``caption``, each ``(D,)`` float32."""
        return (self.image_rows(np.array([image]), np.array([view]))[0], self.text_rows(np.array([caption]))[0])

    def text_rows(self, caption_index: torch.Tensor) -> torch.Tensor:
        """Teacher text features of captions ``caption_index`` ((B,) int64): ``(B, D)`` float32 on the CPU."""
        return self._take(self._text, as_index(caption_index))

    @staticmethod
    def _take(source: torch.Tensor | StoredRows, index: np.ndarray, second: np.ndarray | None = None) -> torch.Tensor:
        if isinstance(source, StoredRows):
            return torch.from_numpy(source.take(index, second))
        i = torch.from_numpy(index)
        rows = source[i] if second is None else source[i, torch.from_numpy(second)]
        return rows.to(torch.float32)
