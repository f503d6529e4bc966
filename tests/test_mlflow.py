"""MLflow tracking against a real tracking server on loopback (conftest.MlflowServer: `mlflow server`, SQLite backend,
local artifact root), read back with MlflowClient: one parent run per study, one child run per line of trials, the
epochs as metric histories, the front attached by `dsearch pareto`; a dead or silent server never stops a search."""

from __future__ import annotations

import json
import socket
import time

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from dsearch.cli import main
from dsearch.errors import UserError
from dsearch.search import tracking
from dsearch.search.io import parse_space
from spaces import tiny_space

pytestmark = pytest.mark.slow

SPACE = tiny_space(name="tracked", epochs=3, grace=1)


def runs_of(client, experiment, **tags):
    exp = client.get_experiment_by_name(experiment)
    found = client.search_runs([exp.experiment_id], max_results=1000)
    return [r for r in found if all(r.data.tags.get(f"dsearch.{k}") == v for k, v in tags.items())]


def history(client, run, key):
    return [(m.step, m.value) for m in sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)]


def test_a_tracked_search_and_its_resumption_are_one_parent_run_with_a_child_per_trial(mlflow_server, tmp_path,
                                                                                      capsys):
    space, study_dir = tmp_path / "tracked.yaml", tmp_path / "study"
    client = MlflowClient(mlflow_server.uri)
    for num in (3, 4):      # the second run continues the study: num_samples may grow
        space.write_text(SPACE.replace("NUM", str(num)).replace("CONC", "2"))
        assert main(["run", str(space), "--study-dir", str(study_dir), "--quiet", "--mlflow", mlflow_server.uri]) == 0
    assert "warning" not in capsys.readouterr().err
    study = optuna.load_study(study_name="tracked", storage=f"sqlite:///{study_dir / 'study.db'}")
    trials = study.get_trials()
    assert [t.state for t in trials].count(TrialState.COMPLETE) >= 1 and len(trials) == 4

    parents = runs_of(client, "tracked", role="study")
    assert len(parents) == 1, "a resumed search continues its study's parent run"
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert parent.data.params["budget.max_epochs"] == "3" and parent.data.params["budget.num_samples"] == "3"
    assert [a.path for a in client.list_artifacts(parent.info.run_id)] == ["space.yaml"]
    children = {int(r.data.tags["dsearch.line"]): r for r in runs_of(client, "tracked", role="trial")}
    assert sorted(children) == [t.number for t in trials]
    for t in trials:
        run = children[t.number]
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.data.tags["dsearch.state"] == t.state.name
        assert run.info.status == {"COMPLETE": "FINISHED", "PRUNED": "KILLED"}[t.state.name]
        assert run.data.params["sampled.train.lr"] == json.dumps(t.params["train.lr"])
        config = json.loads(t.user_attrs["config"])
        assert run.data.params["model.growth_rate"] == str(config["model"]["growth_rate"])
        assert run.data.metrics["params"] == t.user_attrs["params"] and run.data.metrics["macs"] == t.user_attrs["macs"]
        # every epoch, at step = epoch: the study's curve, and the lr of the schedule (0.1 ÷ 10 at 50% and 75%)
        assert history(client, run, "val_acc") == [(i + 1, pytest.approx(a)) for i, a in enumerate(t.user_attrs["curve"])]
        lr = t.params["train.lr"]
        assert history(client, run, "lr") == [(e, pytest.approx(v)) for e, v in
                                              zip((1, 2, 3), (lr, lr, lr / 10))][:len(t.user_attrs["curve"])]
        assert [s for s, _ in history(client, run, "images_per_s")] == list(range(1, len(t.user_attrs["curve"]) + 1))
        assert run.data.tags["dsearch.checkpoint"] == t.user_attrs["checkpoint"]

    assert main(["pareto", str(study_dir)]) == 0      # the tracking URI recorded in the study
    out = capsys.readouterr().out
    assert "MLflow: pareto.html, pareto.csv attached to run" in out
    assert sorted(a.path for a in client.list_artifacts(parent.info.run_id)) == ["pareto.csv", "pareto.html",
                                                                                 "space.yaml"]
    front = {int(n) for n in (study_dir / "pareto.csv").read_text().splitlines()[1:] and
             [line.split(",")[0] for line in (study_dir / "pareto.csv").read_text().splitlines()[1:]]}
    tagged = {int(r.data.tags["dsearch.line"]) for r in runs_of(client, "tracked", role="trial", front="true")}
    assert tagged == front and front


