"""MLflow tracking of a search, written by the driver alone and never in the search's way.

The engine tells a `Tracker` what happens (a trial starts, reports an epoch, ends; a checkpoint; a rejected sample).
`MlflowTracker` queues each event and a background thread sends it (mlflow_runs.MlflowRecord: a parent run per study,
a child run per line of trials), so a slow or dead tracking server never slows the search: the first call that fails
prints one warning line and the tracker drops everything after it. Nothing is lost for good: the study is the record,
and the next `dsearch run` of the study (or `dsearch pareto`) sends what MLflow misses. Samples rejected before
training (invalid, over_budget) get no run; they are counted on the parent (`rejected_<reason>`).
"""

from __future__ import annotations

import queue
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from ..errors import UserError
from . import record as st
from .mlflow_runs import CHECKPOINT_TAG, FRONT_TAG, MlflowRecord, describe_error

if TYPE_CHECKING:
    from optuna.trial import FrozenTrial

    from .schema import SearchSpace

TRACKING_ATTR = "dsearch:mlflow"   # study system attr: {"uri", "experiment"} of the last run that tracked it
CLOSE_TIMEOUT_S = 20.0             # at the end of a run, at most this long to send what is queued


class Tracker:
    """What the engine tells a tracker; this one does nothing (no tracking configured, or the replay)."""

    def started(self, number: int, line: int, params: dict[str, Any], run: dict[str, Any],
                costs: dict[str, float]) -> None:
        """Trial `number` of line `line` starts: its sampled params, resolved run config and closed-form costs."""

    def epoch(self, line: int, result: dict[str, Any]) -> None:
        """A report with a new epoch (metrics named in metrics.py)."""

    def ended(self, number: int, line: int, state: str, reason: str | None = None,
              message: str | None = None) -> None:
        """Trial `number` was told COMPLETE, PRUNED or FAIL (with its fail reason and message)."""

    def checkpoint(self, line: int, uri: str) -> None:
        """The line's latest checkpoint is at `uri`."""

    def rejected(self, reason: str) -> None:
        """A sample was rejected before training (invalid, over_budget, not_in_table)."""

    def close(self, status: str, summary: dict[str, Any] | None = None) -> None:
        """The run ended: FINISHED, KILLED (interrupted) or FAILED; `summary` as record.summarize gives it."""


def _say_warning(line: str) -> None:
    print(f"dsearch: warning: {line}", file=sys.stderr, flush=True)


class MlflowTracker(Tracker):
    """Sends a search's events to MLflow from a background thread (see the module doc).

    `trials` is the study as it is when the run starts (after interrupted trials were requeued): what MLflow
    misses of it is sent first.
    """

    def __init__(self, record: MlflowRecord, trials: "list[FrozenTrial]",
                 warn: Callable[[str], None] = _say_warning) -> None:
        self.record, self.warn = record, warn
        self.broken: str | None = None          # why tracking stopped for this run
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._work, args=(trials,), name="dsearch-mlflow", daemon=True)
        self._thread.start()

    def _put(self, job: Callable[..., Any], *args: Any) -> None:
        if self.broken is None:
            self._queue.put((job, args))

    def started(self, number, line, params, run, costs) -> None:
        self._put(self.record.started, number, line, dict(params), run, dict(costs))

    def epoch(self, line, result) -> None:
        self._put(self.record.epoch, line, dict(result), int(time.time() * 1000))

    def ended(self, number, line, state, reason=None, message=None) -> None:
        self._put(self.record.ended, number, line, state, reason, message)

    def checkpoint(self, line, uri) -> None:
        self._put(self.record.tag, line, CHECKPOINT_TAG, uri)

    def rejected(self, reason) -> None:
        counts = self.record.counts
        counts[reason] = counts.get(reason, 0) + 1

    def close(self, status: str, summary: dict[str, Any] | None = None, timeout: float = CLOSE_TIMEOUT_S) -> None:
        """Send what is queued (at most `timeout` seconds), then end the open child runs (interrupted: continued
        by the next run) and the parent run with `status`."""
        self._put(self.record.close, status, summary or {})
        self._queue.put(None)
        self._thread.join(timeout)
        if self._thread.is_alive() and self.broken is None:
            self.broken = "still sending at the end of the run"
            self.warn(f"MLflow tracking at {self.record.uri}: still sending after {timeout:.0f} s, left behind; "
                      "the next `dsearch run` or `dsearch pareto` of this study sends what MLflow misses")

    def _work(self, trials: "list[FrozenTrial]") -> None:
        try:
            self.record.open()
            self.record.sync(trials)
        except Exception as e:
            self._fail(e)
        while True:
            item = self._queue.get()
            if item is None:
                return
            if self.broken is not None:
                continue
            job, args = item
            try:
                job(*args)
            except Exception as e:
                self._fail(e)

    def _fail(self, e: BaseException) -> None:
        if self.broken is None:
            self.broken = describe_error(e)
            self.warn(f"MLflow tracking at {self.record.uri} failed ({self.broken}); the search goes on untracked, "
                      "and the next `dsearch run` or `dsearch pareto` of this study sends what MLflow misses")


