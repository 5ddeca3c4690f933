"""The unpaired losses (u_cd, u_fd, u_sd, u_hnd) against slow references written from
docs/method.md "Unpaired data", loop by loop; their queues; and how MultiscaleDistillationLoss
adds them to the paired losses."""

import math

import pytest
import torch

from dsmd.losses import (
    FeatureQueue,
    MultiscaleDistillationLoss,
    UnpairedFeatures,
    UnpairedRows,
    unpaired_contrastive_loss,
    unpaired_feature_loss,
    unpaired_hard_negative_loss,
    unpaired_similarity_loss,
)
from dsmd.losses.unpaired import teacher_nearest, unpaired_loss
from dsmd.losses.unpaired_queue import ItemQueue, UnpairedQueues

# Pool rows: item 3 and item 7 are drawn twice in this batch.
IDS = [3, 7, 3, 9, 7, 11, 12]
QUEUE_IDS = [3, 1, 7, 2, 9, 3, 5, 12, 6]


def unit(*shape, seed):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=generator, dtype=torch.float64)
    return x / x.norm(dim=-1, keepdim=True)


def raw(*shape, seed):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=generator, dtype=torch.float64) * 1.7


def dot(u, v):
    return sum(a * b for a, b in zip(u, v, strict=True))


def cosine(u, v):
    return dot(u, v) / math.sqrt(dot(u, u) * dot(v, v))


def reference_fd(s, t):
    total = 0.0
    for i in range(len(s)):
        for d in range(len(s[i])):
            total += abs(s[i][d] - t[i][d])
    return total / (len(s) * len(s[0]))


def reference_sd(s, t):
    total, count = 0.0, 0
    for i in range(len(s)):
        for j in range(len(s)):
            if i != j:
                total += (cosine(s[i], s[j]) - cosine(t[i], t[j])) ** 2
                count += 1
    return total / count if count else 0.0


def reference_cd(s, t, ids, queue, queue_ids, tau, mask):
    total = 0.0
    for i in range(len(s)):
        positive = math.exp(dot(s[i], t[i]) / tau)
        denominator = positive
        for k in range(len(queue)):
            if mask and queue_ids[k] == ids[i]:
                continue
            denominator += math.exp(dot(s[i], queue[k]) / tau)
        total -= math.log(positive / denominator)
    return total / len(s)


def is_negative(i, j, ids, mask):
    return j != i and not (mask and ids[j] == ids[i])


def reference_nearest(t, ids, mask):
    """The teacher's nearest valid neighbour of each item (the first one on a tie), or None."""
    out = []
    for i in range(len(t)):
        best, best_score = None, None
        for j in range(len(t)):
            if is_negative(i, j, ids, mask) and (best_score is None or dot(t[i], t[j]) > best_score):
                best, best_score = j, dot(t[i], t[j])
        out.append(best)
    return out


def reference_hnd(s, t, ids, margin, hardest, mask):
    total = 0.0
    nearest = reference_nearest(t, ids, mask)
    for i in range(len(s)):
        own = dot(s[i], t[i])
        negatives = [j for j in range(len(s)) if is_negative(i, j, ids, mask)]
        if hardest:
            negatives = [] if nearest[i] is None else [nearest[i]]
        for j in negatives:
            total += max(0.0, margin - own + dot(s[i], t[j]))  # the student's item i near j's teacher feature
            total += max(0.0, margin - own + dot(s[j], t[i]))  # j's student feature near i's teacher feature
    return total / len(s)


@pytest.mark.parametrize("make", [unit, raw])
@pytest.mark.parametrize("seed", [0, 1])
def test_u_fd_and_u_sd_match_the_references(make, seed):
    s, t = make(len(IDS), 5, seed=seed), make(len(IDS), 5, seed=seed + 50)
    assert unpaired_feature_loss(s, t).item() == pytest.approx(reference_fd(s.tolist(), t.tolist()), rel=1e-12)
    assert unpaired_similarity_loss(s, t).item() == pytest.approx(reference_sd(s.tolist(), t.tolist()), rel=1e-10)


def test_u_sd_of_one_item_is_zero_with_a_graph():
    s = unit(1, 4, seed=3).requires_grad_(True)
    loss = unpaired_similarity_loss(s, unit(1, 4, seed=4))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(s.grad, torch.zeros_like(s))


@pytest.mark.parametrize("seed", [0, 7])
@pytest.mark.parametrize("tau", [0.05, 0.5])
@pytest.mark.parametrize("mask", [True, False])
def test_u_cd_matches_the_reference(seed, tau, mask):
    s, t = unit(len(IDS), 6, seed=seed), unit(len(IDS), 6, seed=seed + 1)
    queue = unit(len(QUEUE_IDS), 6, seed=seed + 2)
    got = unpaired_contrastive_loss(
        s, t, torch.tensor(IDS), queue, torch.tensor(QUEUE_IDS), temperature=tau, mask_same_item=mask
    )
    want = reference_cd(s.tolist(), t.tolist(), IDS, queue.tolist(), QUEUE_IDS, tau, mask)
    assert got.dim() == 0 and got.item() == pytest.approx(want, rel=1e-10)


