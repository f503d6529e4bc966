"""Where a study lives: a storage URL (SQLite in the study folder, or a database such as PostgreSQL), checked
and opened with one-line errors for a bad URL, a missing driver or a server that can't be reached.

A search outlives database hiccups: connections to a server are checked before use (`pool_pre_ping`; Optuna
turns it on only for MySQL), and the driver's storage (`open_storage(url, writer=True)`) retries every call
while the database can't be reached, with backoff, for up to $DSEARCH_DB_RETRY_S seconds (DB_RETRY_S) in all.
Past that it raises DatabaseUnreachable: the run stops, and the trials it leaves RUNNING are queued again by
the next run.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from ..errors import DatabaseUnreachable, UserError

if TYPE_CHECKING:
    import optuna

STUDY_DB = "study.db"
DB_RETRY_S = 180.0          # how long the driver waits for its database to answer again ($DSEARCH_DB_RETRY_S)
CONNECT_TIMEOUT_S = 10      # a server that doesn't answer a connection within this is down for this attempt


STORAGE_FORMS = ("sqlite:///PATH, postgresql://USER@HOST:PORT/DB (pip install 'dsearch[postgres]'), "
                 "mysql+pymysql://USER@HOST:PORT/DB (pip install pymysql)")


def storage_url(study_dir: Path | None, storage: str | None = None) -> str:
    """The given RDB URL, or SQLite in the study directory."""
    if storage:
        return storage
    if study_dir is None:
        raise UserError("no study given: pass a study directory (e.g. studies/c10), or --storage URL --study NAME")
    return f"sqlite:///{(Path(study_dir) / STUDY_DB).resolve()}"


def display_url(url: str) -> str:
    """A storage URL as shown in messages: the password, if any, as ***."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url


def check_storage(url: str) -> None:
    """UserError (one line) unless `url` is a database URL that SQLAlchemy knows and whose driver is installed.

    Checks only the URL and the driver import; nothing connects (open_storage does).
    """
    import sqlalchemy.exc
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except (sqlalchemy.exc.ArgumentError, ValueError):
        raise UserError(f"--storage {url!r}: not a database URL; use {STORAGE_FORMS}") from None
    shown = display_url(url)
    try:
        dialect = parsed.get_dialect()
    except sqlalchemy.exc.NoSuchModuleError:
        raise UserError(f"--storage {shown}: unknown database {parsed.drivername!r}; "
                        f"use {STORAGE_FORMS}") from None
    try:
        (getattr(dialect, "import_dbapi", None) or dialect.dbapi)()
    except ImportError as e:
        module = (e.name or parsed.get_driver_name()).split(".")[0]
        fix = _DRIVER_PACKAGES.get(module, f"pip install the Python driver {module!r} for {parsed.drivername}")
        raise UserError(f"--storage {shown}: its {parsed.get_backend_name()} driver ({module}) is not installed; "
                        f"{fix}") from None


# What to install for a driver SQLAlchemy couldn't import (postgresql:// is psycopg 3 from SQLAlchemy 2.1 on).
_DRIVER_PACKAGES = {
    "psycopg": "pip install 'dsearch[postgres]' (psycopg[binary])",
    "psycopg2": "pip install psycopg2-binary, or use postgresql://... with pip install 'dsearch[postgres]'",
    "MySQLdb": "pip install pymysql and use mysql+pymysql://USER@HOST:PORT/DB",
    "pymysql": "pip install pymysql",
}


def _sqlite_pragmas(dbapi_connection: Any, record: Any) -> None:
    """Every SQLite connection: write-ahead logging with synchronous=NORMAL. A commit is then an append to the
    log, not an fsync of the database (about 4 ms each here, and the driver commits every user attribute);
    still atomic and durable against a killed process; a power cut may lose the last commits, never the file."""
    import sqlite3

    if isinstance(dbapi_connection, sqlite3.Connection):
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()


