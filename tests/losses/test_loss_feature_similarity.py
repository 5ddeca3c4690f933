"""FD and SD against slow references written from docs/method.md eq. 8 and 9."""

import pytest
import torch

from dsmd.losses import feature_distillation_loss, similarity_distillation_loss


def unit(*shape, seed):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=generator, dtype=torch.float64)
    return x / x.norm(dim=-1, keepdim=True)


def batch(seed, b=6, d=5):
    return [unit(b, d, seed=seed + i) for i in range(4)]


def reference_fd(s_img, s_txt, t_img, t_txt):
    total = 0.0
    for s, t in ((s_img, t_img), (s_txt, t_txt)):
        rows, cols = len(s), len(s[0])
        acc = 0.0
        for n in range(rows):
            for d in range(cols):
                acc += abs(s[n][d] - t[n][d])
        total += acc / (rows * cols)
    return total


def reference_sd(s_img, s_txt, t_img, t_txt):
    total = 0.0
    for s, t in ((s_img, t_img), (s_txt, t_txt)):
        dots = [sum(a * b for a, b in zip(s[n], t[n], strict=True)) for n in range(len(s))]
        total += 1.0 - sum(dots) / len(dots)
    return total


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fd_matches_reference(seed):
    feats = batch(seed)
    got = feature_distillation_loss(*feats)
    want = reference_fd(*[f.tolist() for f in feats])
    assert got.dim() == 0
    assert got.item() == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sd_matches_reference(seed):
    feats = batch(seed)
    got = similarity_distillation_loss(*feats)
    want = reference_sd(*[f.tolist() for f in feats])
    assert got.dim() == 0
    assert got.item() == pytest.approx(want, rel=1e-12)


def test_identical_features_give_zero():
    s_img, s_txt, _, _ = batch(3)
    assert feature_distillation_loss(s_img, s_txt, s_img, s_txt).item() == 0.0
    assert similarity_distillation_loss(s_img, s_txt, s_img, s_txt).item() == pytest.approx(0.0)


@pytest.mark.parametrize("loss_fn", [feature_distillation_loss, similarity_distillation_loss])
def test_gradient_reaches_student_only(loss_fn):
    feats = [f.clone().requires_grad_(True) for f in batch(4)]
    loss_fn(*feats).backward()
    assert feats[0].grad is not None and feats[0].grad.abs().sum() > 0
    assert feats[1].grad is not None and feats[1].grad.abs().sum() > 0
    assert feats[2].grad is None
    assert feats[3].grad is None


@pytest.mark.parametrize("loss_fn", [feature_distillation_loss, similarity_distillation_loss])
def test_shape_mismatch_is_rejected(loss_fn):
    s_img, s_txt, t_img, t_txt = batch(5)
    with pytest.raises(ValueError, match="shape"):
        loss_fn(s_img, s_txt, t_img[:3], t_txt)
    with pytest.raises(ValueError, match=r"\(B, D\)"):
        loss_fn(s_img, s_txt, t_img[0], t_txt)
