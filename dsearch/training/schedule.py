"""The paper's learning-rate schedule as a pure function of the epoch (so a resumed run matches a straight one)."""

from __future__ import annotations

from typing import Sequence

from .config import TrainConfig


def lr_at(epoch: float, epochs: int, *, lr: float = 0.1, milestones: Sequence[float] = (0.5, 0.75),
          gamma: float = 0.1) -> float:
    """Learning rate at a (fractional, 0-based) epoch: lr × gamma^(milestones passed); milestones are fractions of epochs."""
    passed = sum(1 for m in milestones if epoch >= m * epochs - 1e-9)
    return lr * gamma ** passed


def schedule_lr(epoch: float, t: TrainConfig) -> float:
    """lr_at with a resolved TrainConfig's lr, milestones and gamma; milestones None (unresolved) are the
    paper's (0.5, 0.75), and an empty list is a constant lr."""
    milestones = (0.5, 0.75) if t.lr_milestones is None else t.lr_milestones
    return lr_at(epoch, t.epochs, lr=t.lr, milestones=milestones, gamma=t.lr_gamma)
