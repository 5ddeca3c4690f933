"""Exact similarity scores, and the float32 error bound that decides which need them.

:class:`ExactScores` scores caption-image pairs exactly: float32 features multiplied in float64
(exact) and summed in a fixed pairwise order, so the value depends on the two vectors only.
:func:`error_coefficient` bounds how far a float32 matrix product's entry can be from that
score; :mod:`dsmd.evaluation.retrieval` uses it to score exactly only the pairs whose
comparison the float32 product cannot settle.
"""

from __future__ import annotations

import math

import torch

# Pairs scored exactly at a time: two (pairs, D) float64 work buffers of about 8 MiB each.
_EXACT_ENTRIES = 1 << 20


class ExactScores:
    """Scores of (caption, image) pairs, float64, each independent of everything else.

    Each product of two float32 features is exact in float64; the ``D`` products are summed by
    halving (an odd width first folds its last column into the first), an order fixed by ``D``
    alone, with IEEE element-wise additions. Pairs are taken in chunks so that the work
    buffers, reused across calls, stay within ``_EXACT_ENTRIES`` float64 entries each.

    :meth:`positive` and :meth:`best` give the thresholds, computed on first use and kept.
    """

    def __init__(self, text: torch.Tensor, image: torch.Tensor, ids: torch.Tensor) -> None:
        self.text, self.image, self.ids = text, image, ids
        self.chunk = max(1, _EXACT_ENTRIES // text.shape[1])
        self.buffers: tuple[torch.Tensor, ...] = ()
        # NaN: not computed yet.
        self.positives = text.new_full((text.shape[0],), math.nan, dtype=torch.float64)
        self.bests = text.new_full((image.shape[0],), math.nan, dtype=torch.float64)

    def __call__(self, texts: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        out = torch.empty(texts.shape[0], dtype=torch.float64, device=self.text.device)
        for begin in range(0, texts.shape[0], self.chunk):
            end = min(begin + self.chunk, texts.shape[0])
            gather_text, gather_image, product, factor = self._workspace(end - begin)
            torch.index_select(self.text, 0, texts[begin:end], out=gather_text)
            torch.index_select(self.image, 0, images[begin:end], out=gather_image)
            product.copy_(gather_text)
            factor.copy_(gather_image)
            out[begin:end] = pairwise_sum(product.mul_(factor))
        return out

    def positive(self, texts: torch.Tensor) -> torch.Tensor:
        """Score of each caption with its own image."""
        missing = texts[self.positives[texts].isnan()].unique()
        if missing.numel():
            self.positives[missing] = self(missing, self.ids[missing])
        return self.positives[texts]

    def best(self, images: torch.Tensor) -> torch.Tensor:
        """Best score of each image's captions (every image given must have one)."""
        missing = images[self.bests[images].isnan()].unique()
        if missing.numel():
            captions = torch.isin(self.ids, missing).nonzero().squeeze(1)
            self.bests[missing] = -math.inf
            self.bests.scatter_reduce_(0, self.ids[captions], self.positive(captions), reduce="amax")
        return self.bests[images]

    def _workspace(self, rows: int) -> tuple[torch.Tensor, ...]:
        if not self.buffers or self.buffers[0].shape[0] < rows:
            shape, device = (rows, self.text.shape[1]), self.text.device
            self.buffers = (
                torch.empty(shape, device=device),
                torch.empty(shape, device=device),
                torch.empty(shape, dtype=torch.float64, device=device),
                torch.empty(shape, dtype=torch.float64, device=device),
            )
        return tuple(buffer[:rows] for buffer in self.buffers)


def pairwise_sum(values: torch.Tensor) -> torch.Tensor:
    """Row sums of ``values`` (overwritten) in an order fixed by the number of columns."""
    width = values.shape[1]
    while width > 1:
        if width % 2:
            values[:, 0] += values[:, width - 1]
            width -= 1
        half = width // 2
        values[:, :half] += values[:, half:width]
        width = half
    return values[:, 0]


def float32_band(center: torch.Tensor, slack: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 ``low <= center - slack`` and ``high >= center + slack`` (+inf centres: +inf)."""
    slack = slack.nan_to_num(nan=math.inf)  # inf * 0 (an enormous D times a zero feature)
    low = torch.nextafter((center - slack).float(), torch.tensor(-math.inf, device=center.device))
    high = torch.nextafter((center + slack).float(), torch.tensor(math.inf, device=center.device))
    infinite = torch.isinf(center)
    return low.masked_fill(infinite, math.inf), high.masked_fill(infinite, math.inf)


def error_coefficient(dim: int, device: torch.device) -> float:
    """``c`` such that ``|block entry - exact score| + |exact score - float64 score|`` is at most
    ``c * |text[j]| * |image[i]|`` (plus underflow), for the matmul precision torch uses now."""
    unit = 2.0**-24
    if dim * unit >= 0.5:
        return math.inf  # every entry is then scored exactly: correct, only slow
    # Any summation order: |error| <= gamma_D * sum |t_k i_k| <= gamma_D * |t| |i|.
    gamma = dim * unit / (1 - dim * unit)
    # Reduced-precision inputs (TF32, bfloat16) add their rounding to each product.
    input_unit = matmul_input_unit(device)
    float32_part = (1 + input_unit) ** 2 * (1 + gamma) - 1
    # The float64 pairwise sum: at most 2 * ceil(log2 D) + 1 additions per product, for the
    # scored pair and for the threshold.
    float64_part = 2 * (2 * math.ceil(math.log2(max(dim, 2))) + 2) * 2.0**-53
    return (float32_part + float64_part) * 1.01


def matmul_input_unit(device: torch.device) -> float:
    """Unit roundoff of the inputs of a float32 matrix product on ``device`` (0: none)."""
    units = {"ieee": 0.0, "none": 0.0, "highest": 0.0, "tf32": 2.0**-11, "high": 2.0**-11}
    try:
        if device.type == "cuda":
            backend = torch.backends.cuda.matmul
            precision = getattr(backend, "fp32_precision", None)
            if precision is None:
                precision = "tf32" if backend.allow_tf32 else "ieee"
        elif device.type == "cpu" and hasattr(torch.backends.mkldnn, "matmul"):
            precision = torch.backends.mkldnn.matmul.fp32_precision
        else:
            precision = torch.get_float32_matmul_precision()
    except (AttributeError, RuntimeError):
        precision = "unknown"
    # bfloat16 ("bf16", "medium") and anything unrecognised: assume the coarsest, bfloat16.
    return units.get(str(precision), 2.0**-8)
