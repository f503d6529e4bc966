"""An MLflow picture of a study: one parent run, one child run per line of trials, written synchronously.

`MlflowRecord` finds or creates the runs (matched by tags, so a resumed search and `dsearch pareto` find the same
ones), logs a trial's start, epochs and end, and `sync` sends what MLflow misses of the study. Tags:

- the parent run: `dsearch.study` = the study name, `dsearch.role` = study; params: the resolved space;
  artifacts: space.yaml (and pareto.html / pareto.csv from `dsearch pareto`);
- a child run per line (a trial and the requeued trials that continue it, record.lineages): `dsearch.line` = the
  line's first trial number, `dsearch.trial` = its latest trial, `dsearch.state` (RUNNING, COMPLETE, PRUNED, FAIL,
  INTERRUPTED) with `dsearch.fail_reason` and `dsearch.error`, `dsearch.checkpoint`, `dsearch.front`; params: the
  sampled hyperparameters (`sampled.<key>`) and the resolved run config; metrics: val_acc, val_loss, train_loss, lr,
  images_per_s, epoch_time at step = epoch, and params, MACs, memory at step 0.

tracking.py calls it from the driver's background thread; mlflow is imported only in here, at first use.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import yaml
from typing import TYPE_CHECKING, Any

from ..metrics import EPOCH, EPOCH_TIME, IMAGES_PER_S, LR, MACS, MEMORY, PARAMS, TRAIN_LOSS, VAL_ACC, VAL_LOSS
from . import record as st
from .io import flatten_keys

if TYPE_CHECKING:
    from optuna.trial import FrozenTrial

STUDY_TAG, ROLE_TAG, LINE_TAG, TRIAL_TAG = "dsearch.study", "dsearch.role", "dsearch.line", "dsearch.trial"
STATE_TAG, REASON_TAG, ERROR_TAG = "dsearch.state", "dsearch.fail_reason", "dsearch.error"
CHECKPOINT_TAG, FRONT_TAG, STORAGE_TAG = "dsearch.checkpoint", "dsearch.front", "dsearch.storage"
PARENT_TAG = "mlflow.parentRunId"
STUDY_ROLE, TRIAL_ROLE = "study", "trial"
EPOCH_KEYS = (VAL_ACC, VAL_LOSS, TRAIN_LOSS, LR, IMAGES_PER_S, EPOCH_TIME)
COST_KEYS = (PARAMS, MACS, MEMORY)
# An optuna state → MLflow's run status: a rung's stop is a run ended early on purpose.
RUN_STATUS = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}
# MLflow's HTTP client retries 7 times with backoff (minutes) by default: a dead server would hold the thread.
# Its client also prints two links on stdout for each run that ends, over the live table.
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
                 "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1", "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}
MAX_BATCH = 100                    # MLflow's log_batch takes at most 100 params (and 1000 metrics) per call


def flatten(value: dict[str, Any]) -> dict[str, str]:
    """Nested dicts as {dotted.key: text}, lists and numbers as JSON (a resolved space or run config)."""
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in flatten_keys(value).items()}


def child_params(params: dict[str, Any], run: dict[str, Any]) -> dict[str, str]:
    """A child run's params: the sampled hyperparameters (`sampled.<key>`) and the whole resolved run config."""
    return {**{f"sampled.{k}": json.dumps(v) for k, v in params.items()}, **flatten(run)}


