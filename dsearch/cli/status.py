"""`dsearch status`: what a study is doing now, read without touching it (safe beside a live `dsearch run`).

The study is a study directory (SQLite inside it), or `--storage URL [--study NAME]`, as for `dsearch pareto`.
Nothing is created or written (no run.lock, no study, no database file), and no lock is taken: the driver is read
from the study's lease (a shared database) or from whoever holds run.lock.

`--json` prints one JSON object, whose keys the command's docstring (`dsearch status --help`) lists.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Optional

import typer

from ..analysis.status import read_status, status_lines
from .app import app
from .pareto import STORAGE_HELP, STUDY_DIR_HELP, STUDY_HELP

CLEAR = "\033[2J\033[H"     # erase the terminal, cursor home
SEPARATOR = "-" * 40


def status_command(study_dir: Path | None, storage: str | None = None, study_name: str | None = None,
                   as_json: bool = False, watch: float | None = None) -> None:
    """Print the study's status once, or every `watch` seconds until Ctrl-C (which ends it with exit 0)."""
    tty = sys.stdout.isatty()
    first = True
    try:
        while True:
            status = read_status(study_dir, storage, study_name)
            if as_json:
                text = json.dumps(status.as_dict())
            else:
                text = "\n".join(status_lines(status))
            if watch is not None and not as_json:
                text = (CLEAR if tty else ("" if first else SEPARATOR + "\n")) + text
            print(text, flush=True)
            if watch is None:
                return
            first = False
            time.sleep(watch)
    except KeyboardInterrupt:
        if watch is None:
            raise
        print()


@app.command()
def status(
    study_dir: Optional[Path] = typer.Argument(None, help=STUDY_DIR_HELP),
    storage: Optional[str] = typer.Option(None, "--storage", help=STORAGE_HELP),
    study: Optional[str] = typer.Option(None, "--study", help=STUDY_HELP),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object (keys below)"),
    watch: Optional[float] = typer.Option(None, "--watch", min=0.1, metavar="SECONDS",
                                          help="refresh every SECONDS until Ctrl-C"),
) -> None:
    """A study's driver (host, pid, heartbeat, alive), trials by state, running trials' epoch, rung and ETA, best
    full-budget val_acc and front size. Reads only: no lock taken, nothing created; safe beside a live run.

    --json keys (times: Unix seconds, durations: seconds):
    study, storage (the URL, password hidden), read_at;
    driver: {source ("lease", "run.lock" or null: none seen), host, pid, alive, heartbeat (by the holder's clock;
    null with run.lock: SQLite in a study folder has none), heartbeat_age_s (by this host's clock), beat, released};
    last_trial_update: the latest trial start or end, or SQLite file write (each epoch writes);
    counts: trials by state (COMPLETE, PRUNED, FAIL, RUNNING, WAITING; 0 if none); fail_reasons: FAIL by reason;
    running: [{trial, epochs_trained, max_epochs, last_rung, next_rung (null: none ahead), mean_epoch_s,
    eta_next_rung_s, eta_end_s (the trial's mean epoch time × epochs left; null before a timed epoch), started}];
    best_val_acc: {trial, val_acc} of the best full-budget trial, or null;
    front_size: full-budget trials on the front over the study's objectives (null: one isn't recorded);
    full_budget: the trials the front is taken over; objectives: [{metric, direction}];
    milestones (rung epochs), max_epochs, reduction_factor: from the study's space (null without one).
    With --watch, one object a line per refresh.
    """
    status_command(study_dir, storage, study, as_json, watch)
