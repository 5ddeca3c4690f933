"""LossBalancer against steps computed by hand from docs/method.md eq. 15-18."""

import io
import math

import pytest
import torch

from dsmd.balancer import LossBalancer

NAMES = ["a", "b", "c"]
# Known raw losses per step: a falls slowly, b steadily, c fast.
STEPS = [
    {"a": 2.0, "b": 1.0, "c": 0.5},
    {"a": 1.8, "b": 0.8, "c": 0.25},
    {"a": 1.7, "b": 0.6, "c": 0.1},
    {"a": 1.7, "b": 0.5, "c": 0.05},
]


def tensors(values):
    return {n: torch.tensor(v, dtype=torch.float64, requires_grad=True) for n, v in values.items()}


def softmax_weights(rates, temperature=1.0, total=3.0):
    """Eq. 17 by hand: K * exp(r_m / T) / sum_j exp(r_j / T)."""
    exps = {n: math.exp(r / temperature) for n, r in rates.items()}
    norm = sum(exps.values())
    return {n: total * e / norm for n, e in exps.items()}


def objective(weights, values, scaled=True):
    """Eq. 18 by hand: sum_m w_m * s_m * L_m with s_m = max_j L_j / L_m."""
    top = max(values.values())
    return sum(weights[n] * (top / values[n] if scaled else 1.0) * values[n] for n in values)


def check_step(balancer, values, want_weights, scaled=True):
    total, weights = balancer(tensors(values))
    assert set(weights) == set(want_weights)
    for name, want in want_weights.items():
        assert weights[name] == pytest.approx(want, rel=1e-12)
    assert total.item() == pytest.approx(objective(want_weights, values, scaled), rel=1e-12)
    return total, weights


def test_step_window_by_hand():
    balancer = LossBalancer(NAMES)
    ones = dict.fromkeys(NAMES, 1.0)
    check_step(balancer, STEPS[0], ones)  # first window: r = 1
    check_step(balancer, STEPS[1], ones)  # second window: r = 1
    # Step 2: r = L(1) / L(0) = 0.9, 0.8, 0.5.
    _, w2 = check_step(balancer, STEPS[2], softmax_weights({"a": 0.9, "b": 0.8, "c": 0.5}))
    # Step 3: r = L(2) / L(1) = 1.7/1.8, 0.75, 0.4.
    _, w3 = check_step(balancer, STEPS[3], softmax_weights({"a": 1.7 / 1.8, "b": 0.75, "c": 0.4}))
    # The slowest-falling loss gets the most weight; weights sum to K = M.
    assert w2["a"] > w2["b"] > w2["c"] and w3["a"] > w3["b"] > w3["c"]
    assert sum(w3.values()) == pytest.approx(3.0)
    # One literal value, worked out on paper: exp(.9)/(exp(.9)+exp(.8)+exp(.5)) * 3.
    # = 3 * 2.4596 / (2.4596 + 2.2255 + 1.6487) = 1.1650.
    assert w2["a"] == pytest.approx(1.1650, abs=1e-4)
    record = balancer.log_record()
    assert record["r_a"] == pytest.approx(1.7 / 1.8) and record["r_c"] == pytest.approx(0.4)
    assert record["s_a"] == pytest.approx(1.0) and record["s_c"] == pytest.approx(1.7 / 0.05)
    assert record["w_b"] == pytest.approx(w3["b"])
    assert set(record) == {f"{p}_{n}" for p in "wrs" for n in NAMES}


def test_temperature_and_total():
    balancer = LossBalancer(NAMES, temperature=0.5, total=1.0)
    for values in STEPS[:2]:
        check_step(balancer, values, dict.fromkeys(NAMES, 1 / 3))
    rates = {"a": 0.9, "b": 0.8, "c": 0.5}
    check_step(balancer, STEPS[2], softmax_weights(rates, temperature=0.5, total=1.0))


def test_priors_multiply_the_softmax_by_hand():
    balancer = LossBalancer(NAMES, priors={"c": 4.0})
    # Equal rates (first two windows): weights in proportion 1 : 1 : 4, summing to K = 3.
    check_step(balancer, STEPS[0], {"a": 0.5, "b": 0.5, "c": 2.0})
    check_step(balancer, STEPS[1], {"a": 0.5, "b": 0.5, "c": 2.0})
    # Step 2: K * p_m exp(r_m) / sum_j p_j exp(r_j), r = 0.9, 0.8, 0.5.
    exps = {"a": math.exp(0.9), "b": math.exp(0.8), "c": 4.0 * math.exp(0.5)}
    check_step(balancer, STEPS[2], {n: 3.0 * e / sum(exps.values()) for n, e in exps.items()})


def test_priors_of_one_are_the_paper_balancer_bit_for_bit():
    plain, ones = LossBalancer(NAMES), LossBalancer(NAMES, priors=dict.fromkeys(NAMES, 1.0))
    for values in STEPS:
        (t1, w1), (t2, w2) = plain(tensors(values)), ones(tensors(values))
        assert w1 == w2 and t1.item() == t2.item()


