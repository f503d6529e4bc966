"""What a study is doing now, read without touching it: `dsearch status` (cli/status.py).

The driver that holds the study: in a shared database its lease (search/lock.py: host, pid, heartbeat, judged as
a waiting driver would judge it, but never taken, beaten or written), else the flock on run.lock (tried for an
instant, never created). SQLite in a study folder has no heartbeat: the last trial update stands in for one (the
latest trial start or end, or the SQLite file's last write, which every epoch's record makes). Then the trials by
state (FAIL by reason), each running trial's epoch, rungs and ETA (its own mean epoch time × the epochs left), the
best full-budget val_acc and the size of the full-budget front over the study's objectives (the front as
report.py builds it: prepare_frame, classify_trials).

Nothing is created or written: a database file that isn't there, or one without Optuna's tables, is refused
before Optuna would create them, and a read that meets a SQLite write in progress ("database is locked") is
tried again for a moment. (SQLite itself may fold a write-ahead log left by a killed driver into the file when
the last connection closes, as any reader does; the study's content is unchanged.)
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from ..errors import UserError
from ..metrics import VAL_ACC
from ..search.lock import LOCK_FILE, lock_holder, read_lease
from ..search.record import CURVE, EPOCH_TIMES, EPOCHS_TRAINED, MAX_EPOCHS
from ..search.rungs import describe
from .pareto import COMPLETE
from .report import STATE_ORDER, count_states, prepare_frame, select_objectives

if TYPE_CHECKING:
    import optuna

    from ..search.schema import SearchSpace

LOCKED_TRIES = 5            # reads that meet "database is locked" (SQLite, a write in progress), 0.1 s apart, doubling
RUNNING = "RUNNING"
ARROWS = {"maximize": "↑", "minimize": "↓"}


class Driver(NamedTuple):
    """Who runs the study. source: "lease" (a study system attribute: any host), "run.lock" (a flock on this
    host), or None (no driver seen). alive: the lease judged as a waiting driver would (StudyLease.holder), or the
    flock held. heartbeat: Unix time by the holder's clock, heartbeat_age_s by this host's (lease only)."""

    source: str | None
    host: str | None = None
    pid: int | None = None
    alive: bool = False
    heartbeat: float | None = None
    heartbeat_age_s: float | None = None
    beat: int | None = None
    released: bool = False


class RunningTrial(NamedTuple):
    """A RUNNING trial: epochs trained of max_epochs, the last rung epoch it reached and the next one below
    max_epochs (None: none), its mean epoch time (s, from its epoch_times) and the seconds left to the next rung
    and to max_epochs at that pace (None: no epoch timed yet). started: Unix time."""

    trial: int
    epochs_trained: int
    max_epochs: int | None
    last_rung: int | None
    next_rung: int | None
    mean_epoch_s: float | None
    eta_next_rung_s: float | None
    eta_end_s: float | None
    started: float | None


class StudyStatus(NamedTuple):
    """A study as read at `read_at` (Unix time); `as_dict` is `dsearch status --json`'s object."""

    study: str
    storage: str
    read_at: float
    driver: Driver
    last_trial_update: float | None        # the latest trial start or end, or SQLite file write: Unix time
    counts: dict[str, int]                 # by state: COMPLETE, PRUNED, FAIL, RUNNING, WAITING (0 if none)
    fail_reasons: dict[str, int]           # FAIL trials by fail_reason ("unknown" without one)
    running: tuple[RunningTrial, ...]
    best_val_acc: tuple[int, float] | None  # (trial, val_acc) of the best full-budget trial
    front_size: int | None                 # full-budget trials on the front over `objectives`; None: not computable
    full_budget: int                       # the full-budget trials the front is taken over
    objectives: tuple[tuple[str, str], ...]   # (metric, direction)
    milestones: tuple[int, ...] | None     # the rung epochs, from the stored space (None: no space)
    max_epochs: int | None
    reduction_factor: float | None

    def as_dict(self) -> dict[str, Any]:
        out = self._asdict()
        out["driver"] = self.driver._asdict()
        out["running"] = [r._asdict() for r in self.running]
        out["best_val_acc"] = ({"trial": self.best_val_acc[0], VAL_ACC: self.best_val_acc[1]}
                               if self.best_val_acc else None)
        out["objectives"] = [{"metric": m, "direction": d} for m, d in self.objectives]
        out["milestones"] = list(self.milestones) if self.milestones is not None else None
        return out


