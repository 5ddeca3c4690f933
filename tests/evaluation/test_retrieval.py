"""retrieval_metrics / retrieval_ranks against a slow, obviously-correct reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dsmd.evaluation import (
    RetrievalRanks,
    exact_scores,
    retrieval_metrics,
    retrieval_ranks,
)


def reference_ranks(image, text, ids):
    """Brute force: full float64 similarity, each row sorted with the correct item first on ties.

    Returns (image→text ranks, -1 for an image without captions; text→image ranks) as lists.
    """
    sim = np.asarray(text, dtype=np.float64) @ np.asarray(image, dtype=np.float64).T
    ids = [int(i) for i in ids]
    num_texts, num_images = sim.shape
    t2i = []
    for j in range(num_texts):
        order = sorted(range(num_images), key=lambda i: (-sim[j, i], i != ids[j]))
        t2i.append(order.index(ids[j]))
    i2t = []
    for i in range(num_images):
        positives = {j for j in range(num_texts) if ids[j] == i}
        if not positives:
            i2t.append(-1)
            continue
        order = sorted(range(num_texts), key=lambda j: (-sim[j, i], j not in positives))
        i2t.append(next(rank for rank, j in enumerate(order) if j in positives))
    return i2t, t2i


def reference_metrics(image, text, ids, ks=(1, 5, 10)):
    i2t, t2i = reference_ranks(image, text, ids)
    ranked_images = [r for r in i2t if r >= 0]
    metrics = {}
    for k in ks:
        metrics[f"i2t_r{k}"] = 100.0 * sum(r < k for r in ranked_images) / len(ranked_images)
    for k in ks:
        metrics[f"t2i_r{k}"] = 100.0 * sum(r < k for r in t2i) / len(t2i)
    metrics["rsum"] = sum(metrics.values())
    return metrics


def random_case(seed, num_images, max_captions, dim, empty_images=0, grid=False):
    """Features with a varying number of captions per image, some images with none.

    With ``grid``, features are small multiples of 1/4 so every dot product is exact in float32
    and ties are frequent: the tie convention is tested without rounding noise.
    """
    rng = np.random.default_rng(seed)
    counts = rng.integers(1, max_captions + 1, size=num_images)
    counts[rng.choice(num_images, size=empty_images, replace=False)] = 0
    ids = rng.permutation(np.repeat(np.arange(num_images), counts))
    if grid:
        image = rng.integers(-2, 3, size=(num_images, dim)) / 4.0
        text = image[ids] + rng.integers(-2, 3, size=(len(ids), dim)) / 4.0
    else:
        image = rng.standard_normal((num_images, dim))
        text = image[ids] + 1.5 * rng.standard_normal((len(ids), dim))
        image /= np.linalg.norm(image, axis=1, keepdims=True)
        text /= np.linalg.norm(text, axis=1, keepdims=True)
    return image.astype(np.float32), text.astype(np.float32), ids


def assert_metrics_equal(actual, expected):
    assert list(actual) == list(expected)
    for key in expected:
        assert actual[key] == pytest.approx(expected[key], abs=1e-9), key


# Three one-hot images, two captions each; scores are exact in float32.
HAND_IMAGES = np.eye(3, dtype=np.float32)
HAND_TEXTS = np.array(
    [
        [1.0, 0.0, 0.0],  # image 0 first: t2i rank 0
        [0.5, 1.0, 0.0],  # image 1 beats its image 0: t2i rank 1
        [0.0, 1.0, 0.0],  # t2i rank 0
        [0.0, 0.5, 0.75],  # image 2 beats its image 1: t2i rank 1
        [0.0, 0.75, 0.5],  # image 1 beats its image 2: t2i rank 1
        [0.25, 0.0, 0.25],  # ties image 0 with its image 2: t2i rank 0
    ],
    dtype=np.float32,
)
HAND_IDS = np.array([0, 0, 1, 1, 2, 2])


def test_hand_built_ranks():
    ranks = retrieval_ranks(HAND_IMAGES, HAND_TEXTS, HAND_IDS)
    # Image 0: its caption 0 scores 1, highest. Image 1: caption 1 (of image 0) ties its best
    # caption at 1, and ties go to the correct item. Image 2: caption 3 (0.75) beats its best
    # caption 4 (0.5), so its first correct caption is 2nd.
    assert ranks.image_to_text.tolist() == [0, 0, 1]
    assert ranks.text_to_image.tolist() == [0, 1, 0, 1, 1, 0]


def test_hand_built_metrics():
    metrics = retrieval_metrics(HAND_IMAGES, HAND_TEXTS, HAND_IDS, ks=(1, 2))
    expected = {
        "i2t_r1": 200.0 / 3,
        "i2t_r2": 100.0,
        "t2i_r1": 50.0,
        "t2i_r2": 100.0,
        "rsum": 200.0 / 3 + 250.0,
    }
    assert_metrics_equal(metrics, expected)


def test_image_without_captions_is_left_out_of_image_to_text():
    # Image 1 has no caption: it is not an image→text query, but it is still a candidate
    # image, and here it beats caption 1's own image.
    texts = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.5]], dtype=np.float32)
    ranks = retrieval_ranks(HAND_IMAGES, texts, np.array([0, 2]))
    assert ranks.image_to_text.tolist() == [0, -1, 0]
    assert ranks.text_to_image.tolist() == [0, 1]
    metrics = retrieval_metrics(HAND_IMAGES, texts, np.array([0, 2]), ks=(1,))
    assert metrics == {"i2t_r1": 100.0, "t2i_r1": 50.0, "rsum": 150.0}


def test_default_keys_and_large_k():
    metrics = retrieval_metrics(HAND_IMAGES, HAND_TEXTS, HAND_IDS)
    assert list(metrics) == [
        "i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "rsum",
    ]  # fmt: skip
    # K beyond the number of candidates: every query is a hit.
    assert metrics["i2t_r10"] == metrics["t2i_r5"] == 100.0


@pytest.mark.parametrize("grid", [False, True], ids=["gaussian", "exact-grid-ties"])
@pytest.mark.parametrize("chunk_size", [1, 7, 1000, None])
def test_random_cases_match_reference(grid, chunk_size):
    image, text, ids = random_case(seed=3, num_images=37, max_captions=5, dim=8,
                                   empty_images=4, grid=grid)  # fmt: skip
    expected_i2t, expected_t2i = reference_ranks(image, text, ids)
    ranks = retrieval_ranks(torch.from_numpy(image), torch.from_numpy(text),
                            torch.from_numpy(ids), chunk_size=chunk_size)  # fmt: skip
    assert ranks.image_to_text.tolist() == expected_i2t
    assert ranks.text_to_image.tolist() == expected_t2i
    assert_metrics_equal(
        retrieval_metrics(image, text, ids, ks=(1, 3, 10), chunk_size=chunk_size),
        reference_metrics(image, text, ids, ks=(1, 3, 10)),
    )


@pytest.mark.parametrize("seed", range(4))
def test_more_images_than_a_positive_tile(seed):
    # 300 images span two positive tiles (256 images each); one caption per image for some.
    image, text, ids = random_case(seed=seed, num_images=300, max_captions=3, dim=16,
                                   empty_images=10, grid=seed % 2 == 1)  # fmt: skip
    assert_metrics_equal(
        retrieval_metrics(image, text, ids, chunk_size=97),
        reference_metrics(image, text, ids),
    )


def test_one_caption_per_image_is_symmetric_problem():
    image, text, ids = random_case(seed=5, num_images=25, max_captions=1, dim=8)
    expected_i2t, expected_t2i = reference_ranks(image, text, ids)
    ranks = retrieval_ranks(image, text, ids, chunk_size=4)
    assert ranks.image_to_text.tolist() == expected_i2t
    assert ranks.text_to_image.tolist() == expected_t2i


def test_numpy_and_torch_inputs_agree():
    image, text, ids = random_case(seed=7, num_images=20, max_captions=4, dim=8)
    from_numpy = retrieval_metrics(image.astype(np.float64), text, ids.astype(np.int32))
    from_torch = retrieval_metrics(torch.from_numpy(image), torch.from_numpy(text),
                                   torch.from_numpy(ids))  # fmt: skip
    from_list = retrieval_metrics(image, text, ids.tolist())
    assert from_numpy == from_torch == from_list


def test_features_that_require_grad():
    image, text, ids = random_case(seed=8, num_images=10, max_captions=3, dim=8)
    image_t = torch.from_numpy(image).requires_grad_()
    ranks = retrieval_ranks(image_t, torch.from_numpy(text), ids)
    assert isinstance(ranks, RetrievalRanks)
    assert ranks.text_to_image.tolist() == reference_ranks(image, text, ids)[1]


@pytest.mark.parametrize(
    ("image", "text", "ids", "message"),
    [
        (np.zeros((0, 4)), np.zeros((2, 4)), [0, 0], "image_features is empty"),
        (np.zeros((3, 4)), np.zeros((0, 4)), [], "text_features is empty"),
        (np.zeros((3, 0)), np.zeros((2, 0)), [0, 1], "image_features is empty"),
        (np.zeros(4), np.zeros((2, 4)), [0, 1], r"image_features must have shape \(N, D\)"),
        (np.zeros((3, 4)), np.zeros((2, 5)), [0, 1], "dimension 4 but text_features 5"),
        (np.zeros((3, 4)), np.zeros((2, 4)), [0, 1, 2], r"must have shape \(2,\)"),
        (np.zeros((3, 4)), np.zeros((2, 4)), [[0, 1]], r"must have shape \(2,\)"),
        (np.zeros((3, 4)), np.zeros((2, 4)), [0, 3], r"must lie in \[0, 3\)"),
        (np.zeros((3, 4)), np.zeros((2, 4)), [-1, 0], r"must lie in \[0, 3\)"),
        (np.zeros((3, 4)), np.zeros((2, 4)), [0.0, 1.0], "must hold integers"),
        (np.zeros((3, 4), dtype=np.int64), np.zeros((2, 4)), [0, 1], "floating-point"),
        (np.full((3, 4), np.nan), np.zeros((2, 4)), [0, 1], "image_features contain NaN"),
        (np.zeros((3, 4)), np.full((2, 4), np.inf), [0, 1], "text_features contain NaN"),
    ],
)
def test_invalid_inputs_raise(image, text, ids, message):
    with pytest.raises(ValueError, match=message):
        retrieval_metrics(image, text, ids)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ks": ()}, "ks must be"),
        ({"ks": (0, 5)}, "ks must be"),
        ({"ks": (1.5,)}, "ks must be"),
        ({"chunk_size": 0}, "chunk_size must be"),
        ({"chunk_size": 2.0}, "chunk_size must be"),
    ],
)
def test_invalid_options_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        retrieval_metrics(HAND_IMAGES, HAND_TEXTS, HAND_IDS, **kwargs)


@pytest.mark.parametrize("chunk_size", [3, None])
def test_a_positive_never_beats_itself(chunk_size):
    # Every caption is its image plus a little noise, so every rank is 0. At D = 768 the
    # matrix product and a row-wise dot product round differently for most pairs; were the
    # threshold taken from one and the entry from the other, an image's best caption would
    # often count as scoring above itself.
    generator = torch.Generator().manual_seed(0)
    image = torch.nn.functional.normalize(torch.randn(64, 768, generator=generator), dim=1)
    ids = torch.arange(64).repeat_interleave(2)
    text = image[ids] + 0.1 * torch.randn(128, 768, generator=generator) / 768**0.5
    text = torch.nn.functional.normalize(text, dim=1)
    ranks = retrieval_ranks(image, text, ids, chunk_size=chunk_size)
    assert ranks.image_to_text.tolist() == [0] * 64
    assert ranks.text_to_image.tolist() == [0] * 128


# --- Exact ties and independence from the block size -------------------------------------------


def brute_force_ranks(image, text, ids):
    """Sort-free definition: a rank is the number of items with a strictly greater score.

    Scores are the correctly rounded exact dot products (float32 products are exact in
    float64; ``math.fsum`` rounds their exact sum once), so identical features score
    identically, whatever else is scored. Returns (image→text, text→image) ranks as lists.
    """
    image = torch.as_tensor(image, dtype=torch.float32).double()
    text = torch.as_tensor(text, dtype=torch.float32).double()
    ids = [int(i) for i in ids]
    sim = [[math.fsum(row) for row in (image * t).tolist()] for t in text]
    t2i = [sum(s > scores[ids[j]] for s in scores) for j, scores in enumerate(sim)]
    i2t = []
    for i in range(image.shape[0]):
        own = [j for j in range(len(ids)) if ids[j] == i]
        if not own:
            i2t.append(-1)
            continue
        best = max(sim[j][i] for j in own)
        i2t.append(sum(sim[j][i] > best for j in range(len(ids)) if ids[j] != i))
    return i2t, t2i


def duplicates_case(kind, num_images=64, dim=768, seed=0):
    """Each image with one caption near it (cosine about 0.9), plus exact duplicates.

    ``"captions"``: every caption is given a second time to the next image, so each image's
    best caption is tied by a caption of another image. ``"images"``: the last quarter of the
    images repeats the first quarter, each with a caption of its own, so each of those captions
    sees its own image tied by another one. Either way every tie must go to the correct item.
    At D = 768 the float32 matrix product and a row-wise dot product round most scores
    differently, which is what used to settle these ties.
    """
    generator = torch.Generator().manual_seed(seed)
    image = torch.nn.functional.normalize(torch.randn(num_images, dim, generator=generator), dim=1)
    if kind == "images":
        repeat = num_images // 4
        image[-repeat:] = image[:repeat]
    ids = torch.arange(num_images)
    noise = torch.randn(num_images, dim, generator=generator)
    text = torch.nn.functional.normalize(image + 0.5 * noise / dim**0.5, dim=1)
    if kind == "captions":
        text = torch.cat([text, text])
        ids = torch.cat([ids, (ids + 1) % num_images])
    order = torch.randperm(len(ids), generator=generator)  # spread duplicates over blocks
    return image, text[order], ids[order]


DUPLICATE_KINDS = ("captions", "images")
BLOCK_SIZES = (1, 2, 3, 7, 16, 97, None)


@pytest.fixture(scope="module")
def duplicates():
    cases = {}
    for kind in DUPLICATE_KINDS:
        image, text, ids = duplicates_case(kind)
        cases[kind] = (image, text, ids, brute_force_ranks(image, text, ids))
    return cases


def test_brute_force_reference_on_hand_built_case():
    assert brute_force_ranks(HAND_IMAGES, HAND_TEXTS, HAND_IDS) == ([0, 0, 1], [0, 1, 0, 1, 1, 0])


def test_duplicate_captions_tie_in_favour_of_the_correct_image(duplicates):
    image, text, ids, (expected_i2t, expected_t2i) = duplicates["captions"]
    # Every image's best caption is tied, exactly, by its copy given to the next image; no
    # other caption comes close, so every image→text rank is 0.
    assert expected_i2t == [0] * len(image)
    ranks = retrieval_ranks(image, text, ids)
    assert ranks.image_to_text.tolist() == expected_i2t
    assert ranks.text_to_image.tolist() == expected_t2i
    metrics = retrieval_metrics(image, text, ids, ks=(1,))
    assert metrics["i2t_r1"] == 100.0
    # Half the captions are the copies, whose own image is beaten by the original's image.
    assert metrics["t2i_r1"] == 50.0


def test_duplicate_images_tie_in_favour_of_the_correct_image(duplicates):
    image, text, ids, (expected_i2t, expected_t2i) = duplicates["images"]
    # A caption of a repeated image sees its own image tied by the repeat: still rank 0.
    assert expected_t2i == [0] * len(text)
    ranks = retrieval_ranks(image, text, ids)
    assert ranks.text_to_image.tolist() == expected_t2i
    assert ranks.image_to_text.tolist() == expected_i2t
    assert retrieval_metrics(image, text, ids, ks=(1,))["t2i_r1"] == 100.0


@pytest.mark.parametrize("kind", DUPLICATE_KINDS)
def test_result_does_not_depend_on_the_block_size(duplicates, kind):
    # Blocks of 1 to 97 captions, and the default (all at once): the float32 product rounds
    # differently for different block shapes, and none of it may show in the result.
    image, text, ids, (expected_i2t, expected_t2i) = duplicates[kind]
    metrics = []
    for chunk_size in BLOCK_SIZES:
        ranks = retrieval_ranks(image, text, ids, chunk_size=chunk_size)
        assert ranks.image_to_text.tolist() == expected_i2t, chunk_size
        assert ranks.text_to_image.tolist() == expected_t2i, chunk_size
        metrics.append(retrieval_metrics(image, text, ids, chunk_size=chunk_size))
    assert all(m == metrics[0] for m in metrics)


@pytest.mark.parametrize("grid", [False, True], ids=["gaussian", "exact-grid-ties"])
def test_random_cases_match_sort_free_brute_force(grid):
    image, text, ids = random_case(seed=11, num_images=41, max_captions=4, dim=24,
                                   empty_images=3, grid=grid)  # fmt: skip
    expected_i2t, expected_t2i = brute_force_ranks(image, text, ids)
    for chunk_size in (1, 5, None):
        ranks = retrieval_ranks(image, text, ids, chunk_size=chunk_size)
        assert ranks.image_to_text.tolist() == expected_i2t
        assert ranks.text_to_image.tolist() == expected_t2i


def test_reduced_precision_matmul_widens_the_band(monkeypatch, duplicates):
    # As if float32 products ran on bfloat16 inputs: many more entries fall near a threshold
    # and are scored exactly; the ranks must not change.
    monkeypatch.setattr(exact_scores, "matmul_input_unit", lambda device: 2.0**-8)
    image, text, ids, (expected_i2t, expected_t2i) = duplicates["captions"]
    ranks = retrieval_ranks(image, text, ids, chunk_size=7)
    assert ranks.image_to_text.tolist() == expected_i2t
    assert ranks.text_to_image.tolist() == expected_t2i
