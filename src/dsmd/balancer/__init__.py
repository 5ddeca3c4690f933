"""The loss balancer: weighs the distillation losses into one objective (ALGORITHM.md eq. 15-18)."""

from dsmd.balancer.balancer import MODES, WINDOWS, LossBalancer

__all__ = ["MODES", "WINDOWS", "LossBalancer"]