# --- the arithmetic ------------------------------------------------------------------------------------------

def rung_position(epochs_trained: int, milestones: Sequence[int],
                  max_epochs: int | None) -> tuple[int | None, int | None]:
    """(the last rung epoch reached, the next rung epoch below max_epochs), None where there is none."""
    rungs = [r for r in milestones if max_epochs is None or r < max_epochs]
    last = max((r for r in rungs if r <= epochs_trained), default=None)
    upcoming = min((r for r in rungs if r > epochs_trained), default=None)
    return last, upcoming


def eta(epochs_trained: int, epoch_times: Sequence[Any], next_rung: int | None,
        max_epochs: int | None) -> tuple[float | None, float | None, float | None]:
    """(mean epoch time, seconds to the next rung, seconds to max_epochs): mean × epochs left; all None (or the
    mean alone, with no next rung / max_epochs) without a timed epoch. Seconds; untimed epochs (None) skipped."""
    times = [float(t) for t in epoch_times or () if isinstance(t, (int, float)) and math.isfinite(t) and t >= 0]
    if not times:
        return None, None, None
    mean = sum(times) / len(times)
    to_rung = mean * max(next_rung - epochs_trained, 0) if next_rung is not None else None
    to_end = mean * max(max_epochs - epochs_trained, 0) if max_epochs is not None else None
    return mean, to_rung, to_end


# --- reading ---------------------------------------------------------------------------------------------------

def read_status(study_dir: Path | None, storage: str | None = None, study_name: str | None = None,
                now: float | None = None) -> StudyStatus:
    """The study's status (see the module doc); UserError for no study there or a wrong name. Reads only."""
    delay = 0.1
    for attempt in range(LOCKED_TRIES):
        try:
            return _read(study_dir, storage, study_name, now)
        except Exception as e:
            if attempt == LOCKED_TRIES - 1 or not _locked(e):
                raise
        time.sleep(delay)
        delay *= 2
    raise AssertionError("unreachable")


def _locked(e: BaseException | None) -> bool:
    """Whether an error (or its cause) is SQLite's "database is locked": a write in progress, worth a retry."""
    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        if "database is locked" in str(e):
            return True
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return False


def _read(study_dir: Path | None, storage: str | None, study_name: str | None, now: float | None) -> StudyStatus:
    from ..search.io import open_study_with_space
    from ..search.storage import display_url, storage_url

    url = storage_url(study_dir, storage)
    _refuse_missing(url, storage)
    study, space = open_study_with_space(study_dir, storage, study_name)
    rdb = getattr(study._storage, "_backend", study._storage)      # the RDBStorage under Optuna's cache
    try:
        lease = read_lease(url, study.study_name, rdb, now)
        lock = next((lock_holder(d) for d in _lock_dirs(study_dir, url, study.study_name)
                     if (d / LOCK_FILE).exists()), None)
        return study_status(study, space, display_url(url), _driver(lease, lock), now, _sqlite_written(url))
    finally:
        rdb.engine.dispose()


def _sqlite_written(url: str) -> float | None:
    """When a SQLite study file (or its write-ahead log, where each commit lands) was last written, Unix time."""
    if not url.startswith("sqlite:///"):
        return None
    db = Path(url[len("sqlite:///"):])
    times = [p.stat().st_mtime for p in (db, db.with_name(db.name + "-wal")) if p.exists()]
    return max(times, default=None)


def _lock_dirs(study_dir: Path | None, url: str, name: str) -> list[Path]:
    """Where a `dsearch run` on this host would hold run.lock: the study folder; without one, `dsearch run`'s
    default studies/NAME, and the folder of a SQLite file named as a study folder's (STUDY_DIR/study.db)."""
    from ..search.storage import STUDY_DB

    if study_dir is not None:
        return [Path(study_dir)]
    dirs = [Path("studies") / name]
    if url.startswith("sqlite:///") and Path(url[len("sqlite:///"):]).name == STUDY_DB:
        dirs.append(Path(url[len("sqlite:///"):]).parent)
    return dirs