def test_u_cd_with_an_empty_queue_is_zero():
    s, t = unit(4, 6, seed=1), unit(4, 6, seed=2)
    got = unpaired_contrastive_loss(s, t, torch.arange(4), torch.zeros(0, 6, dtype=torch.float64), torch.zeros(0))
    assert got.item() == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("make", [unit, raw])
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("margin", [0.0, 0.3])
@pytest.mark.parametrize("hardest", [True, False])
@pytest.mark.parametrize("mask", [True, False])
def test_u_hnd_matches_the_reference(make, seed, margin, hardest, mask):
    s, t = make(len(IDS), 5, seed=seed), make(len(IDS), 5, seed=seed + 20)
    got = unpaired_hard_negative_loss(s, t, torch.tensor(IDS), margin=margin, hardest=hardest, mask_same_item=mask)
    want = reference_hnd(s.tolist(), t.tolist(), IDS, margin, hardest, mask)
    assert got.dim() == 0 and got.item() == pytest.approx(want, rel=1e-10, abs=1e-12)


def test_the_nearest_neighbour_is_the_teachers_and_ties_go_to_the_lowest_index():
    # Items 1 and 3 have the same teacher feature, both the nearest of item 0.
    t = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [0.8, 0.6]], dtype=torch.float64)
    ids = torch.arange(4)
    nearest, has = teacher_nearest(t, ids[:, None] != ids[None, :])
    assert nearest.tolist() == [1, 3, 1, 1] and has.all()
    assert nearest.tolist() == reference_nearest(t.tolist(), ids.tolist(), True)
    # The student's scores do not choose the negative: item 0's student feature is nearest item 2's
    # teacher feature, but the hinge uses item 1 (the teacher's nearest): [0 - 0 + 0.6]_+ + [0 - 0 + <S_1, T_0>]_+.
    s = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0]], dtype=torch.float64)
    got = unpaired_hard_negative_loss(s, t, ids)
    assert got.item() == pytest.approx(reference_hnd(s.tolist(), t.tolist(), ids.tolist(), 0.0, True, True))


def test_u_hnd_items_without_a_negative_add_nothing_and_keep_finite_gradients():
    s = unit(3, 4, seed=5).requires_grad_(True)
    loss = unpaired_hard_negative_loss(s, unit(3, 4, seed=6), torch.tensor([2, 2, 2]), margin=0.5)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.isfinite(s.grad).all()


def test_unpaired_loss_sums_the_modalities_present():
    image = UnpairedRows(unit(5, 4, seed=1), unit(5, 4, seed=2), torch.arange(5))
    text = UnpairedRows(unit(3, 4, seed=3), unit(3, 4, seed=4), torch.tensor([0, 1, 0]))
    both = UnpairedFeatures(image, text)
    options = dict(queues=None, temperature=0.05, margin=0.1, hardest=True, mask_same_item=True)
    for name in ("u_fd", "u_sd", "u_hnd"):
        alone = [unpaired_loss(name, UnpairedFeatures(**{m: rows}), **options) for m, rows in both.present()]
        assert unpaired_loss(name, both, **options).item() == pytest.approx(sum(v.item() for v in alone), rel=1e-12)
    with pytest.raises(ValueError, match="needs a batch of unpaired"):
        unpaired_loss("u_fd", UnpairedFeatures(), **options)


def test_the_item_queue_writes_like_the_pair_queue():
    items, pairs = ItemQueue(5, 3), FeatureQueue(5, 3)
    for k, batch in enumerate([2, 4, 0, 7, 1, 3]):
        feats = unit(batch, 3, seed=k).float() if batch else torch.zeros(0, 3)
        ids = torch.arange(batch) + 10 * k
        items.enqueue(feats, ids)
        pairs.enqueue(feats, feats, ids)
        got, want = items.valid(), pairs.valid()
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[2])


def test_the_module_adds_the_unpaired_losses_and_their_queues():
    names = ("cd", "fd", "u_cd", "u_fd", "u_sd", "u_hnd")
    module = MultiscaleDistillationLoss(6, losses=names, queue_size=4, margin=0.2).double()
    assert isinstance(module.unpaired_queues, UnpairedQueues)
    assert any(k.startswith("unpaired_queues.image.") for k in module.state_dict())
    pairs = [unit(4, 6, seed=k) for k in range(4)]
    old = UnpairedFeatures(image=UnpairedRows(unit(3, 6, seed=8), unit(3, 6, seed=9), torch.tensor([5, 6, 7])))
    module.update_unpaired_queues(old)
    now = UnpairedFeatures(image=UnpairedRows(unit(3, 6, seed=10), unit(3, 6, seed=11), torch.tensor([5, 0, 1])))
    out = module(*pairs, torch.arange(4), unpaired=now)
    assert list(out) == list(names)
    rows = now.image
    want_cd = unpaired_contrastive_loss(rows.student, rows.teacher, rows.ids, old.image.teacher, old.image.ids)
    assert out["u_cd"].item() == pytest.approx(want_cd.item(), rel=1e-12)
    assert out["u_hnd"].item() == pytest.approx(
        unpaired_hard_negative_loss(rows.student, rows.teacher, rows.ids, margin=0.2).item(), rel=1e-12
    )
    assert len(module.unpaired_queues.image) == 3 and len(module.unpaired_queues.text) == 0
    with pytest.raises(ValueError, match="unpaired"):
        module(*pairs, torch.arange(4))


def test_without_unpaired_losses_the_module_and_its_state_are_as_before():
    module = MultiscaleDistillationLoss(6, queue_size=4)
    assert module.unpaired_queues is None
    assert sorted(module.state_dict()) == ["queue.count", "queue.image", "queue.image_ids", "queue.ptr", "queue.text"]
