"""Where a study lives: a storage URL (SQLite in the study folder, or a database such as PostgreSQL), checked
and opened with one-line errors for a bad URL, a missing driver or a server that can't be reached.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import UserError

if TYPE_CHECKING:
    import optuna

STUDY_DB = "study.db"


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


def open_storage(url: str, writer: bool = False) -> "optuna.storages.RDBStorage":
    """The Optuna RDB storage at `url` (tables created if new); UserError (one line) for a bad URL, a missing
    driver, or a database that can't be reached. `writer`: the driver's own connection, which puts a SQLite
    study in write-ahead-log mode (readers leave the file as it is)."""
    import optuna
    import sqlalchemy.exc

    check_storage(url)
    try:
        storage = optuna.storages.RDBStorage(url)
        if writer and storage.engine.name == "sqlite":
            from sqlalchemy import event

            event.listen(storage.engine, "connect", _sqlite_pragmas)
            storage.engine.dispose()          # the connection made while creating the tables: reopened with them
        return storage
    except sqlalchemy.exc.SQLAlchemyError as e:
        cause = str(getattr(e, "orig", None) or e).strip().splitlines()
        raise UserError(f"{display_url(url)}: can't open the database ({cause[0] if cause else type(e).__name__}); "
                        "check the URL, that the server runs and that the role may create tables") from None


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
