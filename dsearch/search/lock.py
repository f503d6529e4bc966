"""One driver per study: a file lock on this host, and a lease in the study for drivers on other hosts.

`StudyLock` is `flock` on `run.lock` in the study directory, held open for the whole run: the OS
releases it when the process dies, however it dies, so there is no stale lock to clean up.

A study in a shared database (`--storage postgresql://...`) can be run from any machine, where a
file lock can't see the other host. `StudyLease` keeps (host, pid, a random token, a beat count and the time
of the beat) as a system attribute of the study; a thread beats every LEASE_TIMEOUT_S / 6 while the run lives. Every write of the lease is a
compare-and-set on the value last read or written (one UPDATE ... WHERE value = old on Optuna's table, or
an INSERT the unique key refuses), so two drivers never both hold it, and a holder whose beat finds another
driver's lease knows it lost it.

Hosts' clocks differ (by minutes, sometimes), so a driver never compares its clock with another host's: a
lease from another machine is stale once its heartbeat has stood still for LEASE_TIMEOUT_S (60 s) by the
waiting driver's own clock, and live as soon as it changes. A lease written on this machine (same host name
and kernel boot) is judged at once by the one clock they share, and by whether its pid is still alive (a driver
killed here is taken over at once). The holder, in turn, counts itself as having lost the lease once
LEASE_TIMEOUT_S - one beat has passed, by its clock, since the last beat it wrote (a stalled or cut-off
database): a waiting driver takes over no sooner than LEASE_TIMEOUT_S after that beat, so the holder stops first. A lost lease stops the run (search/session.py) with LeaseLost, exit status 3.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import threading
import time
from pathlib import Path
from typing import IO, Any, Callable

from ..errors import LeaseLost, UserError

LOCK_FILE = "run.lock"
LEASE_ATTR = "dsearch:lease"
LEASE_TIMEOUT_S = 60.0      # six missed heartbeats: the driver is gone (or cut off from the database)
POLL_S = 1.0                # at most this between two reads of a lease being watched


def _holder_text() -> str:
    return f"{os.getpid()} {socket.gethostname()}\n"


class StudyLock:
    """`run.lock` in the study directory, flock'ed while a run holds it."""

    def __init__(self, study_dir: Path) -> None:
        self.path = Path(study_dir) / LOCK_FILE
        self._file: IO[str] | None = None

    def holder(self) -> int | None:
        """The pid of another process holding the lock, else None (our own lock counts as free)."""
        if self._file is not None:
            return None
        held = lock_holder(self.path.parent)
        return held["pid"] if held else None

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
    """(host, pid, token, beat, heartbeat) in the study's system attrs while this driver runs it; see the module doc.

    `clock` (monotonic, s) measures this driver's own waits and stalls, `wall` (Unix time, s) stamps the
    heartbeat and judges a lease from this machine, `sleep` waits between reads; tests inject them, and `host`
    (a host name: another machine).
    """

    def __init__(self, url: str, study_name: str, *, timeout_s: float | None = None,
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time,
                 sleep: Callable[[float], None] = time.sleep, host: str | None = None,
                 say: Callable[[str], None] | None = None) -> None:
        from .storage import open_storage

        if timeout_s is None:   # $DSEARCH_LEASE_TIMEOUT_S: for tests that kill a driver and take over
            timeout_s = float(os.environ.get("DSEARCH_LEASE_TIMEOUT_S", LEASE_TIMEOUT_S))

        self.storage = open_storage(url)
        self.study_id = self.storage.get_study_id_from_name(study_name)
        self.name, self.timeout_s, self.heartbeat_s = study_name, timeout_s, timeout_s / 6
        self.poll_s = min(POLL_S, self.heartbeat_s / 2)
        self.me = {"host": host or socket.gethostname(), "boot": _boot_id(), "pid": os.getpid(),
                   "token": os.urandom(8).hex()}
        self._clock, self._wall, self._sleep, self._say = clock, wall, sleep, say
        self._raw: str | None = None           # the lease as this driver last wrote it: what its next write expects
        self._beats = 0
        self._last_ok: float | None = None     # clock() when the last beat that was written began
        self._lost: str | None = None          # why this driver no longer holds the lease, once it knows
        self._stale: tuple[str, float] | None = None    # (lease, since): one seen standing still, by check()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- the record ----------------------------------------------------------------------------------------

    def current(self) -> dict | None:
        """The lease recorded in the study, if any."""
        return _parse(self._read())

    def _read(self) -> str | None:
        return _lease_text(self.storage, self.study_id)

    def _swap(self, old: str | None, new: str) -> bool:
        """Write `new` if the lease still reads `old` (None: no lease yet), atomically; whether it did.

        One statement in one transaction: an UPDATE whose WHERE names the old value (PostgreSQL re-checks it
        after waiting for a concurrent writer's row lock; SQLite runs one writer at a time), or an INSERT that
        the table's unique (study_id, key) refuses to a second driver.
        """
        import sqlalchemy as sa

        table = _table()
        try:
            with self.storage.engine.begin() as conn:
                if old is None:
                    conn.execute(sa.insert(table).values(study_id=self.study_id, key=LEASE_ATTR, value_json=new))
                    return True
                return conn.execute(sa.update(table).where(
                    table.c.study_id == self.study_id, table.c.key == LEASE_ATTR, table.c.value_json == old,
                ).values(value_json=new)).rowcount == 1
        except sa.exc.IntegrityError:       # another driver inserted first
            return False

    def _value(self, beat: int, released: bool = False) -> str:
        lease = {**self.me, "beat": beat, "heartbeat": self._wall()}
        return json.dumps({**lease, "released": True} if released else lease)

    def _mine(self, lease: dict | None) -> bool:
        return bool(lease) and lease.get("token") == self.me["token"]

    def _same_machine(self, lease: dict) -> bool:
        return _written_on(lease, self.me["host"], self.me["boot"])

    # --- taking it ---------------------------------------------------------------------------------------------

    def holder(self) -> dict | None:
        """Another driver's lease that looks live from one read (not released, heartbeat younger than timeout_s
        by this host's clock), else None: a hint for read-only views (`dsearch pareto`). Hosts' clocks differ,
        so taking a lease over never relies on it (see `check`)."""
        held = self.current()
        if held and not self._mine(held) and not _released(held) and self._wall() - held["heartbeat"] < self.timeout_s:
            return held
        return None

    def check(self) -> None:
        """Raise UserError if a live driver holds the lease; may watch it for up to timeout_s (read only).

        A lease from this machine is judged at once; one from another host is live as soon as its heartbeat
        changes, and stale once it has stood still for timeout_s by this driver's clock."""
        self._free()

    def _free(self) -> str | None:
        """The lease as read once it may be taken (none, released, or stale), or UserError naming its live holder."""
        raw = self._read()
        held = _parse(raw)
        if held is None or _released(held) or self._mine(held):
            return raw
        if self._same_machine(held):
            age = self._wall() - held["heartbeat"]
            if age < self.timeout_s and _alive(held.get("pid")):      # a dead pid here holds nothing
                raise UserError(_busy(self.name, held, self.timeout_s, f"last heartbeat {age:.0f} s ago"))
            return raw
        if self._stale is not None and self._stale[0] == raw:
            since = self._stale[1]          # check() watched it stand still: still the same value, still stale
        else:
            since = self._clock()
            if self._say:
                self._say(f"study {self.name!r} has the lease of pid {held.get('pid')} on host {held.get('host')}: "
                          f"taking it over unless its heartbeat changes within {self.timeout_s:.0f} s")
        while (waited := self._clock() - since) < self.timeout_s:
            self._sleep(min(self.poll_s, self.timeout_s - waited))
            now = self._read()
            if now != raw:
                lease = _parse(now)
                if lease is None or _released(lease):
                    return now
                raise UserError(_busy(self.name, lease, self.timeout_s, "its heartbeat is live"))
        self._stale = (raw, since)
        return raw

    def acquire(self) -> None:
        """Take the lease, or raise UserError naming the live driver that holds it (see `check`)."""
        raw = self._free()
        started, value = self._clock(), self._value(1)
        if not self._swap(raw, value):      # another driver wrote between our read and our write: it runs
            held = self.current() or {}
            raise UserError(_busy(self.name, held, self.timeout_s, "it took the lease just now"))
        self._raw, self._beats, self._last_ok = value, 1, started
        self._thread = threading.Thread(target=self._keep, name="dsearch-lease", daemon=True)
        self._thread.start()

    # --- holding it --------------------------------------------------------------------------------------------

    @property
    def lost(self) -> str | None:
        """Why this driver no longer holds the lease (another driver took it; no beat written for timeout_s
        less one beat, by this driver's clock), else None. Once lost, it stays lost."""
        if self._lost is None and self._last_ok is not None \
                and self._clock() - self._last_ok >= self.timeout_s - self.heartbeat_s:
            self._lost = (f"no heartbeat could be written for {self.timeout_s - self.heartbeat_s:.0f} s (a stalled "
                          "or unreachable database), so another driver may take the study over")
        return self._lost

    def lost_error(self) -> LeaseLost:
        """The error that stops a run whose lease is lost (exit status 3)."""
        return LeaseLost(f"study {self.name!r}: this driver lost its lease: {self.lost}; it stopped, and left the "
                         "study's trials as they are, to the driver that runs the study now (run again to "
                         "continue if none does)")

    def _keep(self) -> None:
        while not self._stop.wait(self.heartbeat_s) and self.lost is None:
            self._beat()

    def _beat(self) -> None:
        """Write the next heartbeat over our own last one; finding another driver's lease there means lost."""
        started, value = self._clock(), self._value(self._beats + 1)
        try:
            if self._swap(self._raw, value):
                self._raw, self._beats, self._last_ok = value, self._beats + 1, started
                return
            raw = self._read()
        except Exception:  # a database hiccup: the next beat tries again; `lost` counts the time without one
            return
        lease = _parse(raw)
        if self._mine(lease):       # a write that raised had committed after all: ours still, beat from it
            self._raw = raw
            return
        self._lost = (f"pid {lease.get('pid')} on host {lease.get('host')} took it over" if lease
                      else "its lease was removed from the study")

    def release(self) -> None:
        """Stop the heartbeat and mark the lease released, if it is still ours (never another driver's)."""
        self._stop.set()
        if self._thread is None:
            return
        self._thread.join(timeout=5)
        self._thread = None
        for _ in range(3):      # a beat still in flight may land first: ours too, release from it
            raw, value = self._raw, self._value(self._beats + 1, released=True)
            try:
                if raw is None or self._swap(raw, value):
                    return
                raw = self._read()
            except Exception:   # the database is gone: the lease goes stale instead
                return
            if not self._mine(_parse(raw)) or _released(_parse(raw)):
                return
            self._raw = raw

    def __enter__(self) -> "StudyLease":
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


