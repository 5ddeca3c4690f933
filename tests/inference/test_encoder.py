"""dsmd.load_student: arrays of features, the same whatever the batch size or input type."""

from __future__ import annotations

import numpy as np
from PIL import Image

import dsmd
from dsmd.data.datasets import load_split


def test_features_are_arrays_independent_of_batching_and_input_type(paper_like):
    student = dsmd.load_student(paper_like["checkpoint"])
    data = load_split(paper_like["cfg"].data, "test")
    paths = data.image_paths[:5]
    one_by_one = student.encode_images(paths, batch_size=1)
    together = student.encode_images(paths, batch_size=8)
    pil = student.encode_images([Image.open(p) for p in paths])
    assert together.shape == (5, student.dim) and together.dtype == np.float32
    np.testing.assert_allclose(one_by_one, together, atol=1e-6)
    np.testing.assert_allclose(pil, together, atol=1e-6)
    texts = student.encode_texts(data.captions[:7], batch_size=3)
    np.testing.assert_allclose(texts, student.encode_texts(data.captions[:7]), atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(texts, axis=1), 1.0, atol=1e-5)
    assert student.encode_texts([]).shape == (0, student.dim)


def test_the_encoder_knows_its_feature_space(paper_like):
    from dsmd.store import FeatureStore
    from dsmd.store.manifest import teacher_space

    student = dsmd.load_student(paper_like["checkpoint"])
    assert student.space == teacher_space(FeatureStore.open(paper_like["store"]).teacher)
    assert set(student.describe()) == {"name", "model_id", "space", "dim", "normalized"}
