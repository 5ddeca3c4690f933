"""FeatureQueue against a hand-tracked Python list of the most recent entries."""

import pytest
import torch

from dsmd.losses import FeatureQueue, contrastive_distillation_loss


def rows(start, count, dim):
    """Rows whose values encode their global index, so entries are recognisable."""
    index = torch.arange(start, start + count, dtype=torch.float64)
    image = index[:, None] + torch.linspace(0, 0.5, dim, dtype=torch.float64)[None, :]
    return image, -image, (1000 + index).long()


def as_entries(image, text, ids):
    return sorted(
        (tuple(i), tuple(t), int(g)) for i, t, g in zip(image.tolist(), text.tolist(), ids.tolist(), strict=True)
    )


def test_ring_buffer_matches_python_list():
    size, dim = 5, 3
    queue = FeatureQueue(size, dim).double()
    expected = []  # the most recent `size` entries, pushed one by one
    pushed = 0
    for batch in [2, 1, 3, 0, 4, 7, 5, 1, 12]:  # wraps, exact fill, batch > size
        image, text, ids = rows(pushed, batch, dim)
        queue.enqueue(image, text, ids)
        for i in range(batch):
            expected.append((tuple(image[i].tolist()), tuple(text[i].tolist()), int(ids[i])))
        expected = expected[-size:]
        pushed += batch
        assert len(queue) == len(expected)
        assert as_entries(*queue.valid()) == sorted(expected)
        assert int(queue.ptr) == pushed % size


def test_unwritten_slots_are_never_returned():
    queue = FeatureQueue(8, 2)
    assert len(queue) == 0
    image, text, ids = queue.valid()
    assert image.shape == (0, 2) and text.shape == (0, 2) and ids.shape == (0,)
    queue.enqueue(torch.ones(3, 2), torch.ones(3, 2), torch.tensor([1, 2, 3]))
    image, _, ids = queue.valid()
    assert image.shape == (3, 2) and sorted(ids.tolist()) == [1, 2, 3]


def test_zero_size_queue_is_always_empty():
    queue = FeatureQueue(0, 4)
    queue.enqueue(torch.ones(3, 4), torch.ones(3, 4), torch.tensor([1, 2, 3]))
    assert len(queue) == 0
    assert queue.valid()[0].shape == (0, 4)


def test_valid_returns_copies():
    queue = FeatureQueue(4, 2)
    queue.enqueue(torch.ones(2, 2), torch.ones(2, 2), torch.tensor([1, 2]))
    image, _, _ = queue.valid()
    queue.enqueue(torch.zeros(2, 2), torch.zeros(2, 2), torch.tensor([3, 4]))
    assert image.sum().item() == 4.0


def test_enqueued_features_carry_no_gradient():
    queue = FeatureQueue(4, 2)
    teacher = torch.ones(2, 2, requires_grad=True)
    queue.enqueue(teacher * 2, teacher * 3, torch.tensor([1, 2]))
    assert not queue.valid()[0].requires_grad


def test_state_dict_round_trip():
    queue = FeatureQueue(4, 3).double()
    for start in (0, 3, 6):
        queue.enqueue(*rows(start, 3, 3))
    state = queue.state_dict()
    assert set(state) == {"image", "text", "image_ids", "ptr", "count"}
    restored = FeatureQueue(4, 3).double()
    restored.load_state_dict(state)
    assert as_entries(*restored.valid()) == as_entries(*queue.valid())
    # Both continue identically, including where the next entries land.
    queue.enqueue(*rows(9, 2, 3))
    restored.enqueue(*rows(9, 2, 3))
    for name in ("image", "text", "image_ids", "ptr", "count"):
        assert torch.equal(getattr(queue, name), getattr(restored, name))


def test_contrastive_loss_is_independent_of_slot_order():
    # After wrap-around the slot order is not the insertion order; CD must not care.
    dim = 4
    generator = torch.Generator().manual_seed(0)
    queue = FeatureQueue(6, dim).double()
    history = []
    for batch in (4, 5):
        image = torch.randn(batch, dim, generator=generator, dtype=torch.float64)
        text = torch.randn(batch, dim, generator=generator, dtype=torch.float64)
        ids = torch.randint(0, 5, (batch,), generator=generator)
        queue.enqueue(image, text, ids)
        history.extend(zip(image, text, ids, strict=True))
    history = history[-6:]
    in_order = (
        torch.stack([h[0] for h in history]),
        torch.stack([h[1] for h in history]),
        torch.stack([h[2] for h in history]),
    )
    feats = [torch.randn(3, dim, generator=generator, dtype=torch.float64) for _ in range(4)]
    ids = torch.tensor([0, 1, 2])
    a = contrastive_distillation_loss(*feats, ids, *queue.valid(), cross_modal=True)
    b = contrastive_distillation_loss(*feats, ids, *in_order, cross_modal=True)
    assert a.item() == pytest.approx(b.item(), rel=1e-12)


@pytest.mark.parametrize("size, dim", [(-1, 4), (4, 0), (2.5, 4), (True, 4)])
def test_bad_arguments(size, dim):
    with pytest.raises(ValueError):
        FeatureQueue(size, dim)


def test_bad_enqueue_shapes():
    queue = FeatureQueue(4, 3)
    with pytest.raises(ValueError, match="enqueue"):
        queue.enqueue(torch.ones(2, 4), torch.ones(2, 4), torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="enqueue"):
        queue.enqueue(torch.ones(2, 3), torch.ones(2, 3), torch.tensor([1, 2, 3]))
