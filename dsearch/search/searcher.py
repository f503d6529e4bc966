"""The driver's side of a trial: propose it from the Optuna study (ask), record what happened (tell).

The driver is the only writer of the study. Each Ray trial is one Optuna trial: asked in
`StudySearcher.suggest`, told COMPLETE / PRUNED / FAIL when Tune is done with it. Invalid and
over-budget samples are told FAIL before any Ray trial exists, so they are never trained. A trial
that raised is told FAIL(error) with its kind and the path of its traceback in the study folder.
An interrupted run tells nothing about the trials it stopped: they stay RUNNING, and the caller
marks them FAIL(interrupted) and queues them again (record.fail_interrupted).
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from ray.tune import Callback
from ray.tune.search import Searcher

from ..errors import UserError
from ..metrics import (EPOCH, IMAGES_PER_S, MACS, PARAMS, PEAK_MEMORY_BYTES, TRAIN_TIME_S, VAL_ACC, VAL_LOSS,
                       WALL_TIME_S)
from . import artifacts
from . import record as st
from .sampling import check_constraints, input_size, resolve, suggest
from .trainable import (CHECKPOINT_FILE, EXCEPTION, NODE, NODE_ID, NODE_IP, PRECISION, PRECISION_WHY,
                        RESUME_FROM, WORKER_DIED, WORKER_PID, TrialError, extend_curve)

if TYPE_CHECKING:
    import optuna

    from .schema import SearchSpace

LINE = "line"                # Ray config key: the first trial of the line a trial continues (rung records)
REJECTION_CAP = 10          # × num_samples: samples rejected before training past this end the run
TRIALS_DIR = "trials"        # studies/NAME/trials/<number>/ holds what the study keeps per trial
TRACEBACK_FILE = "traceback.txt"


class StudySearcher(Searcher):
    """Proposes trials from the Optuna study (ask) and records their outcome (tell)."""

    def __init__(self, space: "SearchSpace", study: "optuna.Study", study_dir: Path, num_threads: int | None,
                 interrupted: Callable[[], bool] = lambda: False,
                 storage: artifacts.TrialStorage | None = None) -> None:
        super().__init__(metric=VAL_ACC, mode="max")
        self.space, self.study, self.num_threads = space, study, num_threads
        self.study_dir = Path(study_dir).resolve()
        self.storage = storage or artifacts.TrialStorage.of_study(self.study_dir)
        self.interrupted = interrupted
        self.live: dict[str, dict[str, Any]] = {}     # Ray trial id → optuna trial info
        self.errored: dict[str, dict[str, Any]] = {}  # Ray trial id → info, until its error is read
        self.rejected = st.rejected_trials(study)      # by reason, this study's whole life
        self.infeasible: str | None = None                              # why the run stopped sampling
        self.trained = 0                               # this run: trials told COMPLETE / PRUNED ...
        self.failed: list[tuple[int, str]] = []        # ... and FAIL(error), with their messages

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return True

    # The study is the checkpoint: Ray's own searcher state is not needed to resume, and the
    # study's storage engine can't be pickled (Tune pickles its searcher into the experiment dir).
    def save(self, checkpoint_path: str) -> None:
        pass

    def restore(self, checkpoint_path: str) -> None:
        pass

    def __getstate__(self) -> dict:
        # The live optuna.Trial objects hold the study too; the callable may be a closure.
        skip = ("study", "live", "errored", "interrupted", "storage")
        return {**{k: v for k, v in self.__dict__.items() if k not in skip}, "live": {}, "errored": {}}

    def suggest(self, trial_id: str) -> dict | str | None:
        while True:
            if self.interrupted():
                return None
            if st.counted_trials(self.study) >= self.space.budget.num_samples:
                return Searcher.FINISHED
            if sum(self.rejected.values()) >= REJECTION_CAP * self.space.budget.num_samples:
                self.infeasible = self._infeasible()
                return Searcher.FINISHED
            trial = self.study.ask()
            sampled = suggest(self.space, trial)
            proposal = self._propose(trial, sampled)
            if proposal is not None:
                self.live[trial_id] = {"trial": trial, "start": time.time(), "curve": [], "last": {},
                                       PARAMS: proposal[PARAMS], MACS: proposal[MACS]}
                return proposal

    def _infeasible(self) -> str:
        """The error of a space the sampler can rarely draw a trainable trial from."""
        n = sum(self.rejected.values())
        sampled = n + st.counted_trials(self.study)
        why = ", ".join(f"{k} {v}" for k, v in self.rejected.items() if v)
        return (f"{n} of the {sampled} configurations sampled ({n / max(sampled, 1):.0%}) were rejected "
                f"before training ({why}), past the cap of {REJECTION_CAP} × num_samples; widen the constraints "
                "or narrow params to the feasible part of the space")

    def _continued(self, trial: Any) -> Any | None:
        """The interrupted trial this one continues (its `requeued_from`), if any."""
        number = trial.user_attrs.get(st.REQUEUED_FROM)
        return None if number is None else st.find_trial(self.study, number)

    def _propose(self, trial: Any, sampled: dict) -> dict | None:
        """A Ray config for a valid, within-budget sample; else the trial is told FAIL (None)."""
        from ..net.cost import count_macs, count_params

        try:
            run = resolve(self.space, trial.params)
            if "train.seed" not in self.space.fixed and "train.seed" not in sampled:
                run.train.seed = trial.number
            if self.num_threads:
                run.train.num_threads = self.num_threads
            params = count_params(run.model)
            macs = count_macs(run.model, input_size(run.data))
        except UserError as e:
            st.tell_failed(self.study, trial, "invalid", str(e))
            self.rejected["invalid"] += 1
            return None
        old = self._continued(trial)
        if old is not None:
            run.train.seed = old.user_attrs.get(st.SEED, run.train.seed)   # same draws as the run it continues
        attrs = {st.CONFIG: json.dumps(run.model_dump(mode="json")), st.SEED: run.train.seed,
                 st.MAX_EPOCHS: self.space.budget.max_epochs, PARAMS: params, MACS: macs}
        over = check_constraints(self.space, run)
        if over:
            st.tell_failed(self.study, trial, "over_budget", over, attrs)
            self.rejected["over_budget"] += 1
            return None
        line = st.lineages(self.study.get_trials(deepcopy=False))[old.number] if old is not None else trial.number
        proposal = {"run": run.model_dump(mode="json"), PARAMS: params, MACS: macs, "trial": trial.number,
                    LINE: line}
        checkpoint = old.user_attrs.get(st.CHECKPOINT) if old is not None else None
        if checkpoint and artifacts.exists(checkpoint):
            proposal[RESUME_FROM] = attrs[st.CHECKPOINT] = checkpoint
        st.set_attrs(trial, attrs)
        return proposal

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        info = self.live.get(trial_id)
        if info is not None and self._take(info, result):
            attrs = {st.CURVE: info["curve"], st.EPOCHS_TRAINED: result.get(EPOCH, 0)}
            if not info.get("where_saved"):
                attrs.update(info["where"])
                info["where_saved"] = True
            st.set_attrs(info["trial"], attrs)

    @staticmethod
    def _take(info: dict, result: dict | None) -> bool:
        """Fold one report into the trial's record; True if it was a new epoch."""
        if not extend_curve(info["curve"], result):
            return False
        info["last"] = result
        # Where and how it runs, from its first report: a trial stopped at that report is told without
        # on_trial_result.
        info.setdefault("where", {k: result.get(k) for k in (NODE, NODE_IP, NODE_ID, WORKER_PID, PRECISION,
                                                              PRECISION_WHY)})
        return True

    def _attrs(self, info: dict) -> dict[str, Any]:
        last = info["last"]
        return {**info.get("where", {}), st.CURVE: info["curve"], WALL_TIME_S: time.time() - info["start"],
                st.EPOCHS_TRAINED: last.get(EPOCH, 0), TRAIN_TIME_S: last.get(TRAIN_TIME_S, 0.0),
                IMAGES_PER_S: last.get(IMAGES_PER_S, 0.0), PEAK_MEMORY_BYTES: last.get(PEAK_MEMORY_BYTES, 0)}

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        # Tune passes the report that made ASHA stop the trial only here, not to on_trial_result.
        info = self.live.pop(trial_id, None)
        if info is None:
            return
        self._take(info, result)
        if self.interrupted() and info["last"].get(EPOCH, 0) < self.space.budget.max_epochs:
            return      # left RUNNING: fail_interrupted queues it again, to continue from its checkpoint
        if error:
            # Tune calls the callbacks' on_trial_error right after this, with the trial that holds the error.
            self.errored[trial_id] = info
            return
        metrics = {VAL_ACC: info["last"].get(VAL_ACC, float("nan")), PARAMS: info[PARAMS], MACS: info[MACS],
                   VAL_LOSS: info["last"].get(VAL_LOSS, float("nan"))}
        st.tell_finished(self.study, info["trial"], metrics, int(info["last"].get(EPOCH, 0)),
                         self.space.budget.max_epochs, self._attrs(info))
        self.trained += 1

    def record_error(self, trial_id: str, error: BaseException | None, fallback_text: str | None = None) -> None:
        """FAIL(error) a trial that raised or whose worker died, its traceback saved in the study folder."""
        info = self.errored.pop(trial_id, None)
        if info is None:
            return
        kind, message, text = describe_failure(error, fallback_text)
        number = info["trial"].number
        path = self.study_dir / TRIALS_DIR / str(number) / TRACEBACK_FILE
        attrs = self._attrs(info)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            where = f"traceback: {path}"
            attrs[st.TRACEBACK] = str(path)
        except OSError as e:
            where = f"the traceback could not be saved to {path} ({e.strerror})"
        st.tell_failed(self.study, info["trial"], "error", f"{message[:1500]} ({where})",
                       {**attrs, st.ERROR_KIND: kind})
        self.failed.append((number, message))

    def flush_errors(self) -> None:
        """Record errored trials whose error event never came (a Tune that skipped on_trial_error)."""
        for trial_id in list(self.errored):
            self.record_error(trial_id, None)

    def record_checkpoint(self, trial_id: str, path: str) -> None:
        info = self.live.get(trial_id)
        if info is not None:
            st.set_attrs(info["trial"], {st.CHECKPOINT: self.storage.locate(f"{path.rstrip('/')}/{CHECKPOINT_FILE}")})


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
