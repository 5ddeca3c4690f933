"""The config of a compact student: factorised layers and fewer position embeddings
(``student.vision_head_rank``, ``student.text_embedding_rank``, ``student.text_positions``).

Like the unpaired-data keys, they are declared with
:data:`~dsmd.config.checks.OMITTED_AT_DEFAULT`: a config that leaves them off writes, saves
and hashes exactly as before they existed. Whether a rank fits its matrix is checked when the
student is built (:mod:`dsmd.models.low_rank`), since the matrix's size is known only then.
"""

from __future__ import annotations

from dataclasses import field
from typing import Any

from dsmd.config.checks import OMITTED_AT_DEFAULT, refuse


def compact_field() -> Any:
    """An integer >= 1 or null (the default: off), left out of saved configs while null."""
    return field(default=None, metadata={"ge": 1, **OMITTED_AT_DEFAULT})


def check_compact(student: Any) -> None:
    """The compact keys of a ``student`` section against the keys they depend on.

    Raises:
        DsmdError: ``vision_head_rank`` without ``vision_head=imagenet_probs``, or
            ``text_positions`` below ``max_text_length``.
    """
    if student.vision_head_rank is not None and student.vision_head != "imagenet_probs":
        raise refuse(
            "student.vision_head_rank",
            "factorises the ImageNet classifier, so it needs student.vision_head=imagenet_probs; or set it to null.",
        )
    if student.text_positions is not None and student.text_positions < student.max_text_length:
        raise refuse(
            "student.text_positions",
            f"{student.text_positions} is below student.max_text_length={student.max_text_length}: captions "
            f"would run past the last position. Give at least {student.max_text_length}, or lower max_text_length.",
        )