def test_ema_window_by_hand():
    # An asymmetric decay, so swapping the roles of old and new values would show.
    decay = 0.75
    balancer = LossBalancer(NAMES, window="ema", ema_decay=decay)
    ema0 = dict(STEPS[0])
    ema1 = {n: decay * ema0[n] + (1 - decay) * STEPS[1][n] for n in NAMES}
    ema2 = {n: decay * ema1[n] + (1 - decay) * STEPS[2][n] for n in NAMES}
    check_step(balancer, STEPS[0], dict.fromkeys(NAMES, 1.0))
    check_step(balancer, STEPS[1], dict.fromkeys(NAMES, 1.0))
    check_step(balancer, STEPS[2], softmax_weights({n: ema1[n] / ema0[n] for n in NAMES}))
    check_step(balancer, STEPS[3], softmax_weights({n: ema2[n] / ema1[n] for n in NAMES}))
    # By hand for a: ema1 = 0.75 * 2 + 0.25 * 1.8 = 1.95, ema2 = 0.75 * 1.95 + 0.25 * 1.7
    # = 1.8875, so r_a = 1.8875 / 1.95 at step 3.
    assert balancer.log_record()["r_a"] == pytest.approx(1.8875 / 1.95)


def test_epoch_window_by_hand():
    balancer = LossBalancer(NAMES, window="epoch")
    # Epochs of different lengths, so a sum instead of a mean would show.
    epochs = [STEPS[0:2], STEPS[1:4], STEPS[2:3], STEPS[0:2]]
    means = [{n: sum(s[n] for s in epoch) / len(epoch) for n in NAMES} for epoch in epochs]
    expected = [
        dict.fromkeys(NAMES, 1.0),
        dict.fromkeys(NAMES, 1.0),
        softmax_weights({n: means[1][n] / means[0][n] for n in NAMES}),
        softmax_weights({n: means[2][n] / means[1][n] for n in NAMES}),
    ]
    for epoch, want in zip(epochs, expected, strict=True):
        for values in epoch:  # fixed weights within the epoch, whatever the step's losses
            check_step(balancer, values, want)
        balancer.end_epoch()
        balancer.end_epoch()  # an empty epoch is not a window
    # By hand for c: epoch 0 mean (0.5 + 0.25) / 2 = 0.375, epoch 1 mean
    # (0.25 + 0.1 + 0.05) / 3 = 0.4 / 3; epoch 2 uses r_c = (0.4 / 3) / 0.375.
    by_hand = {"a": (5.2 / 3) / 1.9, "b": (1.9 / 3) / 0.9, "c": (0.4 / 3) / 0.375}
    assert expected[2] == pytest.approx(softmax_weights(by_hand))


def test_end_epoch_is_a_no_op_for_step_window():
    plain, with_epochs = LossBalancer(NAMES), LossBalancer(NAMES)
    for values in STEPS:
        _, w1 = plain(tensors(values))
        with_epochs.end_epoch()
        _, w2 = with_epochs(tensors(values))
        assert w1 == w2


def test_scale_factor_is_gradient_stopped():
    # L_m = sum(c_m * x_m^2): dL_m/dx_m = 2 c_m x_m, and the objective's gradient must be
    # w_m * s_m * dL_m/dx_m with w_m, s_m held constant.
    coeffs = {"a": 3.0, "b": 1.0, "c": 0.2}
    xs = {n: torch.tensor([0.5, -1.0], dtype=torch.float64, requires_grad=True) for n in NAMES}
    balancer = LossBalancer(NAMES)
    for step in range(3):
        for x in xs.values():
            x.grad = None
        losses = {n: coeffs[n] * (xs[n] * (1 + step)).pow(2).sum() for n in NAMES}
        values = {n: v.item() for n, v in losses.items()}
        total, weights = balancer(losses)
        total.backward()
        top = max(values.values())
        for n in NAMES:
            scale = top / values[n]
            want = weights[n] * scale * 2 * coeffs[n] * (1 + step) ** 2 * xs[n].detach()
            assert torch.allclose(xs[n].grad, want, rtol=1e-12)
            assert balancer.log_record()[f"s_{n}"] == pytest.approx(scale)


def test_static_mode():
    balancer = LossBalancer(NAMES, mode="static", static_weights={"a": 2.0, "c": 0.5})
    want = {"a": 2.0, "b": 1.0, "c": 0.5}
    for values in STEPS:
        losses = tensors(values)
        total, weights = balancer(losses)
        assert weights == want
        assert total.item() == pytest.approx(sum(want[n] * values[n] for n in NAMES))
        total.backward()
        for n in NAMES:
            assert losses[n].grad.item() == pytest.approx(want[n])  # no magnitude scaling
    record = balancer.log_record()
    assert record["s_a"] == 1.0 and record["w_a"] == 2.0


def test_static_all_ones_is_the_plain_sum():
    balancer = LossBalancer(NAMES, mode="static")
    total, weights = balancer(tensors(STEPS[2]))
    assert weights == dict.fromkeys(NAMES, 1.0)
    assert total.item() == pytest.approx(sum(STEPS[2].values()))


