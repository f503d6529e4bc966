"""MLflow tracking against a real tracking server on loopback (conftest.MlflowServer: `mlflow server`, SQLite backend,
local artifact root), read back with MlflowClient: a line of trials is one child run, what MLflow missed is sent once,
a dead or silent server never holds a search up. A real search tracked there, stopped by Ctrl-C, resumed, and its
front attached by `dsearch pareto`: tests/test_status.py's live test (one search serves both)."""

from __future__ import annotations

import json
import socket
import time

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from dsearch.errors import UserError
from dsearch.search import tracking
from dsearch.search.io import parse_space
from spaces import tiny_space

pytestmark = pytest.mark.slow

def runs_of(client, experiment, **tags):
    exp = client.get_experiment_by_name(experiment)
    found = client.search_runs([exp.experiment_id], max_results=1000)
    return [r for r in found if all(r.data.tags.get(f"dsearch.{k}") == v for k, v in tags.items())]


def history(client, run, key):
    return [(m.step, m.value) for m in sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)]


def _study_with_a_requeued_line(storage):
    """Trial 0 COMPLETE; trial 1 interrupted after 2 epochs; 2 PRUNED at epoch 1; 3 FAIL(error); 4 invalid (never
    trained: no run)."""
    study = optuna.create_study(study_name="lines", storage=storage, directions=["maximize", "minimize", "minimize"])
    config = json.dumps({"model": {"growth_rate": 6}, "train": {"lr": 0.1}})
    dist = {"train.lr": FloatDistribution(0.01, 1.0)}
    base = dict(params={"train.lr": 0.1}, distributions=dist)
    study.add_trial(create_trial(state=TrialState.COMPLETE, values=[0.5, 100, 1000], **base,
                                 user_attrs={"config": config, "curve": [0.3, 0.4, 0.5], "params": 100}))
    study.add_trial(create_trial(state=TrialState.FAIL, **base, user_attrs={
        "config": config, "curve": [0.2, 0.35], "fail_reason": "interrupted", "error": "interrupted"}))
    study.add_trial(create_trial(state=TrialState.PRUNED, **base, user_attrs={"config": config, "curve": [0.1]}))
    study.add_trial(create_trial(state=TrialState.FAIL, **base, user_attrs={
        "config": config, "curve": [0.1], "fail_reason": "error", "error": "ValueError: diverged"}))
    study.add_trial(create_trial(state=TrialState.FAIL, **base, user_attrs={
        "config": config, "fail_reason": "invalid", "error": "depth 13 doesn't fit"}))
    return study


