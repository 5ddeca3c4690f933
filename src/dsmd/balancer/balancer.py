"""The dynamic self-adaptive loss balancer (docs/method.md eq. 15-18) and its baselines."""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor

MODES = ("dynamic", "static", "reference")
WINDOWS = ("step", "ema", "epoch")

# Below this a loss (or a window's mean loss) counts as zero: a ratio with it in the
# denominator is meaningless, so the factor falls back to 1. CD is exactly 0 while its queue
# is empty, and HND is exactly 0 when no hinge is active.
_ZERO = 1e-12


class LossBalancer:
    """Weighs named losses into one objective.

    Modes:

    - ``dynamic`` (docs/method.md, default). At step t, with ``L_m`` the raw losses:
      magnitude scaling ``s_m = sg(max_j L_j / L_m)``; rates ``r_m = Lbar_m(t-1) / Lbar_m(t-2)``
      from the unscaled, detached losses averaged over a window (``r_m = 1`` until two
      windows are complete); weights ``w_m = K * softmax(r / T)_m``; objective
      ``sum_m w_m * s_m * L_m``. With ``priors`` p_m (missing names: 1) the softmax becomes
      ``p_m exp(r_m / T) / sum_j p_j exp(r_j / T)``, i.e. ``softmax(r / T + log p)``: a loss with
      prior 4 gets four times the weight of one with prior 1 at equal rates, and the weights
      still follow the rates and still sum to K. All ones is the paper's balancer exactly.
    - ``static``: ``w_m`` fixed from ``static_weights`` (missing names: 1), no scaling,
      objective ``sum_m w_m * L_m``. All ones is the paper's "without balancer".
    - ``reference``: the published code. Its rates are taken on the already-scaled losses,
      which all equal ``max_j L_j``, so its softmax is uniform. The first step's objective is
      the unweighted ``sum_m L_m``; afterwards ``w_m = (k/M) * max_j L_j / L_m`` (a number,
      no gradient, from the current step's losses) multiplies the raw losses:
      ``sum_m w_m * L_m``. Its value is always ``k * max_j L_j``, but its gradient is
      ``sum_m w_m * grad L_m``. ``s_m`` and ``r_m`` are logged as 1 (the scale is inside w_m).

    Windows (dynamic mode; ``Lbar`` is recorded in every mode so that switching is cheap):

    - ``step``: ``Lbar(t)`` is the loss of step t (DWA applied per step).
    - ``ema``: ``Lbar(t) = d * Lbar(t-1) + (1 - d) * L(t)``, ``Lbar(0) = L(0)``, one value
      per step, ``d = ema_decay``.
    - ``epoch``: ``Lbar(e)`` is the mean loss over epoch e (DWA as published). Call
      :meth:`end_epoch` at the end of each epoch; during epoch e the rates use epochs e-1
      and e-2, so the weights stay fixed within an epoch (``s_m`` still follows each step).
      An epoch with no step is not counted. :meth:`end_epoch` is a no-op for other windows.

    A loss at (or below) ``1e-12`` gets ``s_m = 1``, and a rate whose denominator is that
    small is 1: the ratios are undefined there. Losses are expected to be non-negative.

    Args:
        names: the loss names, e.g. ``["cd", "fd", "sd", "hnd"]``.
        mode: ``dynamic``, ``static`` or ``reference``.
        temperature: the balancer temperature T (paper: 1).
        window: ``step``, ``ema`` or ``epoch``.
        ema_decay: d of the ``ema`` window, in ``[0, 1)``.
        static_weights: weights of the ``static`` mode by name (missing: 1.0).
        reference_k: k of the ``reference`` mode (published code: 10).
        priors: the ``dynamic`` mode's prior weights by name (missing: 1.0; each > 0).
        total: K, the sum of the dynamic weights (default M, the number of losses).

    Raises:
        ValueError: empty or repeated names, unknown mode or window, ``temperature <= 0``,
            ``ema_decay`` outside ``[0, 1)``, ``reference_k <= 0``, ``total <= 0``, or
            ``static_weights`` or ``priors`` naming an unknown loss or holding a negative weight
            (a prior must be > 0).

    Example:
        >>> balancer = LossBalancer(["cd", "fd"])
        >>> total, weights = balancer({"cd": cd_loss, "fd": fd_loss})  # doctest: +SKIP
        >>> total.backward()  # doctest: +SKIP
    """

    def __init__(
        self,
        names: Sequence[str],
        mode: str = "dynamic",
        temperature: float = 1.0,
        window: str = "step",
        ema_decay: float = 0.9,
        static_weights: Mapping[str, float] | None = None,
        reference_k: float = 10.0,
        total: float | None = None,
        priors: Mapping[str, float] | None = None,
    ) -> None:
        if isinstance(names, str):
            raise ValueError(f"names must be a list of loss names, got the string {names!r}")
        names = list(names)
        if not names:
            raise ValueError("the balancer needs at least one loss name")
        if len(set(names)) != len(names):
            raise ValueError(f"loss names must be unique, got {names}")
        if mode not in MODES:
            raise ValueError(f"unknown balancer mode {mode!r}; choose from {', '.join(MODES)}")
        if window not in WINDOWS:
            raise ValueError(f"unknown balancer window {window!r}; choose from {', '.join(WINDOWS)}")
        if not (temperature > 0 and math.isfinite(temperature)):
            raise ValueError(f"balancer temperature must be > 0, got {temperature}")
        if not 0 <= ema_decay < 1:
            raise ValueError(f"ema_decay must be in [0, 1), got {ema_decay}")
        if not (reference_k > 0 and math.isfinite(reference_k)):
            raise ValueError(f"reference_k must be > 0, got {reference_k}")
        total = float(len(names)) if total is None else float(total)
        if not (total > 0 and math.isfinite(total)):
            raise ValueError(f"total (the sum of the weights) must be > 0, got {total}")
        static_weights = dict(static_weights or {})
        if mode == "static":
            unknown = sorted(set(static_weights) - set(names))
            if unknown:
                raise ValueError(f"static_weights names unknown losses {unknown}; the losses are {names}")
            for name, weight in static_weights.items():
                if not (weight >= 0 and math.isfinite(weight)):
                    raise ValueError(f"static weight of {name!r} must be >= 0, got {weight}")

        priors = dict(priors or {})
        unknown = sorted(set(priors) - set(names))
        if unknown:
            raise ValueError(f"priors name unknown losses {unknown}; the losses are {names}")
        for name, prior in priors.items():
            if not (prior > 0 and math.isfinite(prior)):
                raise ValueError(f"the prior of {name!r} must be > 0, got {prior}")

        self.names = names
        self.mode = mode
        self.priors = {name: float(priors.get(name, 1.0)) for name in names}
        self.temperature = float(temperature)
        self.window = window
        self.ema_decay = float(ema_decay)
        self.static_weights = {name: float(static_weights.get(name, 1.0)) for name in names}
        self.reference_k = float(reference_k)
        self.total = total

        self._step = 0  # calls so far
        # The last two completed windows' mean losses per name, oldest first.
        self._history: dict[str, list[float]] = {name: [] for name in names}
        self._epoch_sum = {name: 0.0 for name in names}
        self._epoch_steps = 0
        self._last: dict[str, float] = {}

    def __call__(self, losses: Mapping[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        """Combine this step's losses.

        Args:
            losses: a scalar tensor per name (with gradient), exactly the balancer's names.

        Returns:
            ``(objective, weights)``: the scalar tensor to back-propagate and ``w_m`` by name.

        Raises:
            ValueError: the names differ from the balancer's, a loss is not a scalar tensor,
                or a loss is not finite.
        """
        values = self._check(losses)
        rates = self.rates()
        if self.mode == "dynamic":
            weights = self._softmax_weights(rates)
            scales = self._scales(values)
        elif self.mode == "static":
            weights = dict(self.static_weights)
            scales = dict.fromkeys(self.names, 1.0)
        else:
            weights = self._reference_weights(values)
            scales = dict.fromkeys(self.names, 1.0)
            rates = dict.fromkeys(self.names, 1.0)

        # Python floats: the factors are numbers, outside the graph (the stop-gradient).
        objective = sum(weights[n] * scales[n] * losses[n].reshape(()) for n in self.names)
        assert isinstance(objective, Tensor)

        self._record(values)
        self._step += 1
        self._last = {}
        for prefix, table in (("w", weights), ("r", rates), ("s", scales)):
            self._last.update({f"{prefix}_{n}": float(table[n]) for n in self.names})
        return objective, weights

    def rates(self) -> dict[str, float]:
        """The current ``r_m = Lbar_m(t-1) / Lbar_m(t-2)``; 1 until two windows are complete."""
        rates = {}
        for name, history in self._history.items():
            if len(history) < 2 or history[-2] <= _ZERO:
                rates[name] = 1.0
            else:
                rates[name] = history[-1] / history[-2]
        return rates

    def end_epoch(self) -> None:
        """Close the current epoch (``epoch`` window); a no-op for the other windows."""
        if self.window != "epoch" or self._epoch_steps == 0:
            return
        for name in self.names:
            self._push(name, self._epoch_sum[name] / self._epoch_steps)
            self._epoch_sum[name] = 0.0
        self._epoch_steps = 0

    def log_record(self) -> dict[str, float]:
        """``w_<name>``, ``r_<name>`` and ``s_<name>`` of the last call (empty before one)."""
        return dict(self._last)

    def state_dict(self) -> dict[str, Any]:
        """Plain Python state; with :meth:`load_state_dict` a resumed run continues identically."""
        return {
            "names": list(self.names),
            "window": self.window,
            "step": self._step,
            "history": copy.deepcopy(self._history),
            "epoch_sum": dict(self._epoch_sum),
            "epoch_steps": self._epoch_steps,
            "last": dict(self._last),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`.

        Raises:
            ValueError: the state is of a balancer with other loss names or another window.
        """
        if list(state["names"]) != self.names:
            raise ValueError(f"balancer state is for losses {list(state['names'])}, this balancer has {self.names}")
        if state["window"] != self.window:
            raise ValueError(f"balancer state uses window {state['window']!r}, this balancer {self.window!r}")
        self._step = int(state["step"])
        self._history = {n: [float(v) for v in state["history"][n]] for n in self.names}
        self._epoch_sum = {n: float(state["epoch_sum"][n]) for n in self.names}
        self._epoch_steps = int(state["epoch_steps"])
        self._last = {k: float(v) for k, v in state["last"].items()}

    def _check(self, losses: Mapping[str, Tensor]) -> dict[str, float]:
        """Validate the losses; their detached values by name."""
        if set(losses) != set(self.names):
            raise ValueError(
                f"the balancer weighs {self.names} but got losses {list(losses)}; "
                "build it with the names of the enabled losses"
            )
        values = {}
        for name in self.names:
            loss = losses[name]
            if not isinstance(loss, Tensor) or loss.numel() != 1:
                raise ValueError(f"loss {name!r} must be a scalar tensor, got {loss!r}")
            value = float(loss.detach())
            if not math.isfinite(value):
                raise ValueError(f"loss {name!r} is {value}; the weights cannot be updated")
            values[name] = value
        return values

    def _softmax_weights(self, rates: Mapping[str, float]) -> dict[str, float]:
        """``w_m = K * p_m exp(r_m / T) / sum_j p_j exp(r_j / T)`` (eq. 17; priors ``p`` of 1: the paper's)."""
        top = max(rates.values())  # subtracted for stability; the softmax is unchanged
        exps = {n: self.priors[n] * math.exp((rates[n] - top) / self.temperature) for n in self.names}
        norm = sum(exps.values())
        return {n: self.total * exps[n] / norm for n in self.names}

    def _scales(self, values: Mapping[str, float]) -> dict[str, float]:
        """``s_m = max_j L_j / L_m`` (eq. 15), 1 for a loss that is zero."""
        top = max(values.values())
        return {n: top / values[n] if values[n] > _ZERO else 1.0 for n in self.names}

    def _reference_weights(self, values: Mapping[str, float]) -> dict[str, float]:
        """The published code's weights: 1 on the first step, then ``(k/M) * max_j L_j / L_m``."""
        if self._step == 0:
            return dict.fromkeys(self.names, 1.0)
        share = self.reference_k / len(self.names)
        return {n: share * s for n, s in self._scales(values).items()}

    def _record(self, values: Mapping[str, float]) -> None:
        """Add this step's unscaled losses to the window."""
        if self.window == "epoch":
            for name in self.names:
                self._epoch_sum[name] += values[name]
            self._epoch_steps += 1
            return
        for name in self.names:
            history = self._history[name]
            value = values[name]
            if self.window == "ema" and history:
                value = self.ema_decay * history[-1] + (1 - self.ema_decay) * value
            self._push(name, value)

    def _push(self, name: str, value: float) -> None:
        """Append a completed window's mean, keeping the last two."""
        history = self._history[name]
        history.append(value)
        del history[:-2]


__all__ = ["MODES", "WINDOWS", "LossBalancer"]
