"""The search engine: what a search decides between "ask" and "tell", whatever runs the trials.

ask (the study's sampler, or a method's proposer) → price before training (validity, params, MACs,
constraints, an executor's own admission check; rejected samples are told FAIL and never trained) →
the trial trains on an executor, which hands each epoch's report to `decide` (the rung rule: go on or
stop) and `observe` (the record) → `complete` or `fail` tells the study. Counts are kept here, not read
back from the whole study at each ask.

Two executors drive one `Engine` the same way: Ray Tune (runner.py, searcher.py: real trials on a
cluster) and the replay (replay.py: recorded learning curves under a simulated clock). Nothing here
imports Ray or knows which executor runs it. Only the driver process writes the study.

If the study's database stops answering past its retries (storage.DatabaseUnreachable), the engine keeps the
error in `unreachable` and writes nothing more: `ask` gives no trial, and every trial it was training stays
RUNNING, queued again by the next run. The executor ends the run and raises the error.
"""

from __future__ import annotations

import functools
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Protocol

from ..errors import UserError
from ..metrics import (EPOCH, IMAGES_PER_S, MEASURED_PEAK_BYTES, MEMORY_EFFICIENT, MEMORY_WHY, PEAK_MEMORY_BYTES,
                       TRAIN_TIME_S, VAL_ACC, VAL_LOSS, WALL_TIME_S)
from . import artifacts
from . import record as st
from .rungs import Rungs
from .pricing import over_budget, price
from .sampling import resolve, suggest
from .schema import KNOWN_BEFORE_TRAINING as COSTS
from .reports import (CHECKPOINT_FILE, NODE, NODE_ID, NODE_IP, PRECISION, PRECISION_WHY, RESUME_FROM,
                      WORKER_PID, extend_curve)
from .storage import DatabaseUnreachable
from .tracking import Tracker

if TYPE_CHECKING:
    import optuna

    from ..training.config import RunConfig
    from .schema import SearchSpace

FINISHED = "FINISHED"        # ask(): num_samples are counted (Ray's Searcher.FINISHED has the same value)
LINE = "line"                # proposal key: the first trial of the line a trial continues (rung records)
REJECTION_CAP = 10           # × num_samples: samples rejected before training past this end the run
TRIALS_DIR = "trials"        # studies/NAME/trials/<number>/ holds what the study keeps per trial
TRACEBACK_FILE = "traceback.txt"
WHERE = (NODE, NODE_IP, NODE_ID, WORKER_PID, PRECISION, PRECISION_WHY)   # a trial's first report: where, how


class RungRule(Protocol):
    """Who goes on at a rung: `on_report` after each new epoch of a line (False: stop it), `rebuild` from the
    curves of trials that ran before (Rungs in rungs.py; an anchor may wrap another library's scheduler)."""

    def on_report(self, line: int, curve: list[float], fixed: dict[str, float]) -> bool: ...
    def rebuild(self, trials: Any) -> None: ...


class Proposer(Protocol):
    """Where trials come from: `ask` returns a new trial of the study; `told` hears how each one ended
    (the study's own sampler needs nothing: the study is its record)."""

    def ask(self, study: "optuna.Study") -> "optuna.Trial": ...
    def told(self, number: int, state: str, metrics: dict[str, float]) -> None: ...


class StudySampler:
    """The default proposer: the study's own sampler."""

    def ask(self, study: "optuna.Study") -> "optuna.Trial":
        return study.ask()

    def told(self, number: int, state: str, metrics: dict[str, float]) -> None:
        pass


def space_rungs(space: "SearchSpace") -> Rungs:
    """The space's own rung rule: moasha or asha at its milestones, chance-level trials held back."""
    b = space.budget
    return Rungs(space.milestones, b.reduction_factor, space.rung_objectives, b.tie_break, space.chance_floor)


def space_proposer(space: "SearchSpace", seed: int | None) -> Proposer:
    """The space's own proposer: ehvi's (search/ehvi.py) or the study's sampler."""
    if space.sampler_type == "ehvi":
        from .ehvi import CostAwareProposer

        return CostAwareProposer(space, seed)
    return StudySampler()