class MlflowRecord:
    """The study's runs in MLflow, written synchronously: the parent (`open`), a child per line, and `sync`, which
    sends what MLflow misses of the study. `MlflowTracker` calls it from its thread; `dsearch pareto` directly."""

    def __init__(self, uri: str, experiment: str, study_name: str, space_yaml: str, storage_label: str = "") -> None:
        self.uri, self.experiment, self.study_name = uri, experiment, study_name
        self.space_yaml, self.storage_label = space_yaml, storage_label
        self.parent: str | None = None
        # line → {"id", "state", "trial", "step": the last epoch logged (None: not read from MLflow yet)}
        self.children: dict[int, dict[str, Any]] = {}
        self.counts: dict[str, int] = {}

    def open(self, reopen: bool = True) -> None:
        """Connect; find or create the experiment and the study's parent run (`reopen`: RUNNING again)."""
        self.client = connect(self.uri)
        self.experiment_id = experiment_id(self.client, self.experiment)
        parent = find_parent(self.client, self.experiment_id, self.study_name)
        if parent is not None:
            self.parent = parent.info.run_id
            if reopen:
                self.client.update_run(self.parent, status="RUNNING")
        else:
            run = self.client.create_run(self.experiment_id, run_name=self.study_name, tags={
                STUDY_TAG: self.study_name, ROLE_TAG: STUDY_ROLE, STORAGE_TAG: self.storage_label})
            self.parent = run.info.run_id
            self.log(self.parent, params=flatten(yaml.safe_load(self.space_yaml) or {}))
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "space.yaml"
                path.write_text(self.space_yaml)
                self.client.log_artifact(self.parent, str(path))
            if not reopen:
                self.client.set_terminated(self.parent, status="FINISHED")
        for run in child_runs(self.client, self.experiment_id, self.parent):
            tags = run.data.tags
            if LINE_TAG in tags:
                self.children[int(tags[LINE_TAG])] = {"id": run.info.run_id, "state": tags.get(STATE_TAG),
                                                      "trial": int(tags.get(TRIAL_TAG, tags[LINE_TAG])),
                                                      "step": None}

    def log(self, run_id: str, params: dict[str, str] | None = None, metrics: list[tuple] | None = None,
            tags: dict[str, str] | None = None) -> None:
        """log_batch in chunks MLflow accepts; metrics are (key, value, step, timestamp ms)."""
        from mlflow.entities import Metric, Param, RunTag

        ps = [Param(k, str(v)[:6000]) for k, v in (params or {}).items()]
        ms = [Metric(k, float(v), int(ts), int(step)) for k, v, step, ts in (metrics or [])]
        tg = [RunTag(k, str(v)) for k, v in (tags or {}).items()]
        for i in range(0, max(len(ps), len(ms), len(tg), 1), MAX_BATCH):
            self.client.log_batch(run_id, metrics=ms[i:i + MAX_BATCH], params=ps[i:i + MAX_BATCH],
                                  tags=tg[i:i + MAX_BATCH])

    def started(self, number: int, line: int, params: dict[str, Any], run: dict[str, Any],
                costs: dict[str, float]) -> str:
        """The line's run, created (with its params and costs) if it has none; reopened if it ended."""
        child = self.children.get(line)
        if child is None:
            created = self.client.create_run(self.experiment_id, run_name=f"trial {line}", tags={
                PARENT_TAG: self.parent, STUDY_TAG: self.study_name, ROLE_TAG: TRIAL_ROLE, LINE_TAG: str(line),
                TRIAL_TAG: str(number), STATE_TAG: "RUNNING"})
            child = self.children[line] = {"id": created.info.run_id, "state": "RUNNING", "trial": number,
                                           "step": 0}
            now = int(time.time() * 1000)
            self.log(child["id"], params=child_params(params, run),
                     metrics=[(k, v, 0, now) for k, v in costs.items() if k in COST_KEYS and v is not None])
        elif child["trial"] != number or child["state"] != "RUNNING":
            self.client.update_run(child["id"], status="RUNNING")
            self.log(child["id"], tags={TRIAL_TAG: str(number), STATE_TAG: "RUNNING"})
            child.update(trial=number, state="RUNNING")
        return child["id"]

    def epoch(self, line: int, result: dict[str, Any], timestamp: int) -> None:
        """A new epoch of the line, at step = epoch. A requeued trial retrains the epochs its interrupted run
        trained after its last checkpoint: those steps are logged already, and keep their first values (MLflow
        can't replace a metric's point), so each epoch is in the history once."""
        child = self.children.get(line)
        if child is None or EPOCH not in result or result[EPOCH] <= self._last_step(child):
            return
        self.log(child["id"], metrics=[(k, result[k], result[EPOCH], timestamp) for k in EPOCH_KEYS
                                       if isinstance(result.get(k), (int, float))])
        child["step"] = result[EPOCH]

    def _last_step(self, child: dict[str, Any]) -> int:
        """The last epoch logged to a child run (read from MLflow once, for a run an earlier process made)."""
        if child["step"] is None:
            child["step"] = max((m.step for m in self.client.get_metric_history(child["id"], VAL_ACC)), default=0)
        return child["step"]

    def ended(self, number: int, line: int, state: str, reason: str | None = None,
              message: str | None = None) -> None:
        child = self.children.get(line)
        if child is None:
            return
        if state == "INTERRUPTED":        # stopped with the run: its line goes on in the next run
            self.log(child["id"], tags={STATE_TAG: state, TRIAL_TAG: str(number)})
            self.client.set_terminated(child["id"], status="KILLED")
            child.update(state=state, trial=number)
            return
        tags = {STATE_TAG: state, TRIAL_TAG: str(number)}
        if reason:
            tags[REASON_TAG] = reason
        if message:
            tags[ERROR_TAG] = message[:5000]
        self.log(child["id"], tags=tags)
        self.client.set_terminated(child["id"], status=RUN_STATUS.get(state, "FAILED"))
        child.update(state=state, trial=number)

    def tag(self, line: int, key: str, value: str) -> None:
        child = self.children.get(line)
        if child is not None:
            self.log(child["id"], tags={key: value})

    def close(self, status: str, summary: dict[str, Any]) -> None:
        """End the open child runs (interrupted) and the parent with `status`; the run's counts on the parent."""
        for line, child in self.children.items():
            if child["state"] == "RUNNING":
                self.ended(child["trial"], line, "INTERRUPTED")
        now = int(time.time() * 1000)
        metrics = [(f"rejected_{k}", v, 0, now) for k, v in self.counts.items()]
        for key, n in (summary.get("trials") or {}).items():
            metrics.append((f"trials_{key.lower().replace('(', '_').rstrip(')')}", n, 0, now))
        if summary.get("best_val_acc") is not None:
            metrics.append(("best_val_acc", summary["best_val_acc"], 0, now))
        self.log(self.parent, metrics=metrics)
        self.client.set_terminated(self.parent, status=status)

    def sync(self, trials: "list[FrozenTrial]") -> int:
        """Send what MLflow misses of the study's trials: runs for lines it doesn't know, their curves' missing
        epochs (val_acc: the study keeps no other metric per epoch), final states it hasn't seen. A line whose latest
        trial is RUNNING is left to the driver running it. Returns how many lines were updated."""
        from optuna.trial import TrialState

        roots = st.lineages(trials)
        latest: dict[int, "FrozenTrial"] = {}
        for t in trials:
            trained = t.user_attrs.get(st.CURVE) or t.state in (TrialState.COMPLETE, TrialState.PRUNED) or \
                t.user_attrs.get(st.FAIL_REASON) in ("error", "interrupted")
            if trained and st.CONFIG in t.user_attrs:
                line = roots[t.number]
                if line not in latest or t.number > latest[line].number:
                    latest[line] = t
        updated = 0
        for line, t in sorted(latest.items()):
            if t.state == TrialState.RUNNING:     # a live run's (its driver logs it); a dead one's are requeued first
                continue
            reason = t.user_attrs.get(st.FAIL_REASON)
            state = "INTERRUPTED" if reason == "interrupted" else t.state.name
            child = self.children.get(line)
            if child is not None and child["trial"] == t.number and child["state"] == state:
                continue
            self.started(t.number, line, t.params, json.loads(t.user_attrs[st.CONFIG]),
                         {k: t.user_attrs.get(k) for k in COST_KEYS})
            self._backfill_curve(self.children[line], t)
            if t.user_attrs.get(st.CHECKPOINT):
                self.tag(line, CHECKPOINT_TAG, str(t.user_attrs[st.CHECKPOINT]))
            if state == "INTERRUPTED" or state in RUN_STATUS:
                self.ended(t.number, line, state, reason if state == "FAIL" else None,
                           t.user_attrs.get(st.ERROR) if state == "FAIL" else None)
            updated += 1
        return updated

    def _backfill_curve(self, child: dict[str, Any], t: "FrozenTrial") -> None:
        curve = t.user_attrs.get(st.CURVE) or []
        have = {m.step for m in self.client.get_metric_history(child["id"], VAL_ACC)}
        when = t.datetime_complete or t.datetime_start
        stamp = int((when.timestamp() if when is not None else time.time()) * 1000)
        self.log(child["id"], metrics=[(VAL_ACC, acc, i + 1, stamp) for i, acc in enumerate(curve)
                                       if acc is not None and i + 1 not in have])
        child["step"] = max(have | {i + 1 for i, acc in enumerate(curve) if acc is not None}, default=0)

    def publish_front(self, files: list[Path], front_trials: list[int], trials: "list[FrozenTrial]") -> None:
        """Attach `files` (pareto.html, pareto.csv) to the parent run; tag the front's child runs
        `dsearch.front` = true and the others false."""
        for f in files:
            self.client.log_artifact(self.parent, str(f))
        roots = st.lineages(trials)
        front = {roots.get(n, n) for n in front_trials}
        for line, child in self.children.items():
            self.log(child["id"], tags={FRONT_TAG: "true" if line in front else "false"})


