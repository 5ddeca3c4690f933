"""Asymmetric retrieval: student queries against the teacher's gallery."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dsmd.evaluation.asymmetric import asymmetric_metrics
from dsmd.evaluation.retrieval import retrieval_metrics


def _brute(queries, gallery, correct) -> list[int]:
    """0-based rank of each query's correct gallery row (ties favour it)."""
    scores = queries @ gallery.T
    return [int((scores[q] > scores[q, c]).sum()) for q, c in enumerate(correct)]


def test_each_direction_uses_the_students_queries_and_the_teachers_gallery():
    g = torch.Generator().manual_seed(0)
    ids = torch.tensor([0, 0, 1, 2, 3, 3, 4])
    s_img, t_img = (F.normalize(torch.randn(5, 8, generator=g), dim=-1) for _ in range(2))
    s_txt, t_txt = (F.normalize(torch.randn(7, 8, generator=g), dim=-1) for _ in range(2))
    got = asymmetric_metrics(s_img, s_txt, t_img, t_txt, ids)
    t2i = _brute(s_txt, t_img, ids.tolist())
    # image i: how many captions of other images score above its best own caption
    i2t = [int(((s_img[i] @ t_txt[ids != i].T) > (s_img[i] @ t_txt[ids == i].T).max()).sum()) for i in range(5)]
    for k in (1, 5, 10):
        assert got[f"t2i_r{k}"] == pytest.approx(100 * sum(r < k for r in t2i) / 7)
        assert got[f"i2t_r{k}"] == pytest.approx(100 * sum(r < k for r in i2t) / 5)
    assert got["rsum"] == pytest.approx(sum(v for key, v in got.items() if key != "rsum"))


def test_a_student_equal_to_its_teacher_scores_as_the_teacher():
    g = torch.Generator().manual_seed(1)
    image, text = (
        F.normalize(torch.randn(6, 4, generator=g), dim=-1),
        F.normalize(torch.randn(9, 4, generator=g), dim=-1),
    )
    ids = torch.arange(9) % 6
    assert asymmetric_metrics(image, text, image, text, ids) == retrieval_metrics(image, text, ids)