def open_storage(url: str, writer: bool = False) -> Any:
    """The Optuna RDB storage at `url` (tables created if new); UserError (one line) for a bad URL, a missing
    driver, or a database that can't be reached. `writer`: the driver's own storage, which puts a SQLite study in
    write-ahead-log mode (readers leave the file as it is) and retries while the database can't be reached
    (RetryingStorage around Optuna's cached RDB storage); else the `optuna.storages.RDBStorage` itself."""
    import optuna
    import sqlalchemy.exc
    from sqlalchemy.engine import make_url

    check_storage(url)
    kwargs: dict[str, Any] = {}
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        # A pooled connection the server dropped (a restart, an idle timeout) is replaced before use, not
        # found dead by the next write.
        kwargs["pool_pre_ping"] = True
        if parsed.get_backend_name() == "postgresql" and "connect_timeout" not in parsed.query:
            kwargs["connect_args"] = {"connect_timeout": CONNECT_TIMEOUT_S}
    try:
        storage = optuna.storages.RDBStorage(url, engine_kwargs=kwargs)
        if writer and storage.engine.name == "sqlite":
            from sqlalchemy import event

            event.listen(storage.engine, "connect", _sqlite_pragmas)
            storage.engine.dispose()          # the connection made while creating the tables: reopened with them
        if writer:
            return RetryingStorage(optuna.storages.get_storage(storage), url)
        return storage
    except sqlalchemy.exc.SQLAlchemyError as e:
        cause = str(getattr(e, "orig", None) or e).strip().splitlines()
        raise UserError(f"{display_url(url)}: can't open the database ({cause[0] if cause else type(e).__name__}); "
                        "check the URL, that the server runs and that the role may create tables") from None


class RetryingStorage:
    """An Optuna storage whose every call is tried again while the database can't be reached (a dropped
    connection, a server restarting: SQLAlchemy's OperationalError, InterfaceError, DisconnectionError), after
    0.5, 1, 2, 4, 8, 8 ... s, for up to `retry_s` (default $DSEARCH_DB_RETRY_S or DB_RETRY_S) in all; then
    DatabaseUnreachable. Other errors are raised at once.

    Each call is one transaction of Optuna's RDB storage, so a call tried again either did nothing the first
    time or (its commit done, the answer lost) is written again: the same value for attributes; a trial's end
    already recorded is taken as done. `give_up()`, when set, is asked between tries (a run told to stop, a
    lost lease: stop waiting). Once it has given up, `unreachable` holds the error and later calls try once,
    so cleanup after the failure never waits the whole window again; a call that succeeds clears it.
    """

    def __init__(self, target: Any, url: str, retry_s: float | None = None,
                 sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic) -> None:
        if retry_s is None:
            retry_s = float(os.environ.get("DSEARCH_DB_RETRY_S", DB_RETRY_S))
        self._target, self._url, self.retry_s = target, url, retry_s
        self._sleep, self._clock = sleep, clock
        self.give_up: Callable[[], bool] | None = None
        self.unreachable: DatabaseUnreachable | None = None
        self._down_since: float | None = None

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name == "_target":     # pickling, copying: not the target's
            raise AttributeError(name)
        attr = getattr(self._target, name)
        if not callable(attr):
            return attr
        return lambda *args, **kwargs: self._call(name, attr, args, kwargs)

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k not in ("_sleep", "_clock", "give_up")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _sleep=time.sleep, _clock=time.monotonic, give_up=None)

    def _call(self, name: str, method: Callable, args: tuple, kwargs: dict) -> Any:
        start, delay, tries = self._clock(), 0.5, 0
        while True:
            tries += 1
            try:
                result = method(*args, **kwargs)
            except Exception as e:
                if tries > 1 and name == "set_trial_state_values" and _already_told(self._target, e, args, kwargs):
                    return True       # the first try's commit went through; its answer was lost
                cause = _unreachable_cause(e)
                if cause is None:
                    raise
                waited = self._clock() - start
                stop = self.give_up is not None and self.give_up()
                if self.unreachable is not None or stop or waited >= self.retry_s:
                    self.unreachable = DatabaseUnreachable(self._message(cause, waited, stop))
                    raise self.unreachable from e
                if self._down_since is None:
                    self._down_since = start
                    _warn(f"dsearch: the study's database {display_url(self._url)} does not answer ({cause}); "
                          f"waiting up to {self.retry_s:g} s for it")
                self._wait(min(delay, self.retry_s - waited))
                delay = min(2 * delay, 8.0)
                continue
            if self._down_since is not None:
                _warn(f"dsearch: the study's database answers again (after {self._clock() - self._down_since:.0f} s)")
            self._down_since = self.unreachable = None
            return result

    def _wait(self, seconds: float) -> None:
        """Sleep, in short steps while give_up() may end the wait."""
        end = self._clock() + seconds
        while (left := end - self._clock()) > 0:
            if self.give_up is not None and self.give_up():
                return
            self._sleep(min(left, 0.25))

    def _message(self, cause: str, waited: float, stopped: bool) -> str:
        """One line (the CLI shows 300 characters): what, why the run stopped, how to continue."""
        how_long = ("" if self.unreachable is not None else " (the run was told to stop)" if stopped
                    else f" for {waited:.0f} s")
        wait = "" if self.unreachable is not None or stopped else " (wait longer: DSEARCH_DB_RETRY_S)"
        return (f"the study's database {display_url(self._url)} did not answer{how_long} ({cause}); the run "
                f"stopped. Run the same command once it answers: unfinished trials are queued again{wait}")


