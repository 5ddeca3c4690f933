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
    hnd = hard_negative_distillation_loss(*feats, ids, margin=0.1, hardest=False, mask_same_image=False)
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
    assert {"queue.image", "queue.text", "queue.image_ids", "queue.ptr", "queue.count"} <= set(state)
    restored = MultiscaleDistillationLoss(DIM, queue_size=4).double()
    restored.load_state_dict(state)
    feats, ids = make_batch(9)
    a, b = module(*feats, ids), restored(*feats, ids)
    assert a["cd"].item() == pytest.approx(b["cd"].item(), rel=1e-15)
    assert a["cd"].item() > 0


def test_update_queue_enqueues_the_teacher_features_and_ids_and_wraps_around():
    module = MultiscaleDistillationLoss(DIM, losses=["cd"], queue_size=8).double()
    queue = module.queue
    first, _ = make_batch(12)
    first_ids = torch.arange(5)
    teacher_image = first[2].clone().requires_grad_(True)
    module.update_queue(teacher_image, first[3], first_ids)
    # The teacher's features (not the student's), in slots 0-4, without their graph.
    assert int(queue.ptr) == 5 and int(queue.count) == 5 and len(queue) == 5
    assert torch.equal(queue.image[:5], first[2]) and torch.equal(queue.text[:5], first[3])
    assert torch.equal(queue.image_ids[:5], first_ids)
    assert not queue.image.requires_grad
    image, text, image_ids = queue.valid()
    assert torch.equal(image, first[2]) and torch.equal(text, first[3])
    assert torch.equal(image_ids, first_ids)

    # 5 more pairs into 3 free slots: rows 0-2 fill slots 5-7, rows 3-4 overwrite the two
    # oldest (slots 0-1); the pointer wraps to 2 and the queue is full.
    second, _ = make_batch(13)
    second_ids = torch.arange(10, 15)
    module.update_queue(second[2], second[3], second_ids)
    assert int(queue.ptr) == 2 and int(queue.count) == 8 and len(queue) == 8
    for buffer, new, old in ((queue.image, second[2], first[2]), (queue.text, second[3], first[3])):
        assert torch.equal(buffer[5:8], new[:3])
        assert torch.equal(buffer[:2], new[3:])
        assert torch.equal(buffer[2:5], old[2:])
    assert queue.image_ids.tolist() == [13, 14, 2, 3, 4, 10, 11, 12]
    image, text, image_ids = queue.valid()
    assert torch.equal(image, queue.image) and torch.equal(image_ids, queue.image_ids)


def test_without_cd_the_state_is_empty_and_update_is_a_no_op():
    module = MultiscaleDistillationLoss(DIM, losses=["fd", "sd"])
    assert module.state_dict() == {}
    feats, ids = make_batch(10)
    module.update_queue(feats[2].float(), feats[3].float(), ids)
    # Nothing was created or stored, and the losses are those of the batch alone.
    assert module.queue is None
    assert module.state_dict() == {} and list(module.buffers()) == []
    out = module(*(f.float() for f in feats), ids)
    assert out["fd"].item() == pytest.approx(feature_distillation_loss(*feats).item(), rel=1e-5)


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
        ({"losses": ["cd", "kld"]}, "unknown loss"),
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


def test_baselines_are_computed_by_name_with_their_options():
    from dsmd.losses import dcd_loss, kd_loss, rkd_loss

    torch.manual_seed(0)
    s_v, s_t, t_v, t_t = (torch.nn.functional.normalize(torch.randn(6, 8), dim=1) for _ in range(4))
    ids = torch.tensor([0, 0, 1, 2, 3, 4])
    module = MultiscaleDistillationLoss(
        8, losses=["kd", "rkd", "dcd", "hint"], kd_temperature=0.1, rkd_angle_weight=0.5, dcd_negatives=2
    )
    out = module(s_v, s_t, t_v, t_t, ids)
    assert list(out) == ["kd", "rkd", "dcd", "hint"] and module.queue is None
    assert torch.equal(out["kd"], kd_loss(s_v, s_t, t_v, t_t, temperature=0.1))
    assert torch.equal(out["rkd"], rkd_loss(s_v, s_t, t_v, t_t, distance_weight=1.0, angle_weight=0.5))
    assert torch.equal(out["dcd"], dcd_loss(s_v, s_t, t_v, t_t, ids, temperature=0.07, negatives=2))
    with pytest.raises(ValueError, match="unknown baseline options"):
        MultiscaleDistillationLoss(8, losses=["kd"], kd_temperture=0.1)
