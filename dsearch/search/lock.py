"""One driver per study: a file lock on this host, and a lease in the study for drivers on other hosts.

`StudyLock` is `flock` on `run.lock` in the study directory, held open for the whole run: the OS
releases it when the process dies, however it dies, so there is no stale lock to clean up.

A study in a shared database (`--storage postgresql://...`) can be run from any machine, where a
file lock can't see the other host. `StudyLease` keeps (host, pid, heartbeat time) as a system
attribute of the study, refreshed by a thread every LEASE_TIMEOUT_S / 6 while the run lives; a lease
whose heartbeat is older than LEASE_TIMEOUT_S (60 s) belongs to a dead driver and is taken over.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import threading
import time
from pathlib import Path
from typing import IO, Any

from ..errors import UserError

LOCK_FILE = "run.lock"
LEASE_ATTR = "dsearch:lease"
LEASE_TIMEOUT_S = 60.0      # six missed heartbeats: the driver is gone (or cut off from the database)


def _holder_text() -> str:
    return f"{os.getpid()} {socket.gethostname()}\n"


class StudyLock:
    """`run.lock` in the study directory, flock'ed while a run holds it."""

    def __init__(self, study_dir: Path) -> None:
        self.path = Path(study_dir) / LOCK_FILE
        self._file: IO[str] | None = None

    def holder(self) -> int | None:
        """The pid of another process holding the lock, else None (our own lock counts as free)."""
        if self._file is not None or not self.path.exists():
            return None
        try:
            with open(self.path) as f:
                try:
                    fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
                except BlockingIOError:
                    return _pid_in(self.path)
                fcntl.flock(f, fcntl.LOCK_UN)
        except OSError:
            return None
        return None

    def acquire(self) -> None:
        """Take the lock or raise UserError naming its holder; creates the study directory."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        f = open(self.path, "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            pid = None
            for _ in range(20):     # the holder writes its pid just after it takes the lock
                pid = _pid_in(self.path)
                if pid:
                    break
                time.sleep(0.05)
            who = f"pid {pid}" if pid else "another process"
            raise UserError(f"{self.path.parent} is in use by a running `dsearch run` ({who}); wait for it, "
                            f"or stop it{f' (kill {pid})' if pid else ''}") from None
        f.seek(0)
        f.truncate()
        f.write(_holder_text())
        f.flush()
        self._file = f

    def release(self) -> None:
        if self._file is not None:
            # The file stays: unlinking it would let a waiting process lock an orphaned inode.
            self._file.close()
            self._file = None

    def __enter__(self) -> "StudyLock":
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


def _pid_in(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


class StudyLease:
    """(host, pid, heartbeat) in the study's system attrs while this driver runs it; see the module doc."""

    def __init__(self, url: str, study_name: str, *, timeout_s: float | None = None) -> None:
        import optuna

        if timeout_s is None:   # $DSEARCH_LEASE_TIMEOUT_S: for tests that kill a driver and take over
            timeout_s = float(os.environ.get("DSEARCH_LEASE_TIMEOUT_S", LEASE_TIMEOUT_S))

        self.storage = optuna.storages.get_storage(url)
        self.study_id = self.storage.get_study_id_from_name(study_name)
        self.name, self.timeout_s, self.heartbeat_s = study_name, timeout_s, timeout_s / 6
        self.me = {"host": socket.gethostname(), "pid": os.getpid(), "token": os.urandom(8).hex()}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def current(self) -> dict | None:
        """The lease recorded in the study, if any."""
        raw = self.storage.get_study_system_attrs(self.study_id).get(LEASE_ATTR)
        return json.loads(raw) if isinstance(raw, str) else raw

    def _write(self) -> None:
        self.storage.set_study_system_attr(self.study_id, LEASE_ATTR, {**self.me, "heartbeat": time.time()})

    def holder(self) -> dict | None:
        """The lease of another driver whose heartbeat is fresh (host, pid, heartbeat), else None."""
        held = self.current()
        if held and held.get("token") != self.me["token"] and time.time() - held["heartbeat"] < self.timeout_s:
            return held
        return None

    def check(self) -> None:
        """Raise UserError if a live driver holds the lease (read only: for a refusal before anything starts)."""
        held = self.holder()
        if held:
            raise UserError(_busy(self.name, held, self.timeout_s))

    def acquire(self) -> None:
        """Take the lease, or raise UserError naming the live driver that holds it."""
        self.check()
        self._write()
        # Two drivers that started together both wrote; the later write wins, the other one backs off.
        time.sleep(min(1.0, self.heartbeat_s / 10))
        held = self.current()
        if held and held.get("token") != self.me["token"]:
            raise UserError(_busy(self.name, held, self.timeout_s))
        self._thread = threading.Thread(target=self._beat, name="dsearch-lease", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                self._write()
            except Exception:  # a database hiccup: the next beat tries again, well before the timeout
                pass

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
            held = self.current()
            if held and held.get("token") == self.me["token"]:
                self.storage.set_study_system_attr(self.study_id, LEASE_ATTR, {**held, "heartbeat": 0.0})

    def __enter__(self) -> "StudyLease":
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


def _busy(name: str, held: dict, timeout_s: float) -> str:
    age = time.time() - held["heartbeat"]
    return (f"study {name!r} is being run by pid {held.get('pid')} on host {held.get('host')} (last heartbeat "
            f"{age:.0f} s ago); wait for it, or if that driver is dead, wait {timeout_s:.0f} s for its lease "
            "to expire and run again")
