"""Feature distillation (FD, docs/method.md eq. 8) and the shape checks every loss shares."""

from __future__ import annotations

from torch import Tensor


def check_features(image_ids: Tensor | None = None, **features: Tensor) -> tuple[int, int]:
    """Check that named feature tensors share one ``(B, D)`` shape, with ``B >= 1``.

    Args:
        image_ids: optional ``(B,)`` integer image ids of the pairs.
        **features: the ``(B, D)`` tensors, named for the error message.

    Returns:
        ``(B, D)``.

    Raises:
        ValueError: a tensor is not 2-D, the shapes differ, the batch is empty, or
            ``image_ids`` is not a ``(B,)`` integer tensor.
    """
    shape = None
    for name, tensor in features.items():
        if tensor.dim() != 2:
            raise ValueError(f"{name} must be (B, D), got shape {tuple(tensor.shape)}")
        if shape is None:
            shape = tuple(tensor.shape)
            first = name
        elif tuple(tensor.shape) != shape:
            raise ValueError(
                f"{name} has shape {tuple(tensor.shape)} but {first} has {shape}; "
                "all features of a batch must be (B, D) with the same B and D"
            )
    assert shape is not None, "check_features needs at least one tensor"
    if shape[0] == 0:
        raise ValueError("the batch is empty (B = 0)")
    if image_ids is not None:
        if image_ids.shape != (shape[0],):
            raise ValueError(f"image_ids must be ({shape[0]},), got shape {tuple(image_ids.shape)}")
        if image_ids.is_floating_point() or image_ids.is_complex():
            raise ValueError(f"image_ids must be an integer tensor, got {image_ids.dtype}")
    return shape[0], shape[1]


def check_temperature(temperature: float) -> None:
    """Raise ``ValueError`` unless ``temperature > 0`` (NaN is refused too)."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


def teacher_like(teacher: Tensor, student: Tensor) -> Tensor:
    """The teacher tensor without gradient, in the student's dtype and on its device.

    The feature store may hold another precision than the student computes in; casting here
    keeps matrix products well-typed and guarantees no gradient reaches the teacher.
    """
    return teacher.detach().to(dtype=student.dtype, device=student.device)


def feature_distillation_loss(
    student_image: Tensor,
    student_text: Tensor,
    teacher_image: Tensor,
    teacher_text: Tensor,
) -> Tensor:
    """L1 distance between student and teacher features, per modality (FD, eq. 8).

    ``L_fd = mean_{n,d} |S^v - T^v| + mean_{n,d} |S^t - T^t|``.

    Args:
        student_image: ``(B, D)`` student image features ``S^v``.
        student_text: ``(B, D)`` student text features ``S^t``.
        teacher_image: ``(B, D)`` teacher image features ``T^v`` (no gradient).
        teacher_text: ``(B, D)`` teacher text features ``T^t`` (no gradient).

    Returns:
        Scalar loss.
    """
    check_features(
        student_image=student_image,
        student_text=student_text,
        teacher_image=teacher_image,
        teacher_text=teacher_text,
    )
    image = (student_image - teacher_like(teacher_image, student_image)).abs().mean()
    text = (student_text - teacher_like(teacher_text, student_text)).abs().mean()
    return image + text


__all__ = ["check_features", "check_temperature", "feature_distillation_loss", "teacher_like"]
