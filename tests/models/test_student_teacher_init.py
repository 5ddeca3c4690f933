"""A student started from the offline teacher's image head reproduces the teacher at 224 px."""

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from dsmd.config import StudentConfig
from dsmd.errors import DsmdError
from dsmd.models import build_student
from dsmd.teachers import OfflineTeacher
from dsmd.teachers.offline import imagenet_prompt_embeddings


def test_prompt_initialised_student_equals_the_offline_teacher_at_its_resolution():
    cfg = StudentConfig(
        vision_head="imagenet_probs", vision_proj_init="imagenet_prompts", image_size=224, text_layers=2
    )
    student = build_student(cfg, 384, vision_proj_init=imagenet_prompt_embeddings()).eval()
    teacher = OfflineTeacher()
    torch.manual_seed(0)
    images = [Image.fromarray((torch.rand(64, 80, 3) * 255).byte().numpy()) for _ in range(3)]
    pixels = torch.stack([teacher.image_transform(im) for im in images])
    torch.testing.assert_close(student.image_transform(train=False)(images[0]), pixels[0])
    with torch.no_grad():
        got = student.encode_images(pixels)
    expected = F.normalize(teacher.encode_images(pixels), dim=-1)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    assert student.vision.width == 1000


def test_prompt_init_needs_the_probability_head_and_the_teachers_width():
    # checked when the config is made, before any model is loaded
    with pytest.raises(DsmdError, match="vision_proj_init': imagenet_prompts needs student.vision_head=imagenet_probs"):
        StudentConfig(vision_proj_init="imagenet_prompts", text_layers=1)
    with pytest.raises(DsmdError, match="vision_blocks': must be null with vision_head=imagenet_probs"):
        StudentConfig(vision_head="imagenet_probs", vision_blocks=4, text_layers=1)
    with pytest.raises(DsmdError, match="'teacher' is not allowed; choose one of default, imagenet_prompts"):
        StudentConfig(vision_proj_init="teacher")
    # a matrix that does not fit the towers is refused when the student is built
    cfg = StudentConfig(vision_head="imagenet_probs", vision_proj_init="imagenet_prompts", text_layers=1)
    with pytest.raises(DsmdError, match=r"gives a \(1000, 384\) matrix.*needs \(1000, 512\)"):
        build_student(cfg, 512, vision_proj_init=imagenet_prompt_embeddings())