def _refuse_missing(url: str, storage: str | None) -> None:
    """UserError for a database Optuna would create, or write to, on opening: a SQLite file that isn't there, a
    database without Optuna's tables or their schema version. (A study folder without study.db: open_study says
    so.)"""
    import sqlalchemy as sa

    from ..search.storage import CONNECT_TIMEOUT_S, check_storage, db_exists, display_url

    check_storage(url)
    if not db_exists(url):
        if storage is not None:
            raise UserError(f"--storage {display_url(url)}: no such database file (check the path)")
        return
    parsed = sa.engine.make_url(url)
    args = {"connect_timeout": CONNECT_TIMEOUT_S} if parsed.get_backend_name() == "postgresql" else {}
    engine = sa.create_engine(url, connect_args=args)
    try:
        with engine.connect() as conn:
            has_studies = sa.inspect(conn).has_table("studies")
            # Optuna writes the schema version once its tables are made (the driver may be making them now); until
            # then, opening would write it too, and race the driver's write.
            versioned = has_studies and sa.inspect(conn).has_table("alembic_version") and \
                conn.execute(sa.text("SELECT count(*) FROM alembic_version")).scalar() > 0
    except sa.exc.SQLAlchemyError as e:
        cause = str(getattr(e, "orig", None) or e).strip().splitlines()
        raise UserError(f"{display_url(url)}: can't open the database ({cause[0] if cause else type(e).__name__}); "
                        "check the URL and that the server runs") from None
    finally:
        engine.dispose()
    if not has_studies:
        raise UserError(f"{display_url(url)} holds no study (no Optuna tables; `dsearch run SPACE.yaml` creates "
                        "them)")
    if not versioned:
        raise UserError(f"{display_url(url)}: the study's tables are being created (no schema version yet); "
                        "try again in a moment")


def _driver(lease: dict | None, lock: dict | None) -> Driver:
    """A live lease, else run.lock's holder (this host), else the last lease (stale or released), else none."""
    if lease is not None and (lease["alive"] or lock is None):
        return Driver("lease", lease.get("host"), lease.get("pid"), bool(lease["alive"]), lease.get("heartbeat"),
                      lease["age_s"], lease.get("beat"), bool(lease["released"]))
    if lock is not None:
        return Driver(LOCK_FILE, lock["host"], lock["pid"], True)
    return Driver(None)


def study_status(study: "optuna.Study", space: "SearchSpace | None", storage: str = "",
                 driver: Driver = Driver(None), now: float | None = None,
                 written: float | None = None) -> StudyStatus:
    """The status of an open study (the driver and, for SQLite, the file's last write read by the caller); a pure
    read of its trials."""
    from .plots import DOMINATED, FRONT, classify_trials

    frame = prepare_frame(study)
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    counts, reasons = count_states(frame)
    counts = {**dict.fromkeys(STATE_ORDER, 0), **counts}        # every state, for steady keys
    objectives = select_objectives(study, None)
    milestones = tuple(space.milestones) if space is not None else None
    space_max = space.budget.max_epochs if space is not None else None

    front_size, full_budget, best = None, 0, None
    if all(o.metric in frame for o in objectives):
        status = classify_trials(frame, objectives)
        usable = frame[status.isin((FRONT, DOMINATED))]
        front_size, full_budget = int((status == FRONT).sum()), len(usable)
        if VAL_ACC in usable and usable[VAL_ACC].notna().any():
            row = usable[VAL_ACC].idxmax()
            best = (int(usable.at[row, "trial"]), float(usable.at[row, VAL_ACC]))
    if best is None:            # val_acc not an objective: the last epoch of the full-budget curves
        finals = [(t.number, float(t.user_attrs[CURVE][-1])) for t in trials.values()
                  if t.state.name == COMPLETE and t.user_attrs.get(CURVE)]
        best = max(finals, key=lambda p: p[1], default=None)

    running = []
    for number in frame.loc[frame["state"] == RUNNING, "trial"]:
        t = trials.get(int(number))
        if t is None:
            continue
        epochs = int(t.user_attrs.get(EPOCHS_TRAINED, 0) or 0)
        max_epochs = t.user_attrs.get(MAX_EPOCHS) or space_max
        last, upcoming = rung_position(epochs, milestones or (), max_epochs)
        mean, to_rung, to_end = eta(epochs, t.user_attrs.get(EPOCH_TIMES) or (), upcoming, max_epochs)
        running.append(RunningTrial(t.number, epochs, max_epochs, last, upcoming, mean, to_rung, to_end,
                                    _stamp(t.datetime_start)))

    stamps = [_stamp(d) for t in trials.values() for d in (t.datetime_start, t.datetime_complete) if d is not None]
    stamps += [written] if written is not None else []      # SQLite: every epoch's attrs, not only starts and ends
    return StudyStatus(
        study=study.study_name, storage=storage, read_at=time.time() if now is None else now, driver=driver,
        last_trial_update=max(stamps, default=None), counts=counts, fail_reasons=reasons, running=tuple(running),
        best_val_acc=best, front_size=front_size, full_budget=full_budget,
        objectives=tuple((o.metric, o.direction) for o in objectives), milestones=milestones, max_epochs=space_max,
        reduction_factor=space.budget.reduction_factor if space is not None else None)


