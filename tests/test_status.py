"""`dsearch status`: a study's driver, trials, running trials' rungs and ETA, best val_acc and front, read without
touching the study; once beside a real `dsearch run`, the rest on hand-made studies."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.distributions import IntDistribution
from optuna.trial import TrialState, create_trial

from dsearch.analysis.status import eta, read_status, rung_position, status_lines
from dsearch.cli import main
from dsearch.cli import status as status_cli
from dsearch.search.lock import LEASE_ATTR, StudyLock, read_lease
from spaces import tiny_space
from studies import new_study

# max_epochs 8, grace 2, reduction factor 2: rungs at epochs 2 and 4 (8 would leave no budget above it).
SPACE = tiny_space(epochs=8, grace=2, num=10, conc=1)
JSON_KEYS = {"study", "storage", "read_at", "driver", "last_trial_update", "counts", "fail_reasons", "running",
             "best_val_acc", "front_size", "full_budget", "objectives", "milestones", "max_epochs",
             "reduction_factor"}
DRIVER_KEYS = {"source", "host", "pid", "alive", "heartbeat", "heartbeat_age_s", "beat", "released"}
RUNNING_KEYS = {"trial", "epochs_trained", "max_epochs", "last_rung", "next_rung", "mean_epoch_s",
                "eta_next_rung_s", "eta_end_s", "started"}


def add(study, state, values=None, **attrs):
    study.add_trial(create_trial(state=state, values=values, params={"model.growth_rate": 4},
                                 distributions={"model.growth_rate": IntDistribution(2, 12)}, user_attrs=attrs))


def make_study(study_dir: Path) -> optuna.Study:
    """Trials 0-2 COMPLETE at the full 8 epochs (0 and 1 on the front, 2 dominated by 0), 3 PRUNED with a higher
    val_acc at epoch 2 (partial: never the best), 4 FAIL invalid, 5-6 FAIL error, 7 RUNNING at epoch 3 (3 s an
    epoch), 8 RUNNING with no epoch yet, 9 WAITING."""
    study_dir.mkdir(parents=True)
    (study_dir / "space.yaml").write_text(SPACE.replace("NUM", "10").replace("CONC", "1"))
    study = new_study("tiny", f"sqlite:///{study_dir / 'study.db'}")
    full = {"epochs_trained": 8, "max_epochs": 8}
    add(study, TrialState.COMPLETE, [0.80, 3000, 2e5], curve=[0.5] * 7 + [0.80], **full)
    add(study, TrialState.COMPLETE, [0.70, 2000, 1e5], curve=[0.5] * 7 + [0.70], **full)
    add(study, TrialState.COMPLETE, [0.60, 4000, 3e5], curve=[0.5] * 7 + [0.60], **full)
    add(study, TrialState.PRUNED, epochs_trained=2, max_epochs=8, last_val_acc=0.9, last_params=1000,
        last_macs=5e4, curve=[0.5, 0.9])
    add(study, TrialState.FAIL, fail_reason="invalid", error="depth 13")
    add(study, TrialState.FAIL, fail_reason="error", error="boom")
    add(study, TrialState.FAIL, fail_reason="error", error="boom")
    add(study, TrialState.RUNNING, epochs_trained=3, max_epochs=8, epoch_times=[2.0, 4.0, 3.0], curve=[0.3] * 3)
    add(study, TrialState.RUNNING, max_epochs=8)
    add(study, TrialState.WAITING)
    return study


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory):
    where = tmp_path_factory.mktemp("status") / "s"
    make_study(where)
    return where


def listing(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under `folder`: (size, mtime in ns)."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*"))}


def status_json(capsys, *args) -> dict:
    capsys.readouterr()
    assert main(["status", *map(str, args), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


# --- the arithmetic ------------------------------------------------------------------------------------------


def test_a_trial_at_epoch_3_of_8_with_rungs_2_and_4_passed_rung_2_and_heads_for_4():
    assert rung_position(3, [2, 4], 8) == (2, 4)
    assert rung_position(1, [2, 4], 8) == (None, 2)
    assert rung_position(4, [2, 4], 8) == (4, None)     # reaching a rung and still running: it went on
    assert rung_position(5, [2, 4, 8], 8) == (4, None)  # the full budget is no rung


def test_eta_is_the_trials_mean_epoch_time_times_the_epochs_left():
    # 2, 4, 3 s: a 3 s mean; 1 epoch to rung 4, 5 to the full 8.
    assert eta(3, [2.0, 4.0, 3.0], 4, 8) == (3.0, 3.0, 15.0)
    assert eta(3, [None, 4.0, 2.0], None, 8) == (3.0, None, 15.0)     # a resumed epoch without its time is skipped
    assert eta(0, [], 2, 8) == (None, None, None)                     # no epoch timed yet: unknown


# --- a hand-made study ---------------------------------------------------------------------------------------


def test_status_counts_trials_by_state_and_fail_reason(study_dir):
    s = read_status(study_dir)
    assert s.study == "tiny"
    assert s.counts == {"COMPLETE": 3, "PRUNED": 1, "FAIL": 3, "RUNNING": 2, "WAITING": 1}
    assert s.fail_reasons == {"error": 2, "invalid": 1}


def test_best_val_acc_and_front_are_over_the_full_budget_trials_only(study_dir):
    s = read_status(study_dir)
    assert s.best_val_acc == (0, 0.80)       # not the PRUNED trial's 0.9 at epoch 2
    assert (s.front_size, s.full_budget) == (2, 3)      # trial 2 is dominated by trial 0 in all three objectives
    assert s.objectives == (("val_acc", "maximize"), ("params", "minimize"), ("macs", "minimize"))


def test_running_trials_show_their_epoch_rungs_and_eta_from_the_stored_space(study_dir):
    s = read_status(study_dir)
    assert (s.milestones, s.max_epochs, s.reduction_factor) == ((2, 4), 8, 2)
    timed, untimed = s.running
    assert (timed.trial, timed.epochs_trained, timed.max_epochs, timed.last_rung, timed.next_rung) == (7, 3, 8, 2, 4)
    assert (timed.mean_epoch_s, timed.eta_next_rung_s, timed.eta_end_s) == (3.0, 3.0, 15.0)
    assert (untimed.trial, untimed.epochs_trained, untimed.next_rung, untimed.eta_end_s) == (8, 0, 2, None)


def test_a_sqlite_study_without_a_driver_says_so_and_names_the_trials_left_running(study_dir):
    s = read_status(study_dir)
    assert s.driver.source is None and not s.driver.alive
    lines = status_lines(s)
    assert lines[1] == ("driver: none (no lease, run.lock free); 2 RUNNING trials left by a stopped driver, queued "
                        "again by the next `dsearch run`")
    assert lines[2] == "trials: COMPLETE 3, PRUNED 1, FAIL 3, RUNNING 2, WAITING 1 (error 2, invalid 1)"
    assert lines[3] == "rungs at epochs 2 (100%), 4 (50%); full budget 8 (25%) of the trials that start"
    assert lines[4] == ("  trial 7: epoch 3/8, rung 2 passed, next rung 4 in 3.0 s, full budget in 15 s "
                        "(3.0 s an epoch)")
    assert lines[5] == "  trial 8: epoch 0/8, no rung passed, next rung 2 in ?, full budget in ? (no epoch timed yet)"
    assert lines[6] == ("best full-budget val_acc: 0.8000 (trial 0); front: 2 of 3 full-budget trials over "
                        "val_acc ↑, params ↓, macs ↓")


def test_json_has_the_documented_keys_and_creates_nothing(study_dir, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)         # --storage alone would look for studies/NAME/run.lock here
    before = listing(study_dir)
    out = status_json(capsys, study_dir)
    also = status_json(capsys, "--storage", f"sqlite:///{study_dir / 'study.db'}", "--study", "tiny")
    assert listing(study_dir) == before and list(tmp_path.iterdir()) == []
    assert not (study_dir / "run.lock").exists()
    assert set(out) == JSON_KEYS and set(out["driver"]) == DRIVER_KEYS
    assert all(set(r) == RUNNING_KEYS for r in out["running"])
    assert out["best_val_acc"] == {"trial": 0, "val_acc": 0.80}
    assert [r["eta_end_s"] for r in out["running"]] == [15.0, None]
    # --storage alone reads the same trials; its rungs would come from the space stored in the study (none here).
    same = ("study", "driver", "counts", "fail_reasons", "best_val_acc", "front_size", "full_budget", "objectives")
    assert {k: also[k] for k in same} == {k: out[k] for k in same} and also["milestones"] is None
    for key in JSON_KEYS | DRIVER_KEYS | RUNNING_KEYS:     # each one documented in the command's docstring
        assert key in status_cli.status.__doc__, key


def test_a_held_run_lock_names_its_pid_and_host_and_stands_in_last_trial_update_for_a_heartbeat(tmp_path):
    study_dir = tmp_path / "s"
    make_study(study_dir)
    with StudyLock(study_dir):          # another open file, flock'ed: busy to a reader even in this process
        s = read_status(study_dir)
        text = status_lines(s)[1]
    assert s.driver.source == "run.lock" and s.driver.alive
    assert (s.driver.pid, s.driver.host) == (os.getpid(), socket.gethostname())
    assert s.driver.heartbeat is None
    assert s.last_trial_update == (study_dir / "study.db").stat().st_mtime     # its last write: no trial came later
    assert text.startswith(f"driver: pid {os.getpid()} on host {socket.gethostname()}, alive (it holds run.lock); "
                           "no heartbeat in a SQLite study folder: last trial update ")
    assert "ago)" in text


def _write_lease(study_dir: Path, **lease) -> None:
    storage = optuna.storages.RDBStorage(f"sqlite:///{study_dir / 'study.db'}")
    study_id = storage.get_study_id_from_name("tiny")
    storage.set_study_system_attr(study_id, LEASE_ATTR, lease)      # as StudyLease writes it: one JSON object
    storage.engine.dispose()


def test_a_lease_from_another_host_is_read_back_with_its_host_pid_and_heartbeat(tmp_path):
    study_dir, now = tmp_path / "s", 1_800_000_000.0
    make_study(study_dir)
    lease = {"host": "gpu-box-7", "boot": "another-boot", "pid": 4242, "token": "ab12", "beat": 17,
             "heartbeat": now - 5}
    _write_lease(study_dir, **lease)
    url = f"sqlite:///{study_dir / 'study.db'}"
    assert read_lease(url, "tiny", now=now) == {**lease, "released": False, "same_machine": False, "age_s": 5.0,
                                               "alive": True}
    s = read_status(study_dir, now=now)
    assert s.driver == ("lease", "gpu-box-7", 4242, True, now - 5, 5.0, 17, False)
    assert status_lines(s)[1].startswith("driver: pid 4242 on host gpu-box-7, alive; lease beat 17, last heartbeat ")
    stale = read_status(study_dir, now=now + 120)        # past the 60 s lease timeout, by this host's clock
    assert not stale.driver.alive and stale.driver.heartbeat_age_s == 125.0
    assert "looks dead" in status_lines(stale)[1]


def test_a_lease_of_a_dead_pid_on_this_machine_is_not_alive_and_a_released_one_is_no_driver(tmp_path):
    from dsearch.search.lock import _boot_id

    study_dir = tmp_path / "s"
    make_study(study_dir)
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    here = {"host": socket.gethostname(), "boot": _boot_id(), "token": "cd34", "beat": 3, "heartbeat": time.time()}
    _write_lease(study_dir, pid=int(gone.stdout), **here)
    dead = read_status(study_dir).driver
    assert dead.source == "lease" and dead.pid == int(gone.stdout) and not dead.alive
    _write_lease(study_dir, pid=os.getpid(), **here)
    assert read_status(study_dir).driver.alive
    _write_lease(study_dir, pid=os.getpid(), released=True, **here)
    s = read_status(study_dir)
    assert s.driver.released and not s.driver.alive
    assert status_lines(s)[1].startswith(f"driver: none now; the last was pid {os.getpid()} on host "
                                         f"{socket.gethostname()}, which released the study's lease")


def test_a_read_that_meets_database_is_locked_is_tried_again_and_other_errors_are_not(study_dir, monkeypatch):
    import sqlite3

    from dsearch.analysis import status as status_mod

    real, calls, sleeps = status_mod._read, [], []

    def locked_twice(*args):
        calls.append(args)
        if len(calls) <= 2:     # as Optuna's RDB storage raises it: its own error, SQLite's as the cause
            raise optuna.exceptions.StorageInternalError("An exception is raised during the commit.") \
                from sqlite3.OperationalError("database is locked")
        return real(*args)

    monkeypatch.setattr(status_mod, "_read", locked_twice)
    monkeypatch.setattr(status_mod.time, "sleep", sleeps.append)
    assert read_status(study_dir).counts["COMPLETE"] == 3
    assert len(calls) == 3 and sleeps == [0.1, 0.2]

    def broken(*args):
        raise optuna.exceptions.StorageInternalError("disk I/O error")

    monkeypatch.setattr(status_mod, "_read", broken)
    with pytest.raises(optuna.exceptions.StorageInternalError):
        read_status(study_dir)
    assert sleeps == [0.1, 0.2]


# --- the command ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["no such folder", "a folder without a study", "a wrong --study",
                                  "a missing SQLite file", "a database without Optuna's tables",
                                  "tables a driver is still creating"])
def test_bad_inputs_are_one_line_errors_that_create_nothing(case, study_dir, tmp_path, capsys):
    db = study_dir / "study.db"
    args, expect = {
        "no such folder": ([tmp_path / "nope"], "does not exist"),
        "a folder without a study": ([tmp_path], "no study at"),
        "a wrong --study": ([study_dir, "--study", "tinny"], "--study tinny: no such study"),
        "a missing SQLite file": (["--storage", f"sqlite:///{tmp_path / 'nope.db'}"], "no such database file"),
        "a database without Optuna's tables": (["--storage", f"sqlite:///{tmp_path / 'empty.db'}"],
                                               "holds no study"),
        # Optuna makes its tables, then writes the schema version: opening before that would write it too, racing
        # the driver (a live run's first second, once seen as "UNIQUE constraint failed: alembic_version").
        "tables a driver is still creating": (["--storage", f"sqlite:///{tmp_path / 'empty.db'}"],
                                              "tables are being created"),
    }[case]
    if case == "a database without Optuna's tables":
        (tmp_path / "empty.db").touch()
    if case == "tables a driver is still creating":
        import sqlite3

        with sqlite3.connect(tmp_path / "empty.db") as conn:
            conn.execute("CREATE TABLE studies (study_id INTEGER PRIMARY KEY)")
            conn.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) PRIMARY KEY)")
    before, before_study = listing(tmp_path), listing(study_dir)
    capsys.readouterr()
    assert main(["status", *map(str, args)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dsearch: error: ") and err.count("\n") == 1 and expect in err, err
    assert listing(tmp_path) == before and listing(study_dir) == before_study
    assert not db.with_name("run.lock").exists()


@pytest.fixture
def sleeps(monkeypatch):
    """`--watch`'s sleeps, recorded; Ctrl-C (KeyboardInterrupt) comes during the second."""
    slept = []

    def sleep(seconds):
        slept.append(seconds)
        if len(slept) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(status_cli.time, "sleep", sleep)
    return slept


