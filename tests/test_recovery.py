"""A run that meets trouble while it records: a second Ctrl-C in its final bookkeeping, a database that stays down.

In-process, no training: the study's record is what is checked. A database outage that a run rides out is tested
against a real PostgreSQL server (tests/test_postgres.py), a rung's stop near Ctrl-C in tests/test_rungs.py.
"""

import sqlite3
import sys
import traceback
from types import SimpleNamespace

import optuna
import pytest
from optuna.distributions import FloatDistribution, IntDistribution
from optuna.trial import TrialState

from dsearch.cli import main
from dsearch.search import record as st
from spaces import tiny_space
from studies import new_study

optuna.logging.set_verbosity(optuna.logging.WARNING)


# --- a second Ctrl-C during the final bookkeeping ---------------------------------------------------------------

class SecondCtrlC:
    """A study's storage where Ctrl-C lands on the `at`-th write (KeyboardInterrupt, as runner.Interruption raises)."""

    WRITES = ("set_", "create_new_trial")

    def __init__(self, target, at: int) -> None:
        self.target, self.at, self.writes = target, at, 0

    def __getattr__(self, name):
        attr = getattr(self.target, name)
        if not name.startswith(self.WRITES):
            return attr

        def write(*args, **kwargs):
            self.writes += 1
            if self.writes == self.at + 1:
                raise KeyboardInterrupt
            return attr(*args, **kwargs)
        return write


def running_study():
    """A finished trial and two that the stopped run left RUNNING."""
    study = new_study()
    dists = {"model.growth_rate": IntDistribution(2, 12), "train.lr": FloatDistribution(1e-4, 0.1)}
    done = study.ask(dists)
    study.tell(done, [0.5, 1000, 1e6])
    for _ in range(2):
        trial = study.ask(dists)
        trial.set_user_attr("curve", [0.3])
    return study


def test_a_second_ctrl_c_anywhere_in_the_final_bookkeeping_leaves_each_trial_queued_again_exactly_once():
    """Wherever the second Ctrl-C lands while the stopped run marks its trials FAIL(interrupted) and queues them
    again, the next run's start finishes the job: every trial that ran is FAIL(interrupted), queued once."""
    at, whole = 0, None
    while whole is None:
        study = running_study()
        running = {t.number: t.params for t in study.trials if t.state == TrialState.RUNNING}
        plain, study._storage = study._storage, SecondCtrlC(study._storage, at)
        try:
            whole = st.fail_interrupted(study)       # the stopped run's own bookkeeping (session.py)
        except KeyboardInterrupt:
            pass
        study._storage = plain
        st.fail_interrupted(study)                   # the next run's start
        trials = study.trials
        assert [t.state for t in trials[:3]] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.FAIL], at
        assert all(t.user_attrs["fail_reason"] == "interrupted" for t in trials[1:3]), at
        copies = sorted((t.user_attrs.get("requeued_from"), t.state, t.system_attrs["fixed_params"])
                        for t in trials[3:])
        assert copies == [(n, TrialState.WAITING, params) for n, params in sorted(running.items())], \
            f"Ctrl-C at write {at}: {copies}"
        at += 1
    assert sorted(whole) == [1, 2] and at >= 8       # two writes and more per trial were each interrupted once


# --- a database that drops a connection ---------------------------------------------------------------------

def test_a_trial_end_that_reached_the_database_before_the_connection_dropped_is_not_refused_when_tried_again(
        tmp_path, capsys):
    """The driver's storage tries a write again when the connection drops; a trial's end whose commit went
    through before the answer was lost is then found already written: taken as told, not an error."""
    import sqlalchemy.exc

    from dsearch.search.storage import open_storage

    storage = open_storage(f"sqlite:///{tmp_path / 'study.db'}", writer=True)
    study = new_study("s", storage)
    trial = study.ask()
    committed = storage._target.set_trial_state_values
    tries = []

    def commit_then_drop(*args, **kwargs):
        tries.append(args)
        done = committed(*args, **kwargs)       # the second try: UpdateFinishedTrialError, the trial has ended
        if len(tries) == 1:
            raise sqlalchemy.exc.OperationalError("COMMIT", {}, sqlite3.OperationalError("disk I/O error"))
        return done

    storage._target.set_trial_state_values = commit_then_drop
    study.tell(trial, [0.5, 1000, 1e6])
    assert len(tries) == 2
    assert study.trials[0].state == TrialState.COMPLETE and study.trials[0].values == [0.5, 1000, 1e6]
    waited, back = capsys.readouterr().err.splitlines()
    assert waited == f"dsearch: the study's database sqlite:///{tmp_path / 'study.db'} does not answer (disk I/O " \
                     "error); waiting up to 180 s for it"
    assert back.startswith("dsearch: the study's database answers again (after ")


