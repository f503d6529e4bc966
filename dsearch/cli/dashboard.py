"""`dsearch dashboard`: serve a study in optuna-dashboard on 127.0.0.1 until Ctrl-C."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..errors import UserError
from ..search.io import read_stored_space
from ..search.record import open_study
from ..search.storage import storage_url, study_id
from .app import app
from .pareto import STORAGE_HELP, STUDY_DIR_HELP, STUDY_HELP


def check_port(port: int) -> None:
    """UserError if 127.0.0.1:port can't be bound (checked before the server prints its banner)."""
    import socket

    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as e:
            raise UserError(f"--port {port}: can't listen on 127.0.0.1 ({e.strerror or e}); pick another "
                            f"(e.g. --port {port + 1})") from None


def dashboard_command(study_dir: Path | None, storage: str | None = None, port: int = 8080,
                      study_name: str | None = None) -> None:
    """Serve optuna-dashboard for the study on 127.0.0.1:port until Ctrl-C.

    The dashboard lists every study in the storage; the printed URL opens this one.
    """
    from optuna_dashboard import run_server

    study = open_study(study_dir, storage, read_stored_space(study_dir), study_name)
    check_port(port)
    url = storage_url(study_dir, storage)
    print(f"optuna-dashboard for study {study.study_name}: "
          f"http://127.0.0.1:{port}/dashboard/studies/{study_id(url, study.study_name)} (Ctrl-C to stop)",
          flush=True)
    try:
        run_server(url, host="127.0.0.1", port=port)
    except KeyboardInterrupt:
        pass  # Ctrl-C is how the dashboard is meant to stop.


@app.command()
def dashboard(
    study_dir: Optional[Path] = typer.Argument(None, help=STUDY_DIR_HELP),
    port: int = typer.Option(8080, "--port", help="port on 127.0.0.1"),
    storage: Optional[str] = typer.Option(None, "--storage", help=STORAGE_HELP),
    study: Optional[str] = typer.Option(None, "--study", help=STUDY_HELP),
) -> None:
    """Serve the study in optuna-dashboard on 127.0.0.1 (Ctrl-C stops it)."""
    dashboard_command(study_dir, storage, port, study)
