"""What a trial reports to the driver after each epoch, whichever executor runs it: the keys beyond `fit`'s
metrics, and how a report folds into the trial's curve. Shared by the engine and both executors (no Ray here).
"""

from __future__ import annotations

from ..metrics import EPOCH, EPOCH_TIME, VAL_ACC

CHECKPOINT_FILE = "checkpoint.pt"
RESUME_FROM = "resume_from"          # Ray config key: the checkpoint an interrupted trial continues from
RESUMED_CURVE = "resumed_curve"      # report key: val_acc of the epochs the checkpoint already holds
RESUMED_TIMES = "resumed_times"      # report key: their epoch times (seconds)
# Report keys (and user attributes): where the trial runs, as a host name, the Ray node's IP and id, and a pid.
NODE, NODE_IP, NODE_ID, WORKER_PID = "node", "node_ip", "node_id", "worker_pid"
PRECISION, PRECISION_WHY = "precision", "precision_why"     # keys of Precision.record()


def extend_curve(curve: list[float], result: dict | None, times: list[float] | None = None) -> bool:
    """Fold a report into a trial's val_acc curve (and its epoch times, seconds), in place; True if it is a new
    epoch.

    A resumed trial's first report also brings the epochs its checkpoint holds (RESUMED_CURVE, RESUMED_TIMES).
    """
    if not result or VAL_ACC not in result:
        return False
    if RESUMED_CURVE in result and not curve:
        curve.extend(result[RESUMED_CURVE])
        if times is not None:
            times.extend(result.get(RESUMED_TIMES) or [None] * len(result[RESUMED_CURVE]))
    if result.get(EPOCH, 0) <= len(curve):
        return False
    curve.append(result[VAL_ACC])
    if times is not None:
        times.append(result.get(EPOCH_TIME))
    return True
