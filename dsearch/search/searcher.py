"""Ray Tune's side of the search engine (engine.py): a Tune Searcher that asks the engine for trials and
reports their end, and the Tune callbacks that forward checkpoints, errors and progress.

Each Ray trial is one Optuna trial, asked in `StudySearcher.suggest`. A trial that raised is told
FAIL(error) with its kind and the path of its traceback in the study folder. An interrupted run tells
nothing about the trials it stopped (but those a rung stopped: PRUNED, as in a run that goes on): they stay
RUNNING, and the caller marks them FAIL(interrupted) and queues them again (record.fail_interrupted).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ray.tune import Callback
from ray.tune.search import Searcher

from ..metrics import VAL_ACC
from .engine import FINISHED, Engine
from .trainable import EXCEPTION, WORKER_DIED, TrialError


class StudySearcher(Searcher):
    """Ray Tune's side of the engine: Tune asks for trials here and reports their end; the engine decides."""

    def __init__(self, engine: Engine) -> None:
        super().__init__(metric=VAL_ACC, mode="max")
        self.engine = engine
        self.numbers: dict[str, int] = {}             # Ray trial id → study trial number
        self.errored: dict[str, dict[str, Any]] = {}  # Ray trial id → engine record, until its error is read

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return True

    # The study is the checkpoint: Ray's own searcher state is not needed to resume, and the
    # study's storage engine can't be pickled (Tune pickles its searcher into the experiment dir).
    def save(self, checkpoint_path: str) -> None:
        pass

    def restore(self, checkpoint_path: str) -> None:
        pass

    def __getstate__(self) -> dict:
        return {"numbers": {}, "errored": {}}       # the engine holds the study and live optuna.Trial objects

    def suggest(self, trial_id: str) -> dict | str | None:
        proposal = self.engine.ask()
        if isinstance(proposal, dict):
            self.numbers[trial_id] = proposal["trial"]
        return Searcher.FINISHED if proposal == FINISHED else proposal

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self.numbers:
            self.engine.observe(self.numbers[trial_id], result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        # Tune passes the report that made the scheduler stop the trial only here, not to on_trial_result.
        number = self.numbers.pop(trial_id, None)
        if number is None:
            return
        if error:
            # Tune calls the callbacks' on_trial_error right after this, with the trial that holds the error.
            info = self.engine.hold(number, result)
            if info is not None:
                self.errored[trial_id] = info
            return
        self.engine.complete(number, result)

    def record_error(self, trial_id: str, error: BaseException | None, fallback_text: str | None = None) -> None:
        """FAIL(error) a trial that raised or whose worker died, its traceback saved in the study folder."""
        info = self.errored.pop(trial_id, None)
        if info is not None:
            self.engine.fail(info, *describe_failure(error, fallback_text))

    def flush_errors(self) -> None:
        """Record errored trials whose error event never came (a Tune that skipped on_trial_error)."""
        for trial_id in list(self.errored):
            self.record_error(trial_id, None)

    def record_checkpoint(self, trial_id: str, path: str) -> None:
        if trial_id in self.numbers:
            self.engine.record_checkpoint(self.numbers[trial_id], path)


def describe_failure(error: BaseException | None, fallback_text: str | None = None) -> tuple[str, str, str]:
    """(kind, one-line message, full text) of what a failed trial raised, through Ray's wrappers."""
    cause = getattr(error, "cause", None) or error
    if isinstance(cause, TrialError):
        return cause.kind, cause.message, cause.traceback_text
    if error is not None and type(error).__name__ in ("RayActorError", "ActorDiedError", "ActorUnavailableError"):
        # A worker that could not start (an import error on its node) carries the Python error in its text.
        raised = re.findall(r"^(?:\w+\.)*\w+(?:Error|Exception): .*$", str(error), flags=re.M)
        if raised:
            return WORKER_DIED, f"the trial's Ray worker failed: {raised[-1].strip()}", str(error)
        return (WORKER_DIED, "the trial's Ray worker process died (killed, or out of host memory)",
                str(error))
    if error is None:
        text = fallback_text or "Ray reported the trial as failed without an error"
        return EXCEPTION, text.strip().splitlines()[-1] if text.strip() else text, text
    return EXCEPTION, f"{type(cause).__name__}: {cause}".splitlines()[0], str(error)


def read_trial_error(trial: Any) -> tuple[BaseException | None, str | None]:
    """The exception Tune pickled for a failed trial, and its text error file, from the driver's disk."""
    from ray import cloudpickle

    error = text = None
    try:
        if trial.pickled_error_file:
            with open(trial.pickled_error_file, "rb") as f:
                error = cloudpickle.load(f)
    except Exception:
        error = None
    try:
        if trial.error_file:
            text = Path(trial.error_file).read_text()
    except OSError:
        text = None
    return error, text


class Events(Callback):
    """Forwards Tune's events to the live view, and checkpoints and errors to the searcher."""

    def __init__(self, searcher: StudySearcher, view: Any) -> None:
        self.searcher, self.view = searcher, view

    def __getstate__(self) -> dict:
        return {}

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self.view.started(trial.trial_id, trial.config.get("trial"), trial.config)

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        self.view.result(trial.trial_id, result)

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info) -> None:
        self.searcher.record_checkpoint(trial.trial_id, checkpoint.path)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self.view.finished(trial.trial_id, "done")

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self.searcher.record_error(trial.trial_id, *read_trial_error(trial))
        self.view.finished(trial.trial_id, "error")
