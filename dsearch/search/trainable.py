"""What runs on a Ray worker: one trial is `fit` with a report (and checkpoint) after every epoch.

A trial that fails raises `TrialError` (its kind, message and traceback), so Ray marks it ERROR and
the driver records it as FAIL; a result without the scheduler's metric would end the whole run.
"""

from __future__ import annotations

import os
import socket
import traceback
from pathlib import Path
from typing import Any

from ..metrics import EPOCH_TIME, MACS, PARAMS, PEAK_MEMORY_BYTES, TRAIN_TIME_S, VAL_ACC
from ..training.config import RunConfig
from .reports import (CHECKPOINT_FILE, NODE, NODE_ID, NODE_IP, PRECISION, PRECISION_WHY, RESUME_FROM,
                      RESUMED_CURVE, RESUMED_TIMES, WORKER_PID)

# Error kinds, the `error_kind` user attribute of a FAIL(error) trial.
DIVERGED, OUT_OF_MEMORY, EXCEPTION, WORKER_DIED = "diverged", "out_of_memory", "exception", "worker_died"


class TrialError(Exception):
    """A trial's failure, as raised on the worker and recorded by the driver."""

    def __init__(self, kind: str, message: str, traceback_text: str) -> None:
        super().__init__(kind, message, traceback_text)
        self.kind, self.message, self.traceback_text = kind, message, traceback_text

    def __str__(self) -> str:
        return f"{self.kind}: {self.message}"


def error_kind(exc: BaseException) -> str:
    """diverged (a NaN/inf loss), out_of_memory (device or host allocation), or exception."""
    from ..training.loop import TrainingDiverged

    if isinstance(exc, TrainingDiverged):
        return DIVERGED
    text = str(exc).lower()
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError" or "out of memory" in text:
        return OUT_OF_MEMORY
    return EXCEPTION


def train_trial(config: dict, data: Any = None) -> None:
    """Ray Tune function trainable: fit() with a report after every epoch (+ checkpoint)."""
    from ray import tune

    try:
        _train(tune, config, data)
    except Exception as e:
        raise TrialError(error_kind(e), f"{type(e).__name__}: {e}", traceback.format_exc()) from None


def _train(tune: Any, config: dict, data: Any) -> None:
    import ray

    from ..training.checkpoint import load_checkpoint
    from ..training.loop import fit, peak_memory, resolve_device
    from .artifacts import copy_to_local

    run = RunConfig.model_validate(config["run"])
    node = {NODE: socket.gethostname(), NODE_IP: ray.util.get_node_ip_address(),
            NODE_ID: ray.get_runtime_context().get_node_id(), WORKER_PID: os.getpid()}
    check_data_here(data, node)
    fixed = {PARAMS: config[PARAMS], MACS: config[MACS], **node}
    # fit() writes here each epoch; Ray copies it to the experiment's storage with each report.
    work = Path(tune.get_context().get_trial_dir()) / "latest"
    ckpt_path = work / CHECKPOINT_FILE
    resumed: dict[str, Any] = {}
    if config.get(RESUME_FROM):
        copy_to_local(config[RESUME_FROM], ckpt_path)     # a local path or the object store's URI
        # The epochs already done are reported once, so the driver's curve is whole.
        history = load_checkpoint(ckpt_path)["history"]
        resumed = {RESUMED_CURVE: [h[VAL_ACC] for h in history], RESUMED_TIMES: [h.get(EPOCH_TIME) for h in history]}
    train_time = 0.0
    device = resolve_device(run.train)

    def report(metrics: dict) -> None:
        nonlocal train_time, resumed
        train_time += metrics.get(EPOCH_TIME, 0.0)
        out = {**metrics, **fixed, **resumed, TRAIN_TIME_S: train_time, PEAK_MEMORY_BYTES: peak_memory(device)}
        resumed = {}
        tune.report(out, checkpoint=tune.Checkpoint.from_directory(str(work)))

    def started(precision: dict) -> None:
        fixed.update({PRECISION: precision[PRECISION], PRECISION_WHY: precision[PRECISION_WHY]})

    fit(run, data, callback=report, checkpoint_path=ckpt_path, resume=bool(config.get(RESUME_FROM)),
        on_start=started)


def check_data_here(data: Any, node: dict) -> None:
    """A folder dataset's files must be at the same path on every node: say which node lacks which path."""
    missing = data.missing_files() if hasattr(data, "missing_files") else None
    if missing:
        raise FileNotFoundError(f"node {node[NODE]} ({node[NODE_IP]}) has no {missing}: a folder dataset must be "
                                "at the same path on every node of the cluster")
