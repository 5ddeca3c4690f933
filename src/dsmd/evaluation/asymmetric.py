"""Asymmetric retrieval: queries encoded by the student, a gallery encoded by its teacher.

The student is trained into the teacher's feature space, so a gallery the teacher encoded once
(the feature store holds it) can be searched with queries the small student encodes.
"""

from __future__ import annotations

import torch

from dsmd.evaluation.retrieval import retrieval_metrics


def asymmetric_metrics(
    student_image: torch.Tensor,
    student_text: torch.Tensor,
    teacher_image: torch.Tensor,
    teacher_text: torch.Tensor,
    caption_image: torch.Tensor,
) -> dict[str, float]:
    """R@K and RSUM of student queries against teacher galleries.

    Image→text ranks the teacher's caption features ``(N_t, D)`` for each student image feature
    ``(N_i, D)``; text→image ranks the teacher's image features ``(N_i, D)`` for each student
    caption feature ``(N_t, D)``; ``caption_image (N_t,)`` is each caption's image row.
    """
    i2t = retrieval_metrics(student_image, teacher_text, caption_image)
    t2i = retrieval_metrics(teacher_image, student_text, caption_image)
    metrics = {k: v for k, v in i2t.items() if k.startswith("i2t")}
    metrics |= {k: v for k, v in t2i.items() if k.startswith("t2i")}
    metrics["rsum"] = sum(metrics.values())
    return metrics
