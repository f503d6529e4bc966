"""One driver per study: the flock'ed run.lock on this host, the lease in the study for other hosts."""

from __future__ import annotations

import subprocess
import sys
import time

import optuna
import pytest

from dsearch.errors import UserError
from dsearch.search.lock import LEASE_ATTR, StudyLease, StudyLock

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


def test_a_second_driver_on_another_host_is_refused_while_the_lease_is_fresh(study_url):
    first = StudyLease(study_url, "s", timeout_s=60)
    first.acquire()
    try:
        assert first.current()["pid"] == first.me["pid"] and first.heartbeat_s == 10
        with pytest.raises(UserError, match=r"study 's' is being run by pid \d+ on host .* wait 60 s"):
            StudyLease(study_url, "s", timeout_s=60).acquire()
    finally:
        first.release()
    # Released: the next driver takes it at once.
    with StudyLease(study_url, "s", timeout_s=60) as second:
        assert second.current()["token"] == second.me["token"]


def test_a_lease_whose_heartbeat_stopped_is_taken_over_after_the_timeout(study_url):
    dead = StudyLease(study_url, "s", timeout_s=60)
    dead._write()                           # a driver that wrote its lease, then died: no more heartbeats
    storage = optuna.storages.get_storage(study_url)
    study_id = storage.get_study_id_from_name("s")
    lease = storage.get_study_system_attrs(study_id)[LEASE_ATTR]
    storage.set_study_system_attr(study_id, LEASE_ATTR, {**lease, "heartbeat": time.time() - 61})
    with StudyLease(study_url, "s", timeout_s=60) as taker:
        assert taker.current()["token"] == taker.me["token"]


def test_the_heartbeat_keeps_a_live_lease_fresh(study_url):
    with StudyLease(study_url, "s", timeout_s=0.6) as lease:   # heartbeat every 0.1 s
        time.sleep(1.0)
        assert time.time() - lease.current()["heartbeat"] < 0.6
        with pytest.raises(UserError, match="is being run by"):
            StudyLease(study_url, "s", timeout_s=0.6).acquire()