def _alive(pid: Any) -> bool:
    """Whether a process of this machine with that pid exists (one we may not signal counts as alive)."""
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, TypeError, ValueError, OverflowError):
        return True
    return True


def _lease_text(storage: Any, study_id: int) -> str | None:
    """The lease's raw JSON in study `study_id` of an RDB storage, None if it has none; one read."""
    import sqlalchemy as sa

    table = _table()
    with storage.engine.connect() as conn:
        return conn.execute(sa.select(table.c.value_json).where(
            table.c.study_id == study_id, table.c.key == LEASE_ATTR)).scalar_one_or_none()


def _written_on(lease: dict, host: str, boot: str) -> bool:
    """Written on the machine of `host` and kernel `boot` (same host name and boot: the same clock)."""
    return bool(boot) and lease.get("boot") == boot and lease.get("host") == host


def _table() -> Any:
    from optuna.storages._rdb import models

    return models.StudySystemAttributeModel.__table__


def _parse(raw: str | None) -> dict | None:
    if raw is None:
        return None
    value = json.loads(raw)
    return json.loads(value) if isinstance(value, str) else value


def _released(lease: dict) -> bool:
    return bool(lease.get("released")) or lease.get("heartbeat") == 0.0     # 0.0: how older versions released


def _boot_id() -> str:
    """This kernel's boot id (Linux), '' elsewhere: two processes with the same one share one clock."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _busy(name: str, held: dict, timeout_s: float, evidence: str) -> str:
    return (f"study {name!r} is being run by pid {held.get('pid')} on host {held.get('host')} ({evidence}); wait "
            f"for it, or if that driver is dead, run again: its lease is taken over once its heartbeat has stood "
            f"still for {timeout_s:.0f} s")


# --- read-only views (`dsearch status`): no lock taken, no lease written, nothing created ------------------------


def lock_holder(study_dir: Path) -> dict | None:
    """{"pid", "host"} of the process holding STUDY_DIR/run.lock (either None if it hasn't written them yet), else
    None. Never creates the file and never waits: a shared flock tried for an instant, as StudyLock.holder()."""
    try:
        with open(Path(study_dir) / LOCK_FILE) as f:       # "r": an absent file stays absent
            try:
                fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                words = f.read().split()
                pid = int(words[0]) if words and words[0].isdigit() else None
                return {"pid": pid, "host": words[1] if len(words) > 1 else None}
            fcntl.flock(f, fcntl.LOCK_UN)
    except OSError:
        return None
    return None


def read_lease(url: str, study_name: str, storage: Any = None, now: float | None = None) -> dict | None:
    """The lease recorded in study `study_name` (host, pid, beat, heartbeat: Unix time by the holder's clock, ...),
    with `released`, `same_machine`, `age_s` (now − heartbeat, by this host's clock) and `alive` added; None if
    the study has none. Reads only. `alive` is the judgement of StudyLease.holder: not released, heartbeat younger
    than the lease timeout, and on this machine its pid running; from another host its age compares two clocks,
    so it is a hint (a driver taking over watches the heartbeat move instead)."""
    from .storage import open_storage

    storage = storage if storage is not None else open_storage(url)
    lease = _parse(_lease_text(storage, storage.get_study_id_from_name(study_name)))
    if lease is None:
        return None
    timeout_s = float(os.environ.get("DSEARCH_LEASE_TIMEOUT_S", LEASE_TIMEOUT_S))
    same = _written_on(lease, socket.gethostname(), _boot_id())
    age = (time.time() if now is None else now) - float(lease.get("heartbeat") or 0.0)
    alive = not _released(lease) and age < timeout_s and (not same or _alive(lease.get("pid")))
    return {**lease, "released": _released(lease), "same_machine": same, "age_s": age, "alive": alive}
