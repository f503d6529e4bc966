"""`dsearch run`: from a space file to a study that holds every trial, resumable after a kill."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from ..errors import RunFailed, RunInterrupted, UserError
from ..search import artifacts
from ..search.io import SPACE_FILE, check_same_space, load_space
from ..search.schema import SearchSpace
from ..search.session import run_study
from ..search.storage import STUDY_DB, check_storage
from ..search.tracking import check_tracking
from .app import app


def with_overrides(space: SearchSpace, cpus: float | None, gpus: float | None) -> SearchSpace:
    """The space with --cpus-per-trial / --gpus-per-trial applied, validated like the file's own values."""
    from pydantic import ValidationError

    from ..strict import format_validation_error

    update = {k: v for k, v in (("cpu", cpus), ("gpu", gpus)) if v is not None}
    try:
        res = type(space.resources).model_validate({**space.resources.model_dump(), **update})
    except ValidationError as e:
        flag = {"cpu": "--cpus-per-trial", "gpu": "--gpus-per-trial"}[str(e.errors()[0]["loc"][0])]
        raise UserError(f"{flag}: {format_validation_error(e, prefix=['resources'])}") from None
    return space.model_copy(update={"resources": res})


def run_command(space_path: Path, study_dir: Path | None, storage: str | None, ray_address: str | None,
                cpus: float | None, gpus: float | None, quiet: bool = False,
                storage_path: str | None = None, mlflow: str | None = None) -> dict[str, Any]:
    """Run or continue a search; returns the summary (counts by state, best val_acc, wall time).

    Raises RunInterrupted after SIGINT / SIGTERM, once the running trials are queued again.
    """
    space = with_overrides(load_space(space_path), cpus, gpus)
    if mlflow:
        space = space.model_copy(update={"tracking": space.tracking.model_copy(update={"mlflow": mlflow})})
    check_tracking(space)              # MLflow asked for but not installed: before Ray starts
    if storage:
        check_storage(storage)         # a bad URL or a missing driver: one line, before Ray starts
    study_dir = Path(study_dir or Path("studies") / space.name)
    # A --storage-path holds many studies: each keeps its trials in its own folder there.
    trials = (artifacts.TrialStorage(artifacts.join(storage_path, space.name)) if storage_path
              else artifacts.TrialStorage.of_study(study_dir))
    stored = study_dir / SPACE_FILE
    if stored.exists():
        check_same_space(space, stored)
    elif study_dir.exists() and (study_dir / STUDY_DB).exists():
        raise UserError(f"{study_dir} holds a study but no {SPACE_FILE}; use a new --study-dir")
    again = " ".join([f"dsearch run {space_path} --study-dir {study_dir}"]
                     + [f"{flag} {value}" for flag, value in (("--storage", storage), ("--storage-path", storage_path),
                                                               ("--ray-address", ray_address),
                                                               ("--mlflow", mlflow)) if value])
    return run_study(space, study_dir, storage, ray_address, trials, storage_path is None, again,
                     say=(lambda line: None) if quiet else print, live=not quiet)


def print_summary(summary: dict[str, Any]) -> None:
    counts = ", ".join(f"{k} {v}" for k, v in sorted(summary["trials"].items()))
    best = summary["best_val_acc"]
    over = summary["overhead_share"]
    print(f"study {summary['study']}: {summary['wall_time_s']:.0f} s; trials: {counts}; best full-budget "
          f"val_acc: {'n/a' if best is None else f'{best:.4f}'}"
          + ("" if over is None else f"; dsearch+Ray overhead {over:.1%} of trial wall time"))


@app.command()
def run(
    space: Path = typer.Argument(..., help="search space YAML, e.g. spaces/cifar_bc.yaml"),
    study_dir: Optional[Path] = typer.Option(None, "--study-dir", help="default: studies/<name>"),
    storage: Optional[str] = typer.Option(None, "--storage", help="Optuna RDB URL (default: SQLite in the study dir)"),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help="existing Ray cluster (default: local)"),
    storage_path: Optional[str] = typer.Option(
        None, "--storage-path", help="where trials keep folders and checkpoints, in a folder per study: a folder "
        "every node sees, or s3://BUCKET/PATH, gs://BUCKET/PATH (default: STUDY_DIR/ray)"),
    cpus_per_trial: Optional[float] = typer.Option(None, "--cpus-per-trial", help="override resources.cpu"),
    gpus_per_trial: Optional[float] = typer.Option(None, "--gpus-per-trial", help="override resources.gpu"),
    quiet: bool = typer.Option(False, "--quiet", help="no live table"),
    mlflow: Optional[str] = typer.Option(
        None, "--mlflow", help="log the search to this MLflow tracking URI (overrides tracking.mlflow): a parent "
        "run for the study, a child run per trial; needs dsearch[mlflow]"),
) -> None:
    """Run (or continue) a search: Ray Tune + ASHA trials recorded in an Optuna study."""
    # After SIGINT / SIGTERM run_command raises RunInterrupted: main says how to continue, exit 128 + signal.
    try:
        summary = run_command(space, study_dir, storage, ray_address, cpus_per_trial, gpus_per_trial, quiet,
                              storage_path, mlflow)
    except (RunInterrupted, RunFailed) as e:
        print_summary(e.summary)       # the study's state, then main's one line
        raise
    print_summary(summary)
