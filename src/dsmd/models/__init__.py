"""The student dual encoder and its towers (the teachers live in ``dsmd.teachers``)."""

from dsmd.models.student import DualEncoder, build_student

__all__ = ["DualEncoder", "build_student"]
