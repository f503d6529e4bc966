"""`dsearch export`: a trial's weights and resolved config as a folder that `dsearch.load_model` reads."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..analysis.export import CONFIG_FILE, MODEL_FILE, TRIAL_FILE, export_trial
from ..search.io import read_stored_space
from ..search.record import EPOCHS_TRAINED, MAX_EPOCHS, find_trial, open_study
from .app import app


def export_command(study_dir: Path, trial: int, out: Path, storage: str | None = None) -> Path:
    """`dsearch export`: open the study, export the trial, say what was written."""
    study_dir = Path(study_dir)
    study = open_study(study_dir, storage, read_stored_space(study_dir))
    folder = export_trial(study, study_dir, trial, out)
    t = find_trial(study, trial)
    epochs = f"{t.user_attrs.get(EPOCHS_TRAINED, '?')} of {t.user_attrs.get(MAX_EPOCHS, '?')} epochs"
    print(f"exported trial {trial} of {study.study_name} ({t.state.name}, {epochs}) to {folder}: "
          f"{MODEL_FILE} (state_dict), {CONFIG_FILE}, {TRIAL_FILE}")
    print(f"load it with: dsearch.load_model({str(folder)!r})")
    return folder


@app.command()
def export(
    study_dir: Path = typer.Argument(..., help="study directory, e.g. studies/c10"),
    trial: int = typer.Option(..., "--trial", help="Optuna trial number"),
    out: Path = typer.Option(..., "--out", help="folder to write model.pt, config.json, trial.json"),
    storage: Optional[str] = typer.Option(None, "--storage", help="Optuna RDB URL (default: SQLite in the study dir)"),
) -> None:
    """A trial's weights and resolved config, loadable with dsearch.load_model(OUT)."""
    export_command(study_dir, trial, out, storage)