def _records(method: Callable) -> Callable:
    """An Engine method that writes the study: nothing (None) once the database is unreachable, and the error kept
    in `unreachable` when this call finds it so (see the module doc)."""
    @functools.wraps(method)
    def guarded(self: "Engine", *args: Any, **kwargs: Any) -> Any:
        if self.unreachable is not None:
            return None
        try:
            return method(self, *args, **kwargs)
        except DatabaseUnreachable as e:
            self.unreachable = e
            return None
    return guarded


class Engine:
    """Ask, price, decide at rungs, tell: one search on one study, driven by an executor.

    `admit(run_config, params)` is an executor's own check before training (the replay: is the configuration
    in the table?); a reason string rejects the sample like an infeasible one (FAIL, not counted).
    `clock` gives the time recorded as a trial's wall time (the replay passes its simulated clock).
    `tracker` hears what the study is told (tracking.py: MLflow); it never raises and never waits.
    """

    def __init__(self, space: "SearchSpace", study: "optuna.Study", study_dir: Path | None = None,
                 num_threads: int | None = None, interrupted: Callable[[], bool] = lambda: False,
                 storage: artifacts.TrialStorage | None = None, rule: RungRule | None = None,
                 proposer: Proposer | None = None,
                 admit: Callable[["RunConfig", dict], str | None] | None = None,
                 clock: Callable[[], float] = time.time, tracker: Tracker | None = None) -> None:
        self.space, self.study, self.num_threads = space, study, num_threads
        self.study_dir = Path(study_dir).resolve() if study_dir is not None else None
        self.storage = storage or (artifacts.TrialStorage.of_study(self.study_dir) if self.study_dir else None)
        self.interrupted, self.admit, self.clock = interrupted, admit, clock
        self.tracker = tracker or Tracker()
        self.proposer = proposer or space_proposer(space, space.sampler.seed)
        self.rule = rule if rule is not None else space_rungs(space)
        history = st.rung_history(study)
        self.rule.rebuild(history)           # the decisions of an uninterrupted run, after a kill
        self.counted = st.counted_trials(study)          # read once; kept here from now on
        self.rejected = st.rejected_trials(study)         # by reason, this study's whole life
        self.infeasible: str | None = None                # why the run stopped sampling
        self.live: dict[int, dict[str, Any]] = {}         # trial number → what the engine knows of it
        self.curves: dict[int, list[float]] = {}          # trial number → val_acc per epoch, as the rule saw it
        self.stopped: set[int] = set()                    # trials the rule stopped at a rung, until told PRUNED
        self.unreachable: DatabaseUnreachable | None = None   # the study's database stopped answering
        self.trained = 0                                  # this run: trials told COMPLETE / PRUNED ...
        self.failed: list[tuple[int, str]] = []           # ... and FAIL(error), with their messages
        self.cpu_channels_last = False                    # the layout CPU trials' memory is priced in (the study's)

    # --- ask and price ------------------------------------------------------------------------------------

    @_records
    def ask(self) -> dict | str | None:
        """The next trial to train (a proposal: run config, params, MACs, trial number, line), FINISHED once
        num_samples trials are counted or too many samples were rejected, None once interrupted."""
        while True:
            if self.interrupted():
                return None
            if self.counted >= self.space.budget.num_samples:
                return FINISHED
            if sum(self.rejected.values()) >= REJECTION_CAP * self.space.budget.num_samples:
                self.infeasible = self._infeasible()
                return FINISHED
            trial = self.proposer.ask(self.study)
            sampled = suggest(self.space, trial)
            proposal = self._propose(trial, sampled)
            if proposal is not None:
                self.counted += 1
                self.live[trial.number] = {"trial": trial, "start": self.clock(), "curve": [], "times": [],
                                           "last": {}, LINE: proposal[LINE],
                                           **{m: proposal[m] for m in COSTS}}
                self.tracker.started(trial.number, proposal[LINE], trial.params, proposal["run"],
                                     {m: proposal[m] for m in COSTS})
                return proposal

    def _infeasible(self) -> str:
        """The error of a space the sampler can rarely draw a trainable trial from."""
        n = sum(self.rejected.values())
        sampled = n + self.counted
        why = ", ".join(f"{k} {v}" for k, v in self.rejected.items() if v)
        return (f"{n} of the {sampled} configurations sampled ({n / max(sampled, 1):.0%}) were rejected "
                f"before training ({why}), past the cap of {REJECTION_CAP} × num_samples; widen the constraints "
                "or narrow params to the feasible part of the space")

    def _reject(self, trial: Any, reason: str, message: str, attrs: dict | None = None) -> None:
        st.tell_failed(self.study, trial, reason, message, attrs)
        self.rejected[reason] = self.rejected.get(reason, 0) + 1
        self.tracker.rejected(reason)
        self.proposer.told(trial.number, "FAIL", {})

    def _continued(self, trial: Any) -> Any | None:
        """The interrupted trial this one continues (its `requeued_from`), if any."""
        number = trial.user_attrs.get(st.REQUEUED_FROM)
        return None if number is None else st.find_trial(self.study, number)

    def _propose(self, trial: Any, sampled: dict) -> dict | None:
        """A proposal for a valid, within-budget, admitted sample; else the trial is told FAIL (None)."""
        trials = self.study.get_trials(deepcopy=False)      # one read: the seed's line index, the line's root
        try:
            run = resolve(self.space, trial.params)
            if "train.seed" not in self.space.fixed and "train.seed" not in sampled:
                run.train.seed = st.line_index(trials, trial.number)
            if self.num_threads:
                run.train.num_threads = self.num_threads
            cost = price(self.space, run, cpu_channels_last=self.cpu_channels_last)
        except UserError as e:
            self._reject(trial, "invalid", str(e))
            return None
        old = self._continued(trial)
        if old is not None:
            run.train.seed = old.user_attrs.get(st.SEED, run.train.seed)   # same draws as the run it continues
        attrs = {st.CONFIG: json.dumps(run.model_dump(mode="json")), st.SEED: run.train.seed,
                 st.MAX_EPOCHS: self.space.budget.max_epochs, **cost.metrics(),
                 MEMORY_EFFICIENT: cost.memory_efficient, MEMORY_WHY: cost.memory_why}
        over = over_budget(self.space, cost)
        if over:
            self._reject(trial, "over_budget", over, attrs)
            return None
        absent = self.admit(run, trial.params) if self.admit is not None else None
        if absent:
            self._reject(trial, "not_in_table", absent, attrs)
            return None
        line = st.lineages(trials)[old.number] if old is not None else trial.number
        proposal = {"run": run.model_dump(mode="json"), **cost.metrics(), "trial": trial.number, LINE: line}
        checkpoint = old.user_attrs.get(st.CHECKPOINT) if old is not None else None
        if checkpoint and artifacts.exists(checkpoint):
            proposal[RESUME_FROM] = attrs[st.CHECKPOINT] = checkpoint
        st.set_attrs(trial, attrs)
        return proposal

    def params_of(self, number: int) -> dict[str, Any]:
        """The sampled params (Optuna's form) of a trial that is training."""
        return dict(self.live[number]["trial"].params)

    # --- reports --------------------------------------------------------------------------------------------

    def decide(self, number: int, result: dict) -> bool:
        """The rung rule on a trial's report: True to go on, False to stop (at a rung, or at the full budget).
        A report that brings no new epoch decides nothing (go on)."""
        info = self.live.get(number)
        curve = self.curves.setdefault(number, [])
        if not extend_curve(curve, result):
            return True
        if len(curve) >= self.space.budget.max_epochs:
            return False
        line = info[LINE] if info is not None else number
        goes_on = self.rule.on_report(line, curve, {m: result[m] for m in COSTS if m in result})
        if not goes_on:
            self.stopped.add(number)      # a rung's decision: told PRUNED even if the run is being interrupted
        return goes_on

    def _take(self, info: dict, result: dict | None) -> bool:
        """Fold one report into the trial's record; True if it was a new epoch."""
        if not extend_curve(info["curve"], result, info["times"]):
            return False
        info["last"] = result
        # Where and how it runs, from its first report: a trial stopped at that report is told without observe.
        info.setdefault("where", {k: result.get(k) for k in WHERE if k in result})
        return True

    @_records
    def observe(self, number: int, result: dict) -> None:
        """Record a report of a trial that goes on: its curve and epoch times so far, in the study."""
        info = self.live.get(number)
        if info is not None and self._take(info, result):
            self._save_curve(info)
            self.tracker.epoch(info[LINE], result)

    def _save_curve(self, info: dict) -> None:
        attrs = {st.CURVE: info["curve"], st.EPOCH_TIMES: info["times"],
                 st.EPOCHS_TRAINED: info["last"].get(EPOCH, 0)}
        if not info.get("where_saved"):
            attrs.update(info["where"])
            info["where_saved"] = True
        st.set_attrs(info["trial"], attrs)

    def _attrs(self, info: dict) -> dict[str, Any]:
        last = info["last"]
        return {**info.get("where", {}), st.CURVE: info["curve"], st.EPOCH_TIMES: info["times"],
                WALL_TIME_S: self.clock() - info["start"], st.EPOCHS_TRAINED: last.get(EPOCH, 0),
                TRAIN_TIME_S: last.get(TRAIN_TIME_S, 0.0), IMAGES_PER_S: last.get(IMAGES_PER_S, 0.0),
                PEAK_MEMORY_BYTES: last.get(PEAK_MEMORY_BYTES, 0),
                **({MEASURED_PEAK_BYTES: last[MEASURED_PEAK_BYTES]} if MEASURED_PEAK_BYTES in last else {})}

    # --- tell -----------------------------------------------------------------------------------------------

    @_records
    def complete(self, number: int, result: dict | None = None) -> str | None:
        """A trial stopped training (full budget or a rung's stop): told COMPLETE or PRUNED (or FAIL if a
        full-budget value is NaN). While interrupted, a trial short of its budget that no rung stopped is left
        RUNNING (None), its curve saved to its last report: record.fail_interrupted queues it again, to continue
        from its checkpoint. A rung's stop is told PRUNED even then, its rung epoch in its curve: the resumed
        run's rungs are rebuilt from it, and it is never judged again (rungs.py)."""
        info = self.live.pop(number, None)
        self.curves.pop(number, None)
        stopped = number in self.stopped
        self.stopped.discard(number)
        if info is None:
            return None
        new = self._take(info, result)
        if new:
            self.tracker.epoch(info[LINE], result)
        if self.interrupted() and not stopped and info["last"].get(EPOCH, 0) < self.space.budget.max_epochs:
            if new:
                self._save_curve(info)
            return None
        metrics = {VAL_ACC: info["last"].get(VAL_ACC, float("nan")), **{m: info[m] for m in COSTS},
                   VAL_LOSS: info["last"].get(VAL_LOSS, float("nan"))}
        state = st.tell_finished(self.study, info["trial"], metrics, int(info["last"].get(EPOCH, 0)),
                                 self.space.budget.max_epochs, self._attrs(info))
        self.trained += 1
        self.tracker.ended(number, info[LINE], state)
        self.proposer.told(number, state, metrics)
        return state

    def hold(self, number: int, result: dict | None = None) -> dict | None:
        """A trial that errored: fold its last report and keep its record until the error is known
        (Ray tells the error after the trial's end). Returns what fail() needs, or None if unknown."""
        info = self.live.pop(number, None)
        self.curves.pop(number, None)
        self.stopped.discard(number)
        if info is not None:
            self._take(info, result)
        return info

    @_records
    def fail(self, info: dict, kind: str, message: str, text: str) -> None:
        """FAIL(error) a trial that raised or whose worker died, its traceback saved in the study folder."""
        number = info["trial"].number
        attrs = self._attrs(info)
        where = "no study folder to save the traceback in"
        if self.study_dir is not None:
            path = self.study_dir / TRIALS_DIR / str(number) / TRACEBACK_FILE
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
        self.tracker.ended(number, info[LINE], "FAIL", "error", message[:1500])
        self.proposer.told(number, "FAIL", {})

    @_records
    def record_checkpoint(self, number: int, path: str) -> None:
        """A trial saved a checkpoint at `path` (a folder in the trial storage): record where."""
        info = self.live.get(number)
        if info is not None and self.storage is not None:
            location = self.storage.locate(f"{path.rstrip('/')}/{CHECKPOINT_FILE}")
            st.set_attrs(info["trial"], {st.CHECKPOINT: location})
            self.tracker.checkpoint(info[LINE], location)
