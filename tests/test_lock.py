"""One driver per study: the flock'ed run.lock on this host, the lease in the study for other hosts.

Drivers on other hosts are StudyLeases given another `host` name in this process; their clocks are injected.
"""

from __future__ import annotations

import io
import multiprocessing
import os
import pickle
import signal
import subprocess
import sys
import threading
import time

import optuna
import pytest
from optuna.trial import TrialState
from sqlalchemy import event

from dsearch.errors import UserError
from dsearch.search.lock import LEASE_ATTR, StudyLease, StudyLock
from spaces import tiny_space

HOLD = """
import sys, time
from dsearch.search.lock import StudyLock
lock = StudyLock(sys.argv[1]); lock.acquire(); print("held", flush=True); time.sleep(60)
"""


def test_the_lock_names_its_holder_and_is_freed_when_the_holder_dies(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        lock = StudyLock(tmp_path)
        assert lock.holder() == holder.pid
        with pytest.raises(UserError, match=rf"in use by a running `dsearch run` \(pid {holder.pid}\).*kill {holder.pid}"):
            lock.acquire()
    finally:
        holder.kill()       # SIGKILL: no cleanup runs, the OS drops the flock
        holder.wait()
    assert StudyLock(tmp_path).holder() is None
    with StudyLock(tmp_path) as lock:      # taken over without anyone removing a stale file
        assert (tmp_path / "run.lock").read_text().split()[0].isdigit()
        assert lock.holder() is None        # our own lock doesn't count as busy
    assert (tmp_path / "run.lock").exists() and StudyLock(tmp_path).holder() is None


def test_a_lock_file_left_by_a_dead_run_with_a_live_pid_in_it_is_not_busy(tmp_path):
    # The pid written in the file means nothing without the flock: pid 1 (init) is alive, and not a run.
    (tmp_path / "run.lock").write_text("1 somehost\n")
    assert StudyLock(tmp_path).holder() is None
    with StudyLock(tmp_path):
        pass


@pytest.fixture
def study_url(tmp_path):
    url = f"sqlite:///{tmp_path}/shared.db"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    optuna.create_study(study_name="s", storage=url)
    return url


class Clock:
    """A driver's monotonic clock that only its own sleeps move: a wait of a minute takes no real time."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.t += seconds


def die(lease: StudyLease) -> None:
    """The driver holding `lease` dies: its heartbeat stops, nothing releases the lease."""
    lease._stop.set()
    lease._thread.join()


def engine_of(lease: StudyLease):
    return getattr(lease.storage, "_backend", lease.storage).engine


def test_a_second_driver_is_refused_while_the_lease_is_live_and_takes_it_once_released(study_url):
    first = StudyLease(study_url, "s", timeout_s=60)
    first.acquire()
    try:
        assert first.current()["pid"] == first.me["pid"] and first.heartbeat_s == 10
        # On this machine: one clock, judged at once.
        with pytest.raises(UserError, match=r"study 's' is being run by pid \d+ on host .* \(last heartbeat \d+ s "
                                            r"ago\).*once its heartbeat has stood still for 60 s"):
            StudyLease(study_url, "s", timeout_s=60).acquire()
    finally:
        first.release()
    assert first.current()["released"] is True
    # Released: the next driver, here or on another host, takes it at once.
    with StudyLease(study_url, "s", timeout_s=60, host="elsewhere", clock=Clock(), sleep=pytest.fail) as second:
        assert second.current()["token"] == second.me["token"]


def test_a_driver_on_another_host_is_refused_as_soon_as_the_heartbeat_moves(study_url):
    with StudyLease(study_url, "s", timeout_s=1.2) as first:        # a heartbeat every 0.2 s
        t0 = time.monotonic()
        with pytest.raises(UserError, match=r"is being run by pid \d+ on host .* \(its heartbeat is live\)"):
            StudyLease(study_url, "s", timeout_s=1.2, host="elsewhere").acquire()
        assert time.monotonic() - t0 < 1.2
        assert first.current()["token"] == first.me["token"] and first.lost is None


def test_a_dead_drivers_lease_on_this_machine_is_taken_over_once_its_heartbeat_is_older_than_the_timeout(study_url):
    dead = StudyLease(study_url, "s", timeout_s=60)
    dead.acquire()
    die(dead)
    with pytest.raises(UserError, match=r"last heartbeat \d+ s ago"):
        StudyLease(study_url, "s", timeout_s=60).acquire()
    storage = optuna.storages.get_storage(study_url)
    study_id = storage.get_study_id_from_name("s")
    lease = storage.get_study_system_attrs(study_id)[LEASE_ATTR]
    storage.set_study_system_attr(study_id, LEASE_ATTR, {**lease, "heartbeat": time.time() - 61})
    with StudyLease(study_url, "s", timeout_s=60, sleep=pytest.fail) as taker:     # at once: no waiting
        assert taker.current()["token"] == taker.me["token"]


def test_a_lease_of_a_pid_that_no_longer_runs_on_this_machine_is_taken_over_at_once(study_url):
    """A driver killed here (kill -9, an OOM kill) holds nothing: its pid is gone, whatever its last heartbeat."""
    import subprocess
    import sys

    dead = StudyLease(study_url, "s", timeout_s=60)
    dead.acquire()
    die(dead)
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    storage = optuna.storages.get_storage(study_url)
    study_id = storage.get_study_id_from_name("s")
    lease = storage.get_study_system_attrs(study_id)[LEASE_ATTR]
    storage.set_study_system_attr(study_id, LEASE_ATTR, {**lease, "pid": int(gone.stdout)})   # heartbeat fresh
    with StudyLease(study_url, "s", timeout_s=60, sleep=pytest.fail) as taker:
        assert taker.current()["token"] == taker.me["token"]


def test_the_heartbeat_keeps_a_live_lease_fresh(study_url):
    with StudyLease(study_url, "s", timeout_s=0.6) as lease:   # heartbeat every 0.1 s
        time.sleep(1.0)
        assert time.time() - lease.current()["heartbeat"] < 0.6 and lease.current()["beat"] >= 5
        with pytest.raises(UserError, match="is being run by"):
            StudyLease(study_url, "s", timeout_s=0.6).acquire()


# --- issue 21: two drivers must never hold the lease at once -------------------------------------------------------

@pytest.mark.parametrize("skew_s", [300.0, -300.0], ids=["ahead", "behind"])
def test_drivers_whose_clocks_are_5_minutes_apart_never_both_hold_the_lease(study_url, skew_s):
    """The waiting driver's clock runs 5 minutes ahead of (or behind) the holder's: a live lease is never taken,
    a dead one is taken after exactly the timeout by the waiting driver's own clock."""
    skewed = lambda: time.time() + skew_s       # noqa: E731
    holder = StudyLease(study_url, "s", timeout_s=1.2, host="host-a")    # a heartbeat every 0.2 s
    holder.acquire()
    try:
        with pytest.raises(UserError, match=r"is being run by pid \d+ on host host-a"):
            StudyLease(study_url, "s", timeout_s=1.2, host="host-b", wall=skewed).acquire()
        assert holder.current()["token"] == holder.me["token"]
    finally:
        die(holder)         # host-a's driver dies with the lease
    clock = Clock()
    taker = StudyLease(study_url, "s", timeout_s=1.2, host="host-b", wall=skewed, clock=clock, sleep=clock.sleep)
    start = clock()
    with taker:
        assert taker.current()["token"] == taker.me["token"]
        assert 1.2 <= clock() - start < 1.2 + taker.poll_s
    holder._beat()      # had host-a lived on: its next beat finds host-b's lease, and writes nothing
    assert holder.lost == "pid {} on host host-b took it over".format(os.getpid())
    assert taker.current()["host"] == "host-b"


def test_a_holder_whose_database_writes_stall_past_the_timeout_stops_and_never_takes_the_lease_back(study_url):
    holder = StudyLease(study_url, "s", timeout_s=1.5, host="host-a")   # a heartbeat every 0.25 s
    holder.acquire()
    stall, stalled, resume = threading.Event(), threading.Event(), threading.Event()

    @event.listens_for(engine_of(holder), "before_cursor_execute")
    def hang(*args):    # host-a's connection hangs (a database stall, a dead link) until `resume`
        if stall.is_set() and not resume.is_set():
            stalled.set()
            resume.wait(30)

    stall.set()
    assert stalled.wait(5)
    t0 = time.monotonic()
    taker = StudyLease(study_url, "s", timeout_s=1.5, host="host-b")
    while True:     # host-b runs again until it gets the lease
        try:
            taker.acquire()
            break
        except UserError:
            assert time.monotonic() - t0 < 10, "host-b never got the lease of a driver stalled past the timeout"
            time.sleep(0.1)
    waited = time.monotonic() - t0
    try:
        resume.set()                                # the stall ends: host-a's pending beat reaches the database
        tokens = []
        for _ in range(20):                         # five of host-a's heartbeats
            tokens.append(taker.current()["token"])
            time.sleep(0.0625)
        holders = "".join("B" if t == taker.me["token"] else "A" for t in tokens)
        assert holders == "B" * 20, f"host-a took the lease back: {holders}"
        assert waited >= 1.5                        # host-b took it once host-a's heartbeat stood still that long
        assert holder.lost is not None              # and host-a knew it had lost it
        holder.release()                            # touches nothing of host-b's
        assert taker.current()["token"] == taker.me["token"] and "released" not in taker.current()
    finally:
        resume.set()
        taker.release()


def test_a_holder_counts_its_lease_lost_before_anyone_may_take_it_over(study_url):
    clock = Clock()
    holder = StudyLease(study_url, "s", timeout_s=60, host="host-a", clock=clock)    # a heartbeat every 10 s
    holder.acquire()
    try:
        assert holder.lost is None
        clock.sleep(49.9)           # no heartbeat written for 49.9 s (here: none due, the thread waits in real time)
        assert holder.lost is None
        clock.sleep(0.1)            # 50 s: one beat short of the 60 s after which another driver may take it over
        assert holder.lost.startswith("no heartbeat could be written for 50 s")
        clock.sleep(100)
        assert holder.lost.startswith("no heartbeat could be written for 50 s")    # stays lost
        assert "study 's': this driver lost its lease: no heartbeat" in str(holder.lost_error())
        assert holder.lost_error().exit_code == 3
    finally:
        holder.release()
    assert holder.current()["released"] is True     # still its own lease: released, for the next driver at once


def test_a_driver_that_loses_its_lease_stops_with_exit_3_and_never_touches_the_new_holders_trials(
        tmp_path, monkeypatch, capsys):
    """`dsearch run --storage` (Ray replaced by a stand-in): mid-run, a driver on host-b takes the study over,
    fails and requeues this driver's trial and starts its own. This driver stops: one line, exit status 3, no
    FAIL, no requeue, its lease left alone."""
    from dsearch.cli import main
    from dsearch.search import record as st
    from dsearch.search import runner

    url = f"sqlite:///{tmp_path}/shared.db"
    space = tmp_path / "tiny.yaml"
    space.write_text(tiny_space(num=2, conc=1))
    monkeypatch.setenv("DSEARCH_LEASE_TIMEOUT_S", "1.2")
    seen = {}

    def run_search(space, study, study_dir, data, view, interrupted, trials, max_concurrent=None, **kw):
        assert pickle.loads(pickle.dumps(interrupted))() is False    # Tune pickles the engine that holds it
        ours = study.ask()
        ours.set_user_attr("epochs_trained", 1)
        other = optuna.load_study(study_name="tiny", storage=url)
        lease = other._storage.get_study_system_attrs(other._study_id)[LEASE_ATTR]
        # host-b's driver writes its lease over ours (a forced or racing takeover), requeues what ran, runs it.
        other._storage.set_study_system_attr(other._study_id, LEASE_ATTR,
                                             {**lease, "host": "host-b", "pid": 4242, "token": "b" * 16})
        st.fail_interrupted(other)
        seen["theirs"] = other.ask().number
        end = time.monotonic() + 5
        while not interrupted() and time.monotonic() < end:
            time.sleep(0.05)
        seen["stopped"] = interrupted()
        ours.set_user_attr("epochs_trained", 2)     # a late report of ours: host-b has failed this trial
        raise AssertionError("unreachable: a finished trial can't take a report")

    monkeypatch.setattr(runner, "start_ray", lambda address: None)
    monkeypatch.setattr(runner, "check_resources", lambda cpu, gpu: None)
    monkeypatch.setattr(runner, "run_search", run_search)
    code = main(["run", str(space), "--study-dir", str(tmp_path / "study"), "--storage", url, "--quiet"])
    err = capsys.readouterr().err
    study = optuna.load_study(study_name="tiny", storage=url)
    theirs = study.trials[seen["theirs"]]
    assert theirs.state == TrialState.RUNNING and "fail_reason" not in theirs.user_attrs, "host-b's trial was touched"
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.RUNNING], "something was requeued"
    assert study.trials[0].user_attrs["epochs_trained"] == 1
    lease = study._storage.get_study_system_attrs(study._study_id)[LEASE_ATTR]
    assert lease["token"] == "b" * 16 and "released" not in lease
    assert seen["stopped"] is True
    assert code == 3, err
    assert err.startswith("dsearch: error: study 'tiny': this driver lost its lease: pid 4242 on host host-b took "
                          "it over; it stopped") and err.count("\n") == 1, err


