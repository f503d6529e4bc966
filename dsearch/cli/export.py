"""`dsearch export`: a trial's weights and resolved config as a folder that `dsearch.load_model` reads."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..analysis.export import CONFIG_FILE, MODEL_FILE, TRIAL_FILE, export_trial
from ..search.io import read_stored_space
from ..search.record import EPOCHS_TRAINED, MAX_EPOCHS, find_trial, open_study
from .app import app
from .pareto import STORAGE_HELP, STUDY_DIR_HELP, STUDY_HELP, output_dir


def export_command(study_dir: Path | None, trial: int, out: Path, storage: str | None = None,
                   study_name: str | None = None) -> Path:
    """`dsearch export`: open the study, export the trial, say what was written.

    A relative checkpoint path is taken from the study directory (studies/NAME with --storage alone).
    """
    study = open_study(study_dir, storage, read_stored_space(study_dir), study_name)
    folder = export_trial(study, output_dir(study_dir, study.study_name), trial, out)
    t = find_trial(study, trial)
    epochs = f"{t.user_attrs.get(EPOCHS_TRAINED, '?')} of {t.user_attrs.get(MAX_EPOCHS, '?')} epochs"
    print(f"exported trial {trial} of {study.study_name} ({t.state.name}, {epochs}) to {folder}: "
          f"{MODEL_FILE} (state_dict), {CONFIG_FILE}, {TRIAL_FILE}")
    print(f"load it with: dsearch.load_model({str(folder)!r})")
    return folder


@app.command()
def export(
    study_dir: Optional[Path] = typer.Argument(None, help=STUDY_DIR_HELP),
    trial: int = typer.Option(..., "--trial", help="Optuna trial number"),
    out: Path = typer.Option(..., "--out", help="folder to write model.pt, config.json, trial.json"),
    storage: Optional[str] = typer.Option(None, "--storage", help=STORAGE_HELP),
    study: Optional[str] = typer.Option(None, "--study", help=STUDY_HELP),
) -> None:
    """A trial's weights and resolved config, loadable with dsearch.load_model(OUT)."""
    export_command(study_dir, trial, out, storage, study)