def _stamp(when: datetime | None) -> float | None:
    return when.timestamp() if when is not None else None      # Optuna's datetimes are this host's local time


# --- as text ---------------------------------------------------------------------------------------------------

def duration(seconds: float | None) -> str:
    """'42 s', '3 min 05 s', '2 h 10 min'; '?' for None."""
    if seconds is None:
        return "?"
    s = int(round(seconds))
    if s < 60:
        return f"{max(seconds, 0):.0f} s" if seconds >= 10 else f"{max(seconds, 0):.1f} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def _clock(when: float, now: float) -> str:
    return f"{datetime.fromtimestamp(when):%Y-%m-%d %H:%M:%S} ({duration(now - when)} ago)"


def driver_line(s: StudyStatus) -> str:
    """Who runs the study, and whether it looks alive."""
    d = s.driver
    who = f"pid {d.pid if d.pid is not None else '?'} on host {d.host or '?'}"
    if d.source == "lease":
        beat = f"last heartbeat {_clock(d.heartbeat, s.read_at)}" if d.heartbeat else "no heartbeat"
        if d.released:
            return f"driver: none now; the last was {who}, which released the study's lease ({beat})"
        state = "alive" if d.alive else "looks dead (its heartbeat stands still, or its pid is gone)"
        return f"driver: {who}, {state}; lease beat {d.beat}, {beat}"
    if d.source == LOCK_FILE:
        update = _clock(s.last_trial_update, s.read_at) if s.last_trial_update else "none yet"
        return (f"driver: {who}, alive (it holds run.lock); no heartbeat in a SQLite study folder: last trial "
                f"update {update}")
    left = s.counts.get(RUNNING, 0)
    if left:
        return (f"driver: none (no lease, run.lock free); {left} RUNNING trial{'s' * (left > 1)} left by a stopped "
                "driver, queued again by the next `dsearch run`")
    return "driver: none (no lease, run.lock free)"


def status_lines(s: StudyStatus) -> list[str]:
    """`dsearch status`'s text: the study, its driver, the trials, the running ones, best val_acc and front."""
    states = ", ".join(f"{state} {n}" for state, n in s.counts.items()) or "none yet"
    if s.fail_reasons:
        states += f" ({', '.join(f'{r} {n}' for r, n in s.fail_reasons.items())})"
    lines = [f"study {s.study} ({s.storage}), read {datetime.fromtimestamp(s.read_at):%Y-%m-%d %H:%M:%S}",
             driver_line(s), f"trials: {states}"]
    if s.milestones is not None and s.max_epochs is not None:
        rungs = [r for r in s.milestones if r < s.max_epochs]
        lines.append(describe(rungs, s.max_epochs, s.reduction_factor or 1.0))
    for r in s.running:
        of = f"/{r.max_epochs}" if r.max_epochs is not None else ""
        where = f"rung {r.last_rung} passed" if r.last_rung is not None else "no rung passed"
        ahead = (f"next rung {r.next_rung} in {duration(r.eta_next_rung_s)}" if r.next_rung is not None
                 else "no rung ahead")
        pace = f" ({duration(r.mean_epoch_s)} an epoch)" if r.mean_epoch_s is not None else " (no epoch timed yet)"
        lines.append(f"  trial {r.trial}: epoch {r.epochs_trained}{of}, {where}, {ahead}, "
                     f"full budget in {duration(r.eta_end_s)}{pace}")
    best = (f"{s.best_val_acc[1]:.4f} (trial {s.best_val_acc[0]})" if s.best_val_acc else "none yet")
    over = ", ".join(f"{m} {ARROWS.get(d, d)}" for m, d in s.objectives)
    if s.front_size is None:
        front = f"not computable (an objective of {over} is not recorded)"
    elif s.full_budget == 0:
        front = f"none yet (no full-budget trial; objectives {over})"
    else:
        front = f"{s.front_size} of {s.full_budget} full-budget trials over {over}"
    lines.append(f"best full-budget val_acc: {best}; front: {front}")
    return lines
