"""The loss balancer: weighs the distillation losses into one objective (docs/method.md eq. 15-18)."""

from dsmd.balancer.balancer import MODES, WINDOWS, LossBalancer

__all__ = ["MODES", "WINDOWS", "LossBalancer"]