def describe_error(e: BaseException) -> str:
    """`Type: message`, one line of at most 200 characters."""
    return f"{type(e).__name__}: {' '.join(str(e).split())[:200]}"


def connect(uri: str) -> Any:
    """An MlflowClient for `uri`, with short HTTP retries and no links printed, unless the environment says
    otherwise."""
    for key, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def experiment_id(client: Any, name: str) -> str:
    """The id of experiment `name`, created if it doesn't exist (restored if it was deleted)."""
    found = client.get_experiment_by_name(name)
    if found is None:
        try:
            return client.create_experiment(name)
        except Exception:                 # created meanwhile by another client
            found = client.get_experiment_by_name(name)
            if found is None:
                raise
    if found.lifecycle_stage == "deleted":
        client.restore_experiment(found.experiment_id)
    return found.experiment_id


def find_parent(client: Any, experiment: str, study_name: str) -> Any | None:
    """The study's parent run in the experiment (the oldest, if several), else None."""
    runs = client.search_runs([experiment], filter_string=f"tags.`{STUDY_TAG}` = '{_quote(study_name)}' and "
                              f"tags.`{ROLE_TAG}` = '{STUDY_ROLE}'", order_by=["attributes.start_time ASC"],
                              max_results=1)
    return runs[0] if runs else None


def child_runs(client: Any, experiment: str, parent: str) -> list[Any]:
    """Every child run of `parent` (all pages)."""
    runs, token = [], None
    while True:
        page = client.search_runs([experiment], filter_string=f"tags.`{PARENT_TAG}` = '{parent}'",
                                  max_results=1000, page_token=token)
        runs.extend(page)
        token = getattr(page, "token", None)
        if not token:
            return runs


def _quote(text: str) -> str:
    return text.replace("'", "\\'")
