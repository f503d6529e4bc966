"""Ray Tune edge: the trial function, ASHA, and a searcher that asks/tells the Optuna study.

The driver is the only writer of the study. Each Ray trial is one Optuna trial: asked in
`StudySearcher.suggest`, told COMPLETE / PRUNED / FAIL in `on_trial_complete`. Invalid and
over-budget samples are told FAIL before any Ray trial exists, so they are never trained.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ray.tune import Callback
from ray.tune.search import Searcher

from ..errors import UserError
from ..metrics import (EPOCH, EPOCH_TIME, IMAGES_PER_S, MACS, PARAMS, PEAK_MEMORY_BYTES, TRAIN_TIME_S, VAL_ACC,
                       VAL_LOSS, WALL_TIME_S)
from ..training.config import RunConfig
from . import record as st
from .sampling import check_constraints, input_size, resolve, suggest

if TYPE_CHECKING:
    import optuna

    from .schema import SearchSpace

TRIAL_ERROR = "trial_error"
CHECKPOINT_FILE = "checkpoint.pt"


def train_trial(config: dict, data: Any = None) -> None:
    """Ray Tune function trainable: fit() with a report after every epoch (+ checkpoint)."""
    from ray import tune

    from ..training.loop import fit, peak_memory, resolve_device

    run = RunConfig.model_validate(config["run"])
    fixed = {PARAMS: config[PARAMS], MACS: config[MACS]}
    # fit() writes here each epoch; Ray copies it to the experiment's storage with each report.
    work = Path(tune.get_context().get_trial_dir()) / "latest"
    ckpt_path = work / CHECKPOINT_FILE
    train_time = 0.0
    device = resolve_device(run.train)

    def report(metrics: dict) -> None:
        nonlocal train_time
        train_time += metrics.get(EPOCH_TIME, 0.0)
        out = {**metrics, **fixed, TRAIN_TIME_S: train_time, PEAK_MEMORY_BYTES: peak_memory(device)}
        tune.report(out, checkpoint=tune.Checkpoint.from_directory(str(work)))

    try:
        fit(run, data, callback=report, checkpoint_path=ckpt_path)
    except Exception as e:  # recorded as FAIL(error) by the driver; the search goes on
        tune.report({TRIAL_ERROR: f"{type(e).__name__}: {e}"[:2000], **fixed})


class StudySearcher(Searcher):
    """Proposes trials from the Optuna study (ask) and records their outcome (tell)."""

    def __init__(self, space: "SearchSpace", study: "optuna.Study", num_threads: int | None) -> None:
        super().__init__(metric=VAL_ACC, mode="max")
        self.space, self.study, self.num_threads = space, study, num_threads
        self.live: dict[str, dict[str, Any]] = {}     # Ray trial id → optuna trial info
        self.rejected = 0

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return True

    # The study is the checkpoint: Ray's own searcher state is not needed to resume, and the
    # study's storage engine can't be pickled (Tune pickles its searcher into the experiment dir).
    def save(self, checkpoint_path: str) -> None:
        pass

    def restore(self, checkpoint_path: str) -> None:
        pass

    def __getstate__(self) -> dict:
        # The live optuna.Trial objects hold the study too.
        return {**{k: v for k, v in self.__dict__.items() if k not in ("study", "live")}, "live": {}}

    def suggest(self, trial_id: str) -> dict | str | None:
        while True:
            if st.counted_trials(self.study) >= self.space.budget.num_samples:
                return Searcher.FINISHED
            trial = self.study.ask()
            sampled = suggest(self.space, trial)
            proposal = self._propose(trial, sampled)
            if proposal is not None:
                self.live[trial_id] = {"trial": trial, "start": time.time(),
                                       "curve": [], "last": {}, PARAMS: proposal[PARAMS],
                                       MACS: proposal[MACS]}
                return proposal

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
            self.rejected += 1
            return None
        attrs = {st.CONFIG: json.dumps(run.model_dump(mode="json")), st.SEED: run.train.seed,
                 st.MAX_EPOCHS: self.space.budget.max_epochs, PARAMS: params, MACS: macs}
        over = check_constraints(self.space, run)
        if over:
            st.tell_failed(self.study, trial, "over_budget", over, attrs)
            self.rejected += 1
            return None
        st.set_attrs(trial, attrs)
        return {"run": run.model_dump(mode="json"), PARAMS: params, MACS: macs, "trial": trial.number}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        info = self.live.get(trial_id)
        if info is not None and self._take(info, result):
            st.set_attrs(info["trial"], {st.CURVE: info["curve"], st.EPOCHS_TRAINED: result.get(EPOCH, 0)})

    @staticmethod
    def _take(info: dict, result: dict | None) -> bool:
        """Fold one report into the trial's record; True if it was a new epoch."""
        if not result:
            return False
        if TRIAL_ERROR in result:
            info["error"] = result[TRIAL_ERROR]
            return False
        if VAL_ACC not in result or result.get(EPOCH, 0) <= len(info["curve"]):
            return False
        info["curve"].append(result[VAL_ACC])
        info["last"] = result
        return True

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        # Tune passes the report that made ASHA stop the trial only here, not to on_trial_result.
        info = self.live.pop(trial_id, None)
        if info is None:
            return
        self._take(info, result)
        last = info["last"]
        attrs = {st.CURVE: info["curve"], WALL_TIME_S: time.time() - info["start"],
                 TRAIN_TIME_S: last.get(TRAIN_TIME_S, 0.0), IMAGES_PER_S: last.get(IMAGES_PER_S, 0.0),
                 PEAK_MEMORY_BYTES: last.get(PEAK_MEMORY_BYTES, 0)}
        if error or "error" in info:
            message = info.get("error") or "the trial's Ray worker crashed (see the Ray logs in the study's ray/ folder)"
            attrs[st.EPOCHS_TRAINED] = last.get(EPOCH, 0)
            st.tell_failed(self.study, info["trial"], "error", message, attrs)
            return
        metrics = {VAL_ACC: last.get(VAL_ACC, float("nan")), PARAMS: info[PARAMS], MACS: info[MACS],
                   VAL_LOSS: last.get(VAL_LOSS, float("nan"))}
        st.tell_finished(self.study, info["trial"], metrics, int(last.get(EPOCH, 0)),
                         self.space.budget.max_epochs, attrs)

    def record_checkpoint(self, trial_id: str, path: str) -> None:
        info = self.live.get(trial_id)
        if info is not None:
            st.set_attrs(info["trial"], {st.CHECKPOINT: str(Path(path) / CHECKPOINT_FILE)})


