"""HND against a slow reference written from docs/method.md eq. 10-14."""

import pytest
import torch

from dsmd.losses import hard_negative_distillation_loss


def unit(*shape, seed):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=generator, dtype=torch.float64)
    return x / x.norm(dim=-1, keepdim=True)


def dot(u, v):
    return sum(a * b for a, b in zip(u, v, strict=True))


def reference_h(anchor, positive, ids, margin, hardest, mask_same_image):
    """H(A, P): loops over n and j, with the negatives chosen by explicit ifs."""
    size = len(anchor)
    total = 0.0
    for n in range(size):
        s_nn = dot(anchor[n], positive[n])
        forward, backward = [], []
        for j in range(size):
            if j == n:
                continue
            if mask_same_image and ids[j] == ids[n]:
                continue
            forward.append(dot(anchor[n], positive[j]))  # s(n, j)
            backward.append(dot(anchor[j], positive[n]))  # s(j, n)
        for candidates in (forward, backward):
            if not candidates:
                continue  # no valid negative: contributes 0
            if hardest:
                total += max(0.0, margin - s_nn + max(candidates))
            else:
                total += sum(max(0.0, margin - s_nn + c) for c in candidates)
    return total / size


def reference_hnd(s_img, s_txt, t_img, t_txt, ids, margin=0.0, hardest=True, mask=True):
    args = (ids, margin, hardest, mask)
    return (
        reference_h(s_img, t_img, *args)
        + reference_h(s_txt, t_txt, *args)
        + reference_h(s_img, t_txt, *args)
        + reference_h(s_txt, t_img, *args)
    )


# Several pairs share an image (5 captions per image in Flickr30k/COCO).
SHARED_IDS = [3, 7, 3, 9, 7, 3, 11, 12]


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("margin", [0.0, 0.2])
@pytest.mark.parametrize("hardest", [True, False])
@pytest.mark.parametrize("mask", [True, False])
def test_hnd_matches_reference(seed, margin, hardest, mask):
    feats = [unit(len(SHARED_IDS), 6, seed=10 * seed + i) for i in range(4)]
    ids = torch.tensor(SHARED_IDS)
    got = hard_negative_distillation_loss(*feats, ids, margin=margin, hardest=hardest, mask_same_image=mask)
    want = reference_hnd(*[f.tolist() for f in feats], SHARED_IDS, margin, hardest, mask)
    assert got.dim() == 0
    assert got.item() == pytest.approx(want, rel=1e-10, abs=1e-12)


def test_masking_changes_the_loss_when_images_repeat():
    feats = [unit(len(SHARED_IDS), 6, seed=40 + i) for i in range(4)]
    ids = torch.tensor(SHARED_IDS)
    masked = hard_negative_distillation_loss(*feats, ids, margin=0.2)
    unmasked = hard_negative_distillation_loss(*feats, ids, margin=0.2, mask_same_image=False)
    assert masked.item() != pytest.approx(unmasked.item())


def test_rows_without_valid_negative_contribute_zero():
    # Every pair shows the same image: no pair has a valid negative.
    feats = [unit(4, 6, seed=50 + i).requires_grad_(i < 2) for i in range(4)]
    ids = torch.tensor([5, 5, 5, 5])
    for hardest in (True, False):
        loss = hard_negative_distillation_loss(*feats, ids, margin=0.5, hardest=hardest)
        assert loss.item() == 0.0
        loss.backward()
        assert torch.isfinite(feats[0].grad).all() and torch.isfinite(feats[1].grad).all()
    # The published code's masking treats them as negatives, so the loss is positive.
    unmasked = hard_negative_distillation_loss(*feats, ids, margin=0.5, mask_same_image=False)
    assert unmasked.item() > 0
    want = reference_hnd(*[f.tolist() for f in feats], [5] * 4, 0.5, True, False)
    assert unmasked.item() == pytest.approx(want, rel=1e-10)
    # A single pair never has a negative.
    single = [f[:1] for f in feats]
    assert hard_negative_distillation_loss(*single, ids[:1], mask_same_image=False).item() == 0.0


def test_hand_example_hardest_negative():
    # 2-D unit vectors: anchors and positives chosen so the hinge values are easy by hand.
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    p = torch.tensor([[0.6, 0.8], [0.8, 0.6]], dtype=torch.float64)
    # s = a @ p.T = [[0.6, 0.8], [0.8, 0.6]]; diag 0.6, 0.6.
    # Anchor rows: [0 - 0.6 + 0.8]_+ = 0.2 each; positive columns: the same, 0.2 each.
    # H = (0.4 + 0.4) / 2 = 0.4 per term; the four terms use (a, p) each time here.
    ids = torch.tensor([0, 1])
    loss = hard_negative_distillation_loss(a, a, p, p, ids)
    assert loss.item() == pytest.approx(4 * 0.4)


def test_gradient_reaches_student_only():
    feats = [unit(len(SHARED_IDS), 6, seed=60 + i).requires_grad_(True) for i in range(4)]
    loss = hard_negative_distillation_loss(*feats, torch.tensor(SHARED_IDS), margin=0.3)
    loss.backward()
    assert feats[0].grad.abs().sum() > 0 and feats[1].grad.abs().sum() > 0
    assert feats[2].grad is None and feats[3].grad is None


def test_bad_image_ids_are_rejected():
    feats = [unit(4, 6, seed=70 + i) for i in range(4)]
    with pytest.raises(ValueError, match="image_ids"):
        hard_negative_distillation_loss(*feats, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="integer"):
        hard_negative_distillation_loss(*feats, torch.tensor([0.0, 1.0, 2.0, 3.0]))
