"""The learning-rate schedule as a pure function of (epoch, step), so a resumed run matches a straight one.

The paper's step schedule, or cosine to 0 at the last epoch; either after an optional linear warm-up.
"""

from __future__ import annotations

import math
from typing import Sequence

from .config import TrainConfig


def lr_at(epoch: float, epochs: int, *, lr: float = 0.1, milestones: Sequence[float] = (0.5, 0.75),
          gamma: float = 0.1, schedule: str = "step", warmup_epochs: float = 0.0,
          warmup_start: float | None = None) -> float:
    """Learning rate at a (fractional, 0-based) epoch; milestones are fractions of epochs.

    Warm-up: linear from warmup_start (None: lr / 10) to lr over the first warmup_epochs. Then step:
    lr × gamma^(milestones passed); cosine: lr · ½(1 + cos(π·p)), p the fraction of the epochs after
    warm-up that have passed (0 at the end of warm-up, 1 at `epochs`).
    """
    if epoch < warmup_epochs:
        start = lr / 10 if warmup_start is None else warmup_start
        return start + (lr - start) * epoch / warmup_epochs
    if schedule == "cosine":
        p = min(max((epoch - warmup_epochs) / (epochs - warmup_epochs), 0.0), 1.0)
        return lr * 0.5 * (1 + math.cos(math.pi * p))
    passed = sum(1 for m in milestones if epoch >= m * epochs - 1e-9)
    return lr * gamma ** passed


def schedule_lr(epoch: int, t: TrainConfig, step: int = 0, steps_per_epoch: int = 1) -> float:
    """The lr of step `step` (0-based) of epoch `epoch` (0-based) under a resolved TrainConfig.

    Warm-up and cosine move per step (progress epoch + step / steps_per_epoch); the step schedule
    changes the lr at epoch starts only, as the paper's code. milestones None (unresolved) are the
    paper's (0.5, 0.75), and an empty list is a constant lr.
    """
    progress = epoch + step / steps_per_epoch
    milestones = (0.5, 0.75) if t.lr_milestones is None else t.lr_milestones
    if t.lr_schedule == "step" and progress >= t.warmup_epochs:
        return lr_at(epoch, t.epochs, lr=t.lr, milestones=milestones, gamma=t.lr_gamma)
    return lr_at(progress, t.epochs, lr=t.lr, milestones=milestones, gamma=t.lr_gamma, schedule=t.lr_schedule,
                 warmup_epochs=t.warmup_epochs, warmup_start=t.warmup_start)