def test_reference_mode():
    k = 10.0
    balancer = LossBalancer(NAMES, mode="reference", reference_k=k)
    losses = tensors(STEPS[0])
    total, weights = balancer(losses)  # first step: unweighted sum
    assert weights == dict.fromkeys(NAMES, 1.0)
    assert total.item() == pytest.approx(sum(STEPS[0].values()))
    for values in STEPS[1:]:
        losses = tensors(values)
        total, weights = balancer(losses)
        top = max(values.values())
        for n in NAMES:
            assert weights[n] == pytest.approx(k / 3 * top / values[n])
        # Every weighted loss equals (k/M) * max, so the objective's value is k * max ...
        assert total.item() == pytest.approx(k * top)
        # ... while its gradient is w_m on each raw loss (the weights are numbers).
        total.backward()
        for n in NAMES:
            assert losses[n].grad.item() == pytest.approx(weights[n])


@pytest.mark.parametrize("window", ["step", "ema", "epoch"])
@pytest.mark.parametrize("mode", ["dynamic", "reference"])
def test_state_dict_round_trip(window, mode):
    sequence = STEPS + STEPS[::-1] + STEPS
    first = LossBalancer(NAMES, mode=mode, window=window)
    for i, values in enumerate(sequence[:7]):
        first(tensors(values))
        if i % 3 == 2:
            first.end_epoch()
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)  # plain Python: loads with weights_only
    buffer.seek(0)
    second = LossBalancer(NAMES, mode=mode, window=window)
    second.load_state_dict(torch.load(buffer, weights_only=True))
    assert second.log_record() == first.log_record()
    for i, values in enumerate(sequence[7:], start=7):
        total1, w1 = first(tensors(values))
        total2, w2 = second(tensors(values))
        assert w1 == w2 and total1.item() == total2.item()
        assert first.log_record() == second.log_record()
        if i % 3 == 2:
            first.end_epoch()
            second.end_epoch()


def test_load_state_dict_rejects_other_balancers():
    state = LossBalancer(NAMES).state_dict()
    with pytest.raises(ValueError, match="losses"):
        LossBalancer(["a", "b"]).load_state_dict(state)
    with pytest.raises(ValueError, match="window"):
        LossBalancer(NAMES, window="ema").load_state_dict(state)


def test_zero_losses_do_not_break_the_ratios():
    # CD is exactly 0 while the queue is empty; HND is 0 when no hinge is active.
    balancer = LossBalancer(NAMES)
    sequence = [
        {"a": 0.0, "b": 1.0, "c": 0.5},
        {"a": 2.0, "b": 0.8, "c": 0.0},
        {"a": 1.0, "b": 0.6, "c": 0.4},
    ]
    for values in sequence:
        total, weights = balancer(tensors(values))
        assert math.isfinite(total.item())
        assert all(math.isfinite(w) for w in weights.values())
    record = balancer.log_record()
    assert record["r_a"] == 1.0  # denominator 0: no rate
    assert record["r_b"] == pytest.approx(0.8)


def test_log_record_is_empty_before_the_first_call():
    assert LossBalancer(NAMES).log_record() == {}


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"names": []}, "at least one"),
        ({"names": ["a", "a"]}, "unique"),
        ({"names": "abc"}, "list"),
        ({"mode": "fancy"}, "mode"),
        ({"window": "month"}, "window"),
        ({"temperature": 0.0}, "temperature"),
        ({"temperature": -1.0}, "temperature"),
        ({"ema_decay": 1.0}, "ema_decay"),
        ({"reference_k": 0.0}, "reference_k"),
        ({"total": 0.0}, "total"),
        ({"mode": "static", "static_weights": {"z": 1.0}}, "unknown"),
        ({"mode": "static", "static_weights": {"a": -1.0}}, ">= 0"),
        ({"priors": {"z": 1.0}}, "unknown"),
        ({"priors": {"a": 0.0}}, "> 0"),
        ({"priors": {"a": math.inf}}, "> 0"),
    ],
)
def test_bad_arguments(kwargs, match):
    kwargs = {"names": NAMES, **kwargs}
    with pytest.raises(ValueError, match=match):
        LossBalancer(**kwargs)


def test_bad_losses():
    balancer = LossBalancer(NAMES)
    with pytest.raises(ValueError, match="got losses"):
        balancer(tensors({"a": 1.0, "b": 1.0}))
    with pytest.raises(ValueError, match="got losses"):
        balancer(tensors({"a": 1.0, "b": 1.0, "c": 1.0, "d": 1.0}))
    with pytest.raises(ValueError, match="scalar"):
        balancer({"a": torch.ones(2), "b": torch.tensor(1.0), "c": torch.tensor(1.0)})
    with pytest.raises(ValueError, match="nan"):
        balancer(tensors({"a": float("nan"), "b": 1.0, "c": 1.0}))
    assert balancer.log_record() == {}  # rejected calls leave no trace