def test_watch_repeats_until_ctrl_c_which_exits_0_with_a_separator_off_a_tty(study_dir, capsys, sleeps):
    capsys.readouterr()
    assert main(["status", str(study_dir), "--watch", "2.5"]) == 0
    out = capsys.readouterr()
    assert sleeps == [2.5, 2.5] and out.err == ""
    assert out.out.count("study tiny (") == 2 and out.out.count(status_cli.SEPARATOR + "\n") == 1
    assert status_cli.CLEAR not in out.out


def test_watch_on_a_tty_clears_the_screen_before_each_refresh(study_dir, capsys, monkeypatch, sleeps):
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    assert main(["status", str(study_dir), "--watch", "1"]) == 0
    out = capsys.readouterr().out
    assert out.count(status_cli.CLEAR) == 2 and status_cli.SEPARATOR not in out


def test_watch_needs_a_positive_interval(study_dir, capsys):
    assert main(["status", str(study_dir), "--watch", "0"]) == 2
    assert "--watch" in capsys.readouterr().err


# --- beside a live run -----------------------------------------------------------------------------------------

# One trial of up to 6 epochs on 800 8×8 images (~0.5 s an epoch here), rung at epoch 2.
LIVE = tiny_space(epochs=6, grace=2, num=1, conc=1).replace("synthetic_size: 400", "synthetic_size: 800")


