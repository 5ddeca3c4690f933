"""Using a distilled student: :func:`load_student` returns an :class:`Encoder` whose
``encode_images`` / ``encode_texts`` give ``(N, D)`` float32 arrays."""

from dsmd.inference.encoder import Encoder
from dsmd.inference.loading import load_student

__all__ = ["Encoder", "load_student"]