def tracking_of(study: Any) -> dict[str, str] | None:
    """The {"uri", "experiment"} a run of the study last tracked to (TRACKING_ATTR), None if none did."""
    value = study._storage.get_study_system_attrs(study._study_id).get(TRACKING_ATTR)
    return value if isinstance(value, dict) and value.get("uri") else None


def record_tracking(study: Any, uri: str, experiment: str) -> None:
    """Remember in the study where its search is tracked (for `dsearch pareto` and the next run)."""
    study._storage.set_study_system_attr(study._study_id, TRACKING_ATTR, {"uri": uri, "experiment": experiment})


def check_tracking(space: "SearchSpace") -> None:
    """UserError before anything starts if the space is tracked to MLflow and the mlflow client isn't installed."""
    import importlib.util

    if space.tracking.mlflow and importlib.util.find_spec("mlflow") is None:
        raise UserError(f"tracking.mlflow {space.tracking.mlflow}: MLflow is not installed; "
                        "pip install 'dsearch[mlflow]' (or drop --mlflow / tracking.mlflow)")


def start_tracking(space: "SearchSpace", study: Any, storage_label: str,
                   say: Callable[[str], None] = print) -> Tracker:
    """The run's tracker: MLflow's if the space names a tracking URI (recorded in the study), else one that does
    nothing. Returns at once: connecting, and sending what MLflow misses of the study, happen in its thread."""
    from .io import dump_space
    from .storage import display_url

    if not space.tracking.mlflow:
        return Tracker()
    uri, experiment = space.tracking.mlflow, space.tracking.experiment or space.name
    record_tracking(study, uri, experiment)
    say(f"tracking to MLflow at {uri}, experiment {experiment!r} (a parent run for the study, a child per trial)")
    record = MlflowRecord(uri, experiment, space.name, dump_space(space), display_url(storage_label))
    return MlflowTracker(record, study.get_trials(deepcopy=False))


def end_tracking(tracker: Tracker, study: Any, t0: float, interrupted: bool, failed: bool) -> None:
    """Close the run's tracker: the parent run ends KILLED (interrupted), FAILED (every trial failed) or FINISHED,
    with the study's counts. Never raises."""
    if type(tracker) is Tracker:
        return
    try:
        summary = st.summarize(study, time.time() - t0)
    except Exception:             # the database stopped answering: the counts are left out
        summary = {}
    tracker.close("KILLED" if interrupted else "FAILED" if failed else "FINISHED", summary)


def publish_front(study: Any, space: "SearchSpace | None", files: list[Path], front_trials: list[int],
                  uri: str | None = None, storage_label: str = "", say: Callable[[str], None] = print) -> bool:
    """`dsearch pareto`'s part: if the study is tracked (`uri`, else the run's recorded tracking, else the space's),
    send what MLflow misses of the study, attach `files` to its parent run and tag the front's child runs.
    A failure is one warning line; returns whether it was sent."""
    from .io import dump_space
    from .storage import display_url

    recorded = tracking_of(study) or {}
    uri = uri or recorded.get("uri") or (space.tracking.mlflow if space is not None else None)
    if not uri:
        return False
    experiment = recorded.get("experiment") or (space.tracking.experiment if space is not None else None) \
        or study.study_name
    record = MlflowRecord(uri, experiment, study.study_name, dump_space(space) if space is not None else "",
                          display_url(storage_label) if storage_label else "")
    try:
        record.open(reopen=False)
        trials = study.get_trials(deepcopy=False)
        sent = record.sync(trials)
        record.publish_front(files, front_trials, trials)
    except Exception as e:
        _say_warning(f"MLflow tracking at {uri} failed ({describe_error(e)}); the front was not attached")
        return False
    say(f"MLflow: {', '.join(f.name for f in files)} attached to run {record.parent} of experiment {experiment!r}, "
        f"{len(front_trials)} front trials tagged {FRONT_TAG}=true"
        + (f", {sent} trials' runs brought up to date" if sent else ""))
    return True
