"""`dsearch export`: a trial's network (state_dict, ONNX or TorchScript), resolved config and preprocessing as a folder.

`--trial` is a trial number, `knee` (the knee of the full-budget front, as `dsearch pareto` reports it) or `best`
(the full-budget trial with the highest val_acc). The written file is checked against the network before the
folder appears (analysis/export.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..analysis.deploy import FORMATS, KNEE, ONNX, STATE_DICT, TORCHSCRIPT, choose_trial
from ..analysis.export import CHECKED_WITH, check_format, export_trial
from ..search.io import read_stored_space
from ..search.record import EPOCHS_TRAINED, MAX_EPOCHS, find_trial, open_study
from .app import app
from .pareto import STORAGE_HELP, STUDY_DIR_HELP, STUDY_HELP, output_dir


def export_command(study_dir: Path | None, trial: str | int, out: Path, storage: str | None = None,
                   study_name: str | None = None, fmt: str = STATE_DICT) -> Path:
    """`dsearch export`: open the study, pick and export the trial, say what was written and what it was checked on.

    A relative checkpoint path is taken from the study directory (studies/NAME with --storage alone).
    """
    check_format(fmt)
    study = open_study(study_dir, storage, read_stored_space(study_dir), study_name)
    number, picked = choose_trial(study, str(trial))
    t = find_trial(study, number)
    done = export_trial(study, output_dir(study_dir, study.study_name), number, out, fmt, picked)
    m = done.manifest
    epochs = f"{t.user_attrs.get(EPOCHS_TRAINED, '?')} of {t.user_attrs.get(MAX_EPOCHS, '?')} epochs"
    how = f"{picked}; " if picked else ""
    what = f"{fmt}, opset {m['opset']}" if fmt == ONNX else fmt
    print(f"exported trial {number} of {study.study_name} ({how}{t.state.name}, {epochs}) to {done.folder}: "
          f"{done.files[0]} ({what}), {', '.join(done.files[1:])}")
    check = m["check"]
    unknown = "" if m["mean"] is not None else "; normalisation unknown (mean/std null in the manifest)"
    print(f"checked with {CHECKED_WITH[fmt]} on {check['what']}: largest |logit difference| "
          f"{check['max_abs_diff']:.2g} (≤ {check['tolerance']:g}){unknown}")
    model_file = str(Path(done.folder) / done.files[0])
    if fmt == ONNX:
        print(f"run it with: onnxruntime.InferenceSession({model_file!r}) (input {m['input']['name']!r}, "
              f"N×{'×'.join(map(str, m['input_size']))}, normalised as {done.files[-1]} says)")
    elif fmt == TORCHSCRIPT:
        print(f"load it with: torch.jit.load({model_file!r}), or dsearch.load_model({str(done.folder)!r})")
    else:
        print(f"load it with: dsearch.load_model({str(done.folder)!r})")
    return done.folder


@app.command()
def export(
    study_dir: Optional[Path] = typer.Argument(None, help=STUDY_DIR_HELP),
    trial: str = typer.Option(..., "--trial", help=f"Optuna trial number, {KNEE!r} (the full-budget front's knee) "
                              "or 'best' (the full-budget trial with the highest val_acc)"),
    fmt: str = typer.Option(STATE_DICT, "--format", help=f"{' | '.join(FORMATS)}: model.pt (weights), model.onnx "
                            "(onnxruntime; pip install 'dsearch[export]') or model.ts (torch.jit)"),
    out: Path = typer.Option(..., "--out", help="folder to write the model file, config.json, trial.json, "
                             "manifest.json"),
    storage: Optional[str] = typer.Option(None, "--storage", help=STORAGE_HELP),
    study: Optional[str] = typer.Option(None, "--study", help=STUDY_HELP),
) -> None:
    """A trial's network, resolved config and preprocessing; a state_dict export loads with dsearch.load_model(OUT)."""
    export_command(study_dir, trial, out, storage, study, fmt)