def _study_with_a_requeued_line(storage):
    """Trial 0 COMPLETE; trial 1 interrupted after 2 epochs; trial 2 continues it (requeued_from 1) to 3 epochs."""
    study = optuna.create_study(study_name="lines", storage=storage, directions=["maximize", "minimize", "minimize"])
    config = json.dumps({"model": {"growth_rate": 6}, "train": {"lr": 0.1}})
    dist = {"train.lr": FloatDistribution(0.01, 1.0)}
    base = dict(params={"train.lr": 0.1}, distributions=dist)
    study.add_trial(create_trial(state=TrialState.COMPLETE, values=[0.5, 100, 1000], **base,
                                 user_attrs={"config": config, "curve": [0.3, 0.4, 0.5], "params": 100}))
    study.add_trial(create_trial(state=TrialState.FAIL, **base, user_attrs={
        "config": config, "curve": [0.2, 0.35], "fail_reason": "interrupted", "error": "interrupted"}))
    return study


def test_a_requeued_trial_continues_its_lines_child_run_and_what_mlflow_missed_is_sent_once(mlflow_server, tmp_path):
    storage = f"sqlite:///{tmp_path / 's.db'}"
    study = _study_with_a_requeued_line(storage)
    client = MlflowClient(mlflow_server.uri)

    def sync():
        record = tracking.MlflowRecord(mlflow_server.uri, "lines-exp", "lines", "name: lines\n", {"name": "lines"})
        record.open(reopen=False)
        return record.sync(study.get_trials())

    assert sync() == 2
    line1 = runs_of(client, "lines-exp", line="1")
    assert len(line1) == 1 and line1[0].info.status == "KILLED" and line1[0].data.tags["dsearch.state"] == "INTERRUPTED"
    assert sync() == 0, "nothing missing: nothing sent again"
    study.add_trial(create_trial(state=TrialState.COMPLETE, values=[0.6, 100, 1000], params={"train.lr": 0.1},
                                 distributions={"train.lr": FloatDistribution(0.01, 1.0)}, user_attrs={
        "config": json.dumps({"model": {"growth_rate": 6}, "train": {"lr": 0.1}}), "curve": [0.2, 0.35, 0.6],
        "requeued_from": 1}))
    assert sync() == 1
    after = runs_of(client, "lines-exp", line="1")
    assert [r.info.run_id for r in after] == [line1[0].info.run_id], "the requeued trial continues the line's run"
    assert after[0].info.status == "FINISHED" and after[0].data.tags["dsearch.trial"] == "2"
    assert history(client, after[0], "val_acc") == [(1, pytest.approx(0.2)), (2, pytest.approx(0.35)),
                                                    (3, pytest.approx(0.6))]
    assert len(runs_of(client, "lines-exp", role="study")) == 1 and len(runs_of(client, "lines-exp", role="trial")) == 2


def test_a_silent_tracking_server_never_holds_up_the_search(tmp_path):
    """A server that accepts connections and never answers: every event returns at once, closing waits at most its
    timeout, and the run hears one warning line."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    warnings = []
    try:
        record = tracking.MlflowRecord(f"http://127.0.0.1:{silent.getsockname()[1]}", "x", "x", "", {})
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


def test_an_unreachable_tracking_server_is_one_warning_line(tmp_path):
    port = socket.socket()
    port.bind(("127.0.0.1", 0))
    uri = f"http://127.0.0.1:{port.getsockname()[1]}"
    port.close()              # nothing listens there now
    warnings = []
    tracker = tracking.MlflowTracker(tracking.MlflowRecord(uri, "x", "x", "", {}), [], warn=warnings.append)
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