def _unreachable_cause(error: BaseException) -> str | None:
    """What the connection error behind `error` says (Optuna wraps SQLAlchemy's, which wraps the driver's), in a
    few words; None if it is none."""
    import sqlalchemy.exc as sa

    seen = set()
    e: BaseException | None = error
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, (sa.OperationalError, sa.InterfaceError, sa.DisconnectionError, sa.TimeoutError)) or (
                isinstance(e, sa.DBAPIError) and e.connection_invalidated):
            text = str(getattr(e, "orig", None) or e).strip().splitlines()
            # psycopg: 'connection failed: connection to server at "HOST", port N failed: Connection refused'
            line = text[0].rsplit(": ", 1)[-1].strip() if text else type(e).__name__
            return line if len(line) <= 60 else line[:57] + "..."
        e = e.__cause__ or e.__context__
    return None


def _already_told(storage: Any, error: BaseException, args: tuple, kwargs: dict) -> bool:
    """Whether a trial's end that raised UpdateFinishedTrialError on a second try is the one the first try wrote."""
    import optuna

    if not isinstance(error, optuna.exceptions.UpdateFinishedTrialError):
        return False
    trial_id = kwargs.get("trial_id", args[0] if args else None)
    state = kwargs.get("state", args[1] if len(args) > 1 else None)
    try:
        return trial_id is not None and storage.get_trial(trial_id).state == state
    except Exception:
        return False


def _warn(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def database_unreachable(study: Any) -> "DatabaseUnreachable | None":
    """The error of a study whose database stopped answering in this run (RetryingStorage gave up), else None."""
    return getattr(study._storage, "unreachable", None) if isinstance(study._storage, RetryingStorage) else None


def pick_study(url: str, names: list[str], name: str | None) -> str:
    """`name` if the storage holds it, else the only study there; UserError listing the studies otherwise."""
    from ..errors import did_you_mean

    shown = display_url(url)
    if name is not None:
        if name in names:
            return name
        there = f"studies: {', '.join(names)}" if names else "it holds none"
        raise UserError(f"--study {name}: no such study in {shown}; {there}{did_you_mean(name, names)}")
    if len(names) == 1:
        return names[0]
    if not names:
        raise UserError(f"{shown} holds no study (was `dsearch run` interrupted before its first trial?)")
    raise UserError(f"{shown} holds {len(names)} studies; use --study NAME; studies: {', '.join(names)}")


def db_exists(url: str) -> bool:
    if url.startswith("sqlite:///"):
        return Path(url[len("sqlite:///"):]).exists()
    return True


def study_id(url: str, name: str) -> int:
    """The id of study `name` in the storage at `url` (optuna-dashboard's URLs use it)."""
    return open_storage(url).get_study_id_from_name(name)