# --- two drivers started together: exactly one runs ---------------------------------------------------------------

def _race(kind: str, where: str, go, results, release) -> None:
    """A forked driver: through the CLI's error handling, take the lock (or the lease), hold it until `release`."""
    import importlib

    app = importlib.import_module("dsearch.cli.app")       # the module (dsearch.cli.app is the Typer app)

    def invoke(argv):
        holds = StudyLock(where) if kind == "lock" else StudyLease(where, "s", timeout_s=60)
        go.wait()
        with holds:
            results.put(("runs", os.getpid(), ""))
            release.wait(60)
        return 0

    app._invoke = invoke
    sys.stderr = io.StringIO()
    code = app.main([])
    results.put(("exited", code, sys.stderr.getvalue()))


@pytest.mark.parametrize("kind", ["lock", "lease"])
def test_two_drivers_started_together_exactly_one_runs_nine_times_over(tmp_path, kind):
    """The lock (`run.lock`, one host) and the lease (a shared database): of two drivers started at the same
    instant, one runs and the other exits 2 with a one-line refusal. Forked processes, not `dsearch run`: the
    start of Ray would take most of a round (see the one real round below)."""
    import dsearch.cli  # noqa: F401   imported once, here, not in each child

    where = str(tmp_path / "s")
    if kind == "lease":
        where = f"sqlite:///{tmp_path}/shared.db"
        optuna.create_study(study_name="s", storage=where)
    refusal = "is in use by a running `dsearch run` (pid" if kind == "lock" else "is being run by pid"
    ctx = multiprocessing.get_context("fork")
    for round_ in range(9):
        go, release, results = ctx.Barrier(2), ctx.Event(), ctx.Queue()
        procs = [ctx.Process(target=_race, args=(kind, where, go, results, release)) for _ in range(2)]
        for p in procs:
            p.start()
        try:
            first = results.get(timeout=60)
            time.sleep(0.2)     # the winner keeps running; a second loser would have exited by now
            second = results.get(timeout=60)
            assert results.empty() and sum(p.is_alive() for p in procs) == 1, f"round {round_}: both exited"
            outcomes = sorted([first, second])
            assert [o[0] for o in outcomes] == ["exited", "runs"], f"round {round_}: {outcomes}"
            _, code, err = outcomes[0]
            assert code == 2
            assert err.startswith("dsearch: error: ") and refusal in err and err.count("\n") == 1, err
        finally:
            release.set()
            for p in procs:
                p.join(30)
                if p.is_alive():
                    p.kill()
        assert [p.exitcode for p in procs].count(0) == 2


LONG = tiny_space(epochs=40, grace=40, num=1, conc=1)


@pytest.mark.slow
def test_two_dsearch_runs_started_together_exactly_one_runs(tmp_path):
    """The one real round of the race above: two `dsearch run` processes on one study."""
    space, study_dir = tmp_path / "tiny.yaml", tmp_path / "s"
    space.write_text(LONG)
    procs = [subprocess.Popen([sys.executable, "-m", "dsearch.cli", "run", str(space), "--study-dir", str(study_dir),
                               "--quiet"], start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    try:
        end = time.time() + 60
        while time.time() < end and all(p.poll() is None for p in procs):
            time.sleep(0.1)
        time.sleep(1)       # the winner keeps running; a second loser would have exited by now
        exited = [p for p in procs if p.poll() is not None]
        assert len(exited) == 1, f"{len(exited)} drivers exited"
        loser = exited[0]
        assert loser.returncode == 2
        err = loser.stderr.read()
        assert "is in use by a running `dsearch run` (pid" in err and err.count("\n") == 1, err
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
            p.wait()
