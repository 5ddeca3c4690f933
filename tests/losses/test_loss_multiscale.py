"""MultiscaleDistillationLoss: ablations, queue timing, state, configuration."""

import itertools

import pytest
import torch

from dsmd.config import LossConfig
from dsmd.losses import (
    MultiscaleDistillationLoss,
    contrastive_distillation_loss,
    feature_distillation_loss,
    hard_negative_distillation_loss,
    similarity_distillation_loss,
)

NAMES = ("cd", "fd", "sd", "hnd")
DIM = 6


def make_batch(seed, size=5):
    generator = torch.Generator().manual_seed(seed)
    feats = []
    for _ in range(4):
        x = torch.randn(size, DIM, generator=generator, dtype=torch.float64)
        feats.append(x / x.norm(dim=1, keepdim=True))
    ids = torch.randint(0, 4, (size,), generator=generator)
    return feats, ids


SUBSETS = [subset for k in range(1, 5) for subset in itertools.combinations(NAMES, k)]


@pytest.mark.parametrize("subset", SUBSETS)
def test_ablated_subsets_return_exactly_their_keys(subset):
    module = MultiscaleDistillationLoss(DIM, losses=subset, queue_size=8).double()
    feats, ids = make_batch(0)
    out = module(*feats, ids)
    assert list(out) == list(subset)
    assert all(v.dim() == 0 for v in out.values())
    assert (module.queue is not None) == ("cd" in subset)


def test_values_match_the_loss_functions():
    module = MultiscaleDistillationLoss(
        DIM, queue_size=7, margin=0.1, hardest=False, mask_same_image=False, cross_modal=True
    ).double()
    old, old_ids = make_batch(1)
    module.update_queue(old[2], old[3], old_ids)
    feats, ids = make_batch(2)
    out = module(*feats, ids)
    cd = contrastive_distillation_loss(
        *feats, ids, old[2], old[3], old_ids, 0.05, mask_same_image=False, cross_modal=True
    )
    hnd = hard_negative_distillation_loss(
        *feats, ids, margin=0.1, hardest=False, mask_same_image=False
    )
    assert out["cd"].item() == pytest.approx(cd.item(), rel=1e-12)
    assert out["fd"].item() == pytest.approx(feature_distillation_loss(*feats).item())
    assert out["sd"].item() == pytest.approx(similarity_distillation_loss(*feats).item())
    assert out["hnd"].item() == pytest.approx(hnd.item(), rel=1e-12)


def test_cd_uses_the_queue_from_before_the_batch():
    module = MultiscaleDistillationLoss(DIM, losses=["cd"], queue_size=16).double()
    feats, ids = make_batch(3)
    ids = torch.arange(5)
    # The queue is empty before the first update: only the positive, loss 0.
    assert module(*feats, ids)["cd"].item() == 0.0
    module.update_queue(feats[2], feats[3], ids)
    assert len(module.queue) == 5
    other, _ = make_batch(4)
    other_ids = torch.arange(10, 15)
    want = contrastive_distillation_loss(*other, other_ids, feats[2], feats[3], ids)
    assert module(*other, other_ids)["cd"].item() == pytest.approx(want.item(), rel=1e-12)


def test_gradient_reaches_student_only():
    module = MultiscaleDistillationLoss(DIM, queue_size=8, margin=0.2).double()
    old, old_ids = make_batch(5)
    module.update_queue(old[2], old[3], old_ids)
    feats, ids = make_batch(6)
    feats = [f.requires_grad_(True) for f in feats]
    sum(module(*feats, ids).values()).backward()
    assert feats[0].grad.abs().sum() > 0 and feats[1].grad.abs().sum() > 0
    assert feats[2].grad is None and feats[3].grad is None


def test_queue_state_round_trips_through_state_dict():
    module = MultiscaleDistillationLoss(DIM, queue_size=4).double()
    for seed in (7, 8):
        feats, ids = make_batch(seed)
        module.update_queue(feats[2], feats[3], ids)
    state = module.state_dict()
    assert {"queue.image", "queue.text", "queue.image_ids", "queue.ptr", "queue.count"} <= set(
        state
    )
    restored = MultiscaleDistillationLoss(DIM, queue_size=4).double()
    restored.load_state_dict(state)
    feats, ids = make_batch(9)
    a, b = module(*feats, ids), restored(*feats, ids)
    assert a["cd"].item() == pytest.approx(b["cd"].item(), rel=1e-15)
    assert a["cd"].item() > 0


def test_without_cd_the_state_is_empty_and_update_is_a_no_op():
    module = MultiscaleDistillationLoss(DIM, losses=["fd", "sd"])
    assert module.state_dict() == {}
    feats, ids = make_batch(10)
    module.update_queue(feats[2].float(), feats[3].float(), ids)


def test_from_config():
    cfg = LossConfig(
        losses=["sd", "cd"],
        temperature=0.2,
        queue_size=32,
        margin=0.05,
        hardest=False,
        mask_same_image=False,
        cross_modal=True,
    )
    module = MultiscaleDistillationLoss.from_config(cfg, DIM)
    assert module.losses == ("sd", "cd")
    assert module.temperature == 0.2 and module.margin == 0.05
    assert module.queue.size == 32
    assert not module.hardest and not module.mask_same_image and module.cross_modal
    default = MultiscaleDistillationLoss.from_config(LossConfig(), DIM)
    assert default.losses == NAMES and default.queue.size == 8192


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"losses": []}, "at least one"),
        ({"losses": ["cd", "kd"]}, "unknown loss"),
        ({"losses": ["fd", "fd"]}, "twice"),
        ({"losses": "fd"}, "list"),
        ({"temperature": 0.0}, "temperature"),
        ({"temperature": -1.0}, "temperature"),
        ({"queue_size": -1}, "queue_size"),
        ({"margin": -0.1}, "margin"),
        ({"dim": 0}, "dim"),
    ],
)
def test_bad_arguments(kwargs, match):
    kwargs = {"dim": DIM, **kwargs}
    with pytest.raises(ValueError, match=match):
        MultiscaleDistillationLoss(**kwargs)


def test_wrong_feature_width_is_rejected():
    module = MultiscaleDistillationLoss(DIM + 1, losses=["fd"])
    feats, ids = make_batch(11)
    with pytest.raises(ValueError, match="dimensional"):
        module(*feats, ids)
