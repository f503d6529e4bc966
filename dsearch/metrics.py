"""Metric and objective names, defined once, and the Objective of a study.

Every module that reports, records, ranks or plots a metric uses these constants: a trial's
report from `fit`, the study's values and user attributes, the Pareto maths, the figures.
"""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict

from .strict import StrictModel

# What `fit` reports after each epoch (accuracies are fractions, losses nats, times seconds).
EPOCH = "epoch"
TRAIN_LOSS = "train_loss"
VAL_LOSS = "val_loss"
VAL_ACC = "val_acc"
LR = "lr"
EPOCH_TIME = "epoch_time"
IMAGES_PER_S = "images_per_s"
EPOCH_METRICS = (EPOCH, TRAIN_LOSS, VAL_LOSS, VAL_ACC, LR, EPOCH_TIME, IMAGES_PER_S)

# What a whole run measures (seconds, images per second of the training loop, bytes).
WALL_TIME_S = "wall_time_s"
TRAIN_TIME_S = "train_time_s"
PEAK_MEMORY_BYTES = "peak_memory_bytes"

# Closed-form costs of a network: trainable parameters, multiply-accumulates at batch 1, and the predicted peak
# bytes of one training step at the trial's batch, dtype and path (net/cost.count_memory).
PARAMS = "params"
MACS = "macs"
MEMORY = "memory"
MEASURED_PEAK_BYTES = "measured_peak_bytes"   # a trial's measured peak: CUDA's allocator, or a profiled CPU step
MEMORY_EFFICIENT = "memory_efficient"         # the path train.memory_efficient chose (bool), and why
MEMORY_WHY = "memory_why"

# What a study may optimise.
OBJECTIVE_METRICS = (VAL_ACC, VAL_LOSS, PARAMS, MACS, MEMORY)

MAXIMIZE = "maximize"
MINIMIZE = "minimize"


class Objective(StrictModel):
    """A metric and whether larger (maximize) or smaller (minimize) is better.

    `reference` is its hypervolume reference value in the metric's raw units (None: the default).
    """

    model_config = ConfigDict(frozen=True)

    metric: str
    direction: Literal["maximize", "minimize"]
    reference: float | None = None


DEFAULT_OBJECTIVES = (
    Objective(metric=VAL_ACC, direction=MAXIMIZE),
    Objective(metric=PARAMS, direction=MINIMIZE),
    Objective(metric=MACS, direction=MINIMIZE),
)