class _Events(Callback):
    """Forwards Tune's events to the live view and the checkpoint paths to the searcher."""

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
        self.view.finished(trial.trial_id, "error")


def start_ray(address: str | None, num_cpus: int | None = None) -> None:
    """Connect to a cluster (address) or start a local Ray sized to this machine."""
    import ray

    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")      # verbose=0 then means silent: our view reports
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    if ray.is_initialized():
        return
    kwargs = dict(include_dashboard=False, log_to_driver=False, logging_level="ERROR",
                  configure_logging=True)
    try:
        if address:
            ray.init(address=address, **kwargs)
        else:
            # "local": always a fresh instance, never an unrelated `ray start` cluster found on the machine.
            ray.init(address="local", num_cpus=num_cpus or os.cpu_count(), **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as e:
        where = f"--ray-address {address}" if address else "a local Ray"
        raise UserError(f"could not start {where}: {str(e).splitlines()[0]}") from None


def check_resources(cpu: float, gpu: float) -> None:
    """Fail at once if one trial needs more than the whole cluster has (Ray would wait forever)."""
    import ray

    have = ray.cluster_resources()
    if gpu > have.get("GPU", 0):
        raise UserError(f"each trial asks for {gpu:g} GPU but the Ray cluster has {have.get('GPU', 0):g}; "
                        "run with --gpus-per-trial 0 to train on CPU, or --ray-address a cluster with GPUs")
    if cpu > have.get("CPU", 0):
        raise UserError(f"each trial asks for {cpu:g} CPUs but the Ray cluster has {have.get('CPU', 0):g}; "
                        f"run with --cpus-per-trial {max(1, int(have.get('CPU', 1)))}")


def run_search(space: "SearchSpace", study: "optuna.Study", study_dir: Path, data: Any, view: Any,
               max_concurrent: int | None = None) -> None:
    """Run the trials the study still owes (num_samples minus counted) under ASHA."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    r = space.resources
    threads = max(1, int(r.cpu))
    searcher = StudySearcher(space, study, threads)
    b = space.budget
    scheduler = ASHAScheduler(time_attr=EPOCH, max_t=b.max_epochs, grace_period=b.grace_period,
                              reduction_factor=b.reduction_factor)
    trainable = tune.with_resources(tune.with_parameters(train_trial, data=data),
                                    {"cpu": r.cpu, "gpu": r.gpu})
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, metric=VAL_ACC, mode="max",
                                    num_samples=-1,
                                    max_concurrent_trials=max_concurrent or b.max_concurrent_trials),
        run_config=tune.RunConfig(
            name=f"run-{time.strftime('%Y%m%d-%H%M%S')}", storage_path=str((study_dir / "ray").resolve()),
            verbose=0, callbacks=[_Events(searcher, view)],
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            failure_config=tune.FailureConfig(max_failures=0)),
    )
    tuner.fit()