def test_a_requeued_trial_continues_its_lines_child_run_and_what_mlflow_missed_is_sent_once(mlflow_server, tmp_path):
    storage = f"sqlite:///{tmp_path / 's.db'}"
    study = _study_with_a_requeued_line(storage)
    client = MlflowClient(mlflow_server.uri)

    def sync():
        record = tracking.MlflowRecord(mlflow_server.uri, "lines-exp", "lines", "name: lines\n")
        record.open(reopen=False)
        return record.sync(study.get_trials())

    assert sync() == 4
    pruned, failed = runs_of(client, "lines-exp", line="2")[0], runs_of(client, "lines-exp", line="3")[0]
    assert (pruned.info.status, pruned.data.tags["dsearch.state"]) == ("KILLED", "PRUNED")
    assert (failed.info.status, failed.data.tags["dsearch.state"]) == ("FAILED", "FAIL")
    assert failed.data.tags["dsearch.fail_reason"] == "error" and failed.data.tags["dsearch.error"] == "ValueError: diverged"
    line1 = runs_of(client, "lines-exp", line="1")
    assert len(line1) == 1 and line1[0].info.status == "KILLED" and line1[0].data.tags["dsearch.state"] == "INTERRUPTED"
    assert sync() == 0, "nothing missing: nothing sent again"
    study.add_trial(create_trial(state=TrialState.RUNNING, params={"train.lr": 0.1}, user_attrs={   # trial 5
        "config": json.dumps({"model": {"growth_rate": 6}, "train": {"lr": 0.1}}), "curve": [0.3]},
        distributions={"train.lr": FloatDistribution(0.01, 1.0)}))
    assert sync() == 0 and not runs_of(client, "lines-exp", line="5"), "a live run's trial is its driver's to log"
    study.add_trial(create_trial(state=TrialState.COMPLETE, values=[0.6, 100, 1000], params={"train.lr": 0.1},
                                 distributions={"train.lr": FloatDistribution(0.01, 1.0)}, user_attrs={
        "config": json.dumps({"model": {"growth_rate": 6}, "train": {"lr": 0.1}}), "curve": [0.2, 0.35, 0.6],
        "requeued_from": 1}))
    assert sync() == 1
    after = runs_of(client, "lines-exp", line="1")
    assert [r.info.run_id for r in after] == [line1[0].info.run_id], "the requeued trial continues the line's run"
    assert after[0].info.status == "FINISHED" and after[0].data.tags["dsearch.trial"] == "6"
    assert history(client, after[0], "val_acc") == [(1, pytest.approx(0.2)), (2, pytest.approx(0.35)),
                                                    (3, pytest.approx(0.6))]
    assert len(runs_of(client, "lines-exp", role="study")) == 1 and len(runs_of(client, "lines-exp", role="trial")) == 4
    # A requeued trial retrains the epochs after its last checkpoint: a step already logged is not logged again.
    record = tracking.MlflowRecord(mlflow_server.uri, "lines-exp", "lines", "name: lines\n")
    record.open(reopen=False)
    record.epoch(1, {"epoch": 3, "val_acc": 0.99}, 0)
    record.epoch(1, {"epoch": 4, "val_acc": 0.7}, 0)
    assert history(client, after[0], "val_acc") == [(1, pytest.approx(0.2)), (2, pytest.approx(0.35)),
                                                    (3, pytest.approx(0.6)), (4, pytest.approx(0.7))]


def test_a_silent_tracking_server_never_holds_up_the_search(tmp_path):
    """A server that accepts connections and never answers: every event returns at once, closing waits at most its
    timeout, and the run hears one warning line."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    warnings = []
    try:
        record = tracking.MlflowRecord(f"http://127.0.0.1:{silent.getsockname()[1]}", "x", "x", "")
        tracker = tracking.MlflowTracker(record, [], warn=warnings.append)
        t0 = time.monotonic()
        for epoch in range(1, 200):
            tracker.started(epoch, epoch, {"train.lr": 0.1}, {"model": {}}, {"params": 1.0})
            tracker.epoch(epoch, {"epoch": epoch, "val_acc": 0.5})
            tracker.ended(epoch, epoch, "COMPLETE")
        assert time.monotonic() - t0 < 0.5
        t0 = time.monotonic()
        tracker.close("FINISHED", {}, timeout=1.0)
        assert time.monotonic() - t0 < 3.0
    finally:
        silent.close()
    assert len(warnings) == 1 and "still sending after 1 s" in warnings[0]


def test_an_unreachable_tracking_server_is_one_warning_line(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")      # refused at once: no backoff to wait out
    port = socket.socket()
    port.bind(("127.0.0.1", 0))
    uri = f"http://127.0.0.1:{port.getsockname()[1]}"
    port.close()              # nothing listens there now
    warnings = []
    tracker = tracking.MlflowTracker(tracking.MlflowRecord(uri, "x", "x", ""), [], warn=warnings.append)
    tracker.started(0, 0, {}, {}, {})
    tracker.close("FINISHED", {}, timeout=30)
    assert len(warnings) == 1 and warnings[0].startswith(f"MLflow tracking at {uri} failed (")
    assert "the search goes on untracked" in warnings[0]


def test_tracking_without_mlflow_installed_is_a_one_line_error_before_anything_starts(monkeypatch):
    import importlib.util

    space = parse_space(tiny_space(num=2, conc=1) + "tracking: {mlflow: 'http://127.0.0.1:5000'}\n", "tiny.yaml")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    with pytest.raises(UserError, match=r"pip install 'dsearch\[mlflow\]'"):
        tracking.check_tracking(space)


def test_a_typo_under_tracking_names_the_key():
    with pytest.raises(UserError, match="tracking.*mlfow"):
        parse_space(tiny_space(num=2, conc=1) + "tracking: {mlfow: 'http://127.0.0.1:5000'}\n", "tiny.yaml")