@pytest.mark.slow
def test_status_during_a_live_run_shows_the_driver_and_the_trials_epoch_and_takes_no_lock(tmp_path, capsys,
                                                                                         monkeypatch, mlflow_server):
    """The one live search of status and of MLflow tracking (tests/test_mlflow.py has the rest of tracking): it runs
    tracked to the session's MLflow server, is stopped by Ctrl-C and resumed to its end."""
    space, study_dir = tmp_path / "live.yaml", tmp_path / "s"
    space.write_text(LIVE.replace("NUM", "1").replace("CONC", "1"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)        # where --storage alone looks for studies/NAME/run.lock, and makes nothing
    proc = subprocess.Popen([sys.executable, "-m", "dsearch.cli", "run", str(space), "--study-dir", str(study_dir),
                             "--quiet", "--mlflow", mlflow_server.uri], start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    url = f"sqlite:///{study_dir / 'study.db'}"
    seen, slowest = None, 0.0
    try:
        deadline = time.time() + 120
        while seen is None and proc.poll() is None and time.time() < deadline:
            if (study_dir / "study.db").exists():
                started = time.monotonic()
                capsys.readouterr()
                code = main(["status", str(study_dir), "--json"])
                out = capsys.readouterr()
                if code == 0:       # 2: the driver has made study.db but not yet the study in it
                    slowest = max(slowest, time.monotonic() - started)
                    now = json.loads(out.out)
                    if any(r["epochs_trained"] >= 1 for r in now["running"]):
                        seen = now
            time.sleep(0.2)
        assert seen is not None, f"no running trial with an epoch seen: {proc.poll()} {proc.stderr.read()[-2000:]}"
        lock_text = (study_dir / "run.lock").read_text()
        by_url = status_json(capsys, "--storage", url)      # run.lock found beside the study.db it names
        os.killpg(proc.pid, signal.SIGINT)          # Ctrl-C: the trial is marked FAIL(interrupted) and queued again
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert seen["driver"] == {**seen["driver"], "source": "run.lock", "pid": proc.pid, "alive": True,
                              "host": socket.gethostname(), "heartbeat": None}
    assert by_url["driver"] == seen["driver"] and by_url["study"] == "tiny"
    (trial,) = seen["running"]
    assert trial["max_epochs"] == 6 and 1 <= trial["epochs_trained"] < 6
    assert (trial["last_rung"], trial["next_rung"]) == ((None, 2) if trial["epochs_trained"] < 2 else (2, None))
    assert trial["eta_end_s"] == pytest.approx(trial["mean_epoch_s"] * (6 - trial["epochs_trained"]))
    assert seen["counts"]["RUNNING"] == 1 and seen["milestones"] == [2]
    assert slowest < 5, f"a status call took {slowest:.1f} s beside the run"
    assert lock_text.split()[0] == str(proc.pid)     # run.lock is the driver's, as it wrote it
    assert sorted(p.name for p in elsewhere.iterdir()) == []
    assert [p.name for p in study_dir.glob("*lock*")] == ["run.lock"]     # the driver's, and no other

    assert proc.returncode == 130, err
    final = status_json(capsys, study_dir)
    study = optuna.load_study(study_name="tiny", storage=url)
    counts = {state.name: sum(t.state == state for t in study.trials) for state in
              (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING, TrialState.WAITING)}
    assert final["counts"] == counts == {"COMPLETE": 0, "PRUNED": 0, "FAIL": 1, "RUNNING": 0, "WAITING": 1}
    assert final["fail_reasons"] == {"interrupted": 1}
    assert final["driver"]["source"] is None and final["running"] == []

    # MLflow, as the interrupted run left it: the study's parent run KILLED, the trial's child run INTERRUPTED with
    # the epochs it trained; then the run resumed to its end continues both.
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_server.uri)
    experiment = client.get_experiment_by_name("tiny").experiment_id

    def runs():
        found = client.search_runs([experiment])
        return ({r.data.tags["dsearch.role"]: r for r in found if r.data.tags["dsearch.role"] == "study"},
                [r for r in found if r.data.tags["dsearch.role"] == "trial"])

    def val_acc(run):
        return sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, "val_acc"))

    (stopped,), (line,) = runs()[0].values(), runs()[1]
    first = study.trials[0]
    assert stopped.info.status == "KILLED" and line.info.status == "KILLED"
    assert line.data.tags["dsearch.state"] == "INTERRUPTED" and line.data.tags["dsearch.line"] == "0"
    assert val_acc(line) == [(i + 1, pytest.approx(a)) for i, a in enumerate(first.user_attrs["curve"])]

    assert main(["run", str(space), "--study-dir", str(study_dir), "--quiet", "--mlflow", mlflow_server.uri]) == 0
    study = optuna.load_study(study_name="tiny", storage=url)
    resumed = study.trials[1]
    assert resumed.state == TrialState.COMPLETE and resumed.user_attrs["requeued_from"] == 0
    (parent,), (child,) = runs()[0].values(), runs()[1]
    assert parent.info.run_id == stopped.info.run_id and parent.info.status == "FINISHED"
    assert child.info.run_id == line.info.run_id, "the requeued trial continues its line's child run"
    assert child.info.status == "FINISHED" and child.data.tags["dsearch.state"] == "COMPLETE"
    assert child.data.tags["dsearch.trial"] == "1" and child.data.tags["dsearch.checkpoint"] == \
        resumed.user_attrs["checkpoint"]
    assert val_acc(child) == [(e, pytest.approx(a)) for e, a in enumerate(resumed.user_attrs["curve"], 1)]
    assert len(resumed.user_attrs["curve"]) == 6
    lr = sorted((m.step, m.value) for m in client.get_metric_history(child.info.run_id, "lr"))
    assert [s for s, _ in lr] == list(range(1, 7))      # every epoch once, though two runs trained them
    assert child.data.metrics["params"] == resumed.user_attrs["params"] and child.data.params["sampled.train.lr"] == "0.1"
    assert child.data.params["model.growth_rate"] == "6" and child.data.params["model.depth"] == "10"
    assert parent.data.params["budget.max_epochs"] == "6" and parent.data.metrics["trials_complete"] == 1
    assert [a.path for a in client.list_artifacts(parent.info.run_id)] == ["space.yaml"]

    capsys.readouterr()
    assert main(["pareto", str(study_dir)]) == 0        # to the tracking recorded in the study
    assert "MLflow: pareto.html, pareto.csv attached to run " + parent.info.run_id in capsys.readouterr().out
    assert sorted(a.path for a in client.list_artifacts(parent.info.run_id)) == ["pareto.csv", "pareto.html",
                                                                                 "space.yaml"]
    assert client.get_run(child.info.run_id).data.tags["dsearch.front"] == "true"
