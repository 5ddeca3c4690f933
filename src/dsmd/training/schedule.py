"""The paper's step schedule: the learning rate is multiplied by ``lr_decay`` after given epochs."""

from __future__ import annotations


def learning_rate(base_lr: float, epoch: int, decay_epochs: list[int], decay: float) -> float:
    """Learning rate for 0-based ``epoch``: ``base_lr * decay ** #{e in decay_epochs : e <= epoch}``.

    With ``decay_epochs=[10]`` epochs 0-9 (the first ten) use ``base_lr`` and the rest
    ``0.1 * base_lr``, as in the paper.
    """
    return base_lr * decay ** sum(1 for e in decay_epochs if e <= epoch)