# --- a database that stays down -----------------------------------------------------------------------------

def sqlalchemy_engine(study):
    storage = study._storage
    return getattr(storage, "_target", storage)._backend.engine


def database_goes_away(study) -> None:
    """From now on no connection to the study's SQLite file opens (as a server that went down refuses them)."""
    from sqlalchemy import event

    def refuse(*args):
        raise sqlite3.OperationalError("unable to open database file")

    engine = sqlalchemy_engine(study)
    event.listen(engine, "do_connect", refuse)
    engine.dispose()


class TuneDuringAnOutage:
    """Ray Tune's loop as far as the study sees it: trial `a` is asked and reports epoch 1; the database goes
    away; it reports epoch 2. Between steps Tune asks its stopper whether to end the run, and stops the live
    trials if so; an exception out of a step makes Tune stop them too (logging what that raises, with its
    traceback, as its controller does), then raise it."""

    def __init__(self, trainable, tune_config, run_config) -> None:
        self.searcher, self.scheduler, self.stopper = tune_config.search_alg, tune_config.scheduler, run_config.stop
        self.last = None

    def report(self, config, epoch):
        self.last = {"epoch": epoch, "val_acc": 0.5, "params": config["params"], "macs": config["macs"],
                     "training_iteration": epoch}
        trial = SimpleNamespace(config=config, trial_id="a")
        assert self.scheduler.on_trial_result(None, trial, self.last) == "CONTINUE"
        self.searcher.on_trial_result("a", self.last)

    def fit(self):
        try:
            config = self.searcher.suggest("a")
            steps = [lambda: self.report(config, 1), lambda: database_goes_away(self.searcher.engine.study),
                     lambda: self.report(config, 2)]
            for step in steps:
                step()
                if self.stopper.stop_all():
                    break
        except Exception:
            self.stop_trials()
            raise
        self.stop_trials()

    def stop_trials(self):
        try:
            self.searcher.on_trial_complete("a", result=self.last)
        except Exception:
            print("Trial a: Error stopping trial.\n" + traceback.format_exc(), file=sys.stderr)


def test_a_database_that_stays_down_ends_the_run_with_one_line_exit_1_and_the_next_run_resumes(
        tmp_path, monkeypatch, capsys):
    """`dsearch run` (Tune replaced by the loop above): the database stops answering mid-trial and stays down past
    the retry window (1 s here). One line, exit 1, naming the database and how to continue, the traceback in a
    log; nothing of the cleanup masks it. The trial stays RUNNING, and the next run queues it again."""
    from ray import tune

    from dsearch.search import runner

    space = tmp_path / "tiny.yaml"
    space.write_text(tiny_space(num=1, conc=1))
    monkeypatch.setenv("DSEARCH_DB_RETRY_S", "1")
    monkeypatch.setattr(runner, "start_ray", lambda address: None)
    monkeypatch.setattr(runner, "check_resources", lambda cpu, gpu: None)
    monkeypatch.setattr(tune, "Tuner", TuneDuringAnOutage)
    monkeypatch.setattr(tune, "with_parameters", lambda trainable, **kw: trainable)
    monkeypatch.setattr(tune, "with_resources", lambda trainable, resources: trainable)
    code = main(["run", str(space), "--study-dir", str(tmp_path / "study"), "--quiet"])
    err = capsys.readouterr().err
    url = f"sqlite:///{tmp_path / 'study' / 'study.db'}"
    lines = err.splitlines()
    assert code == 1, err
    assert lines[0] == f"dsearch: the study's database {url} does not answer (unable to open database file); " \
                       "waiting up to 1 s for it"
    assert len(lines) == 2 and lines[1] == (
        f"dsearch: error: the study's database {url} did not answer for 1 s (unable to open "
        "database file); the run stopped. Run the same command once it answers: unfinished trials are queued again "
        "(wait longer: DSEARCH_DB_RETRY_S)"), err
    # The database is back: the next run's start queues the trial again, its epoch 1 recorded.
    study = optuna.load_study(study_name="tiny", storage=url)
    assert [t.state for t in study.trials] == [TrialState.RUNNING]
    assert study.trials[0].user_attrs["curve"] == [0.5]
    assert st.fail_interrupted(study) == [0]
    assert study.trials[1].state == TrialState.WAITING and study.trials[1].user_attrs["requeued_from"] == 0
