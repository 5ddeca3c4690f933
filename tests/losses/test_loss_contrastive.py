"""CD against a slow reference written from docs/method.md eq. 5-7."""

import math

import pytest
import torch

from dsmd.losses import contrastive_distillation_loss


def unit(*shape, seed):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=generator, dtype=torch.float64)
    return x / x.norm(dim=-1, keepdim=True)


def dot(u, v):
    return sum(a * b for a, b in zip(u, v, strict=True))


def reference_nce(anchor, positive, ids, queue, queue_ids, tau, mask):
    """-(1/B) sum_n log(exp(p_n) / (exp(p_n) + sum_{k in N(n)} exp(q_nk))), by loops."""
    total = 0.0
    for n in range(len(anchor)):
        numerator = math.exp(dot(anchor[n], positive[n]) / tau)
        denominator = numerator
        for k in range(len(queue)):
            if mask and queue_ids[k] == ids[n]:
                continue  # same image: not a negative
            denominator += math.exp(dot(anchor[n], queue[k]) / tau)
        total += -math.log(numerator / denominator)
    return total / len(anchor)


def reference_cd(s_img, s_txt, t_img, t_txt, ids, q_img, q_txt, q_ids, tau, mask, cross):
    loss = reference_nce(s_img, t_img, ids, q_img, q_ids, tau, mask)
    loss += reference_nce(s_txt, t_txt, ids, q_txt, q_ids, tau, mask)
    if cross:
        loss += reference_nce(s_img, t_txt, ids, q_txt, q_ids, tau, mask)
        loss += reference_nce(s_txt, t_img, ids, q_img, q_ids, tau, mask)
    return loss


IDS = [4, 8, 4, 15, 8, 23]
# Queue ids include the anchors' images (4, 8, 15) and others.
QUEUE_IDS = [4, 1, 8, 2, 4, 3, 15, 5, 6, 8, 9, 4]


def make(seed, dim=7):
    feats = [unit(len(IDS), dim, seed=seed + i) for i in range(4)]
    queue = [unit(len(QUEUE_IDS), dim, seed=seed + 10 + i) for i in range(2)]
    return feats, queue


@pytest.mark.parametrize("seed", [0, 100])
@pytest.mark.parametrize("tau", [0.05, 0.5])
@pytest.mark.parametrize("mask", [True, False])
@pytest.mark.parametrize("cross", [False, True])
def test_cd_matches_reference(seed, tau, mask, cross):
    feats, queue = make(seed)
    ids, q_ids = torch.tensor(IDS), torch.tensor(QUEUE_IDS)
    got = contrastive_distillation_loss(
        *feats, ids, *queue, q_ids, temperature=tau, mask_same_image=mask, cross_modal=cross
    )
    lists = [f.tolist() for f in feats] + [IDS] + [q.tolist() for q in queue] + [QUEUE_IDS]
    want = reference_cd(*lists, tau, mask, cross)
    assert got.dim() == 0
    assert got.item() == pytest.approx(want, rel=1e-10)


def test_masking_drops_same_image_entries():
    feats, queue = make(200)
    ids, q_ids = torch.tensor(IDS), torch.tensor(QUEUE_IDS)
    masked = contrastive_distillation_loss(*feats, ids, *queue, q_ids)
    unmasked = contrastive_distillation_loss(*feats, ids, *queue, q_ids, mask_same_image=False)
    # Extra negatives only make the denominator larger.
    assert unmasked.item() > masked.item()


def test_empty_queue_gives_zero():
    feats, _ = make(300)
    empty = torch.zeros(0, 7, dtype=torch.float64)
    loss = contrastive_distillation_loss(*feats, torch.tensor(IDS), empty, empty, torch.zeros(0, dtype=torch.long))
    assert loss.item() == 0.0


def test_queue_of_only_same_image_gives_zero():
    feats, queue = make(400)
    ids = torch.tensor([4] * len(IDS))
    q_ids = torch.tensor([4] * len(QUEUE_IDS))
    loss = contrastive_distillation_loss(*feats, ids, *queue, q_ids)
    assert loss.item() == pytest.approx(0.0, abs=1e-15)
    loss_unmasked = contrastive_distillation_loss(*feats, ids, *queue, q_ids, mask_same_image=False)
    assert loss_unmasked.item() > 0


def test_queue_order_does_not_matter():
    feats, queue = make(500)
    perm = torch.randperm(len(QUEUE_IDS), generator=torch.Generator().manual_seed(0))
    ids, q_ids = torch.tensor(IDS), torch.tensor(QUEUE_IDS)
    a = contrastive_distillation_loss(*feats, ids, *queue, q_ids, cross_modal=True)
    b = contrastive_distillation_loss(*feats, ids, queue[0][perm], queue[1][perm], q_ids[perm], cross_modal=True)
    assert a.item() == pytest.approx(b.item(), rel=1e-12)


def test_stable_at_small_temperature():
    feats, queue = make(600)
    loss = contrastive_distillation_loss(*feats, torch.tensor(IDS), *queue, torch.tensor(QUEUE_IDS), temperature=1e-3)
    assert torch.isfinite(loss)


def test_gradient_reaches_student_only():
    feats, queue = make(700)
    feats = [f.requires_grad_(True) for f in feats]
    queue = [q.requires_grad_(True) for q in queue]
    loss = contrastive_distillation_loss(*feats, torch.tensor(IDS), *queue, torch.tensor(QUEUE_IDS), cross_modal=True)
    loss.backward()
    assert feats[0].grad.abs().sum() > 0 and feats[1].grad.abs().sum() > 0
    assert feats[2].grad is None and feats[3].grad is None
    assert queue[0].grad is None and queue[1].grad is None


def test_bad_queue_shapes_are_rejected():
    feats, queue = make(800)
    ids, q_ids = torch.tensor(IDS), torch.tensor(QUEUE_IDS)
    with pytest.raises(ValueError, match="queue"):
        contrastive_distillation_loss(*feats, ids, queue[0][:-1], queue[1], q_ids)
    with pytest.raises(ValueError, match="queue"):
        contrastive_distillation_loss(*feats, ids, queue[0][:, :3], queue[1][:, :3], q_ids)
    with pytest.raises(ValueError, match="temperature"):
        contrastive_distillation_loss(*feats, ids, *queue, q_ids, temperature=0.0)
