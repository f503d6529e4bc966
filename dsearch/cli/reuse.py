"""`dsearch reuse`: the paper's Fig. 5 (feature reuse) for a trained network, as CSV + HTML, and its three findings.

The network is a study's trial (STUDY_DIR --trial N, or --storage URL [--study NAME] --trial N), a folder written
by `dsearch export`, or a checkpoint written by training (a dict with "model" and "config"). Everything is read
and checked before anything is written.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, Optional

import typer

from ..analysis.export import CONFIG_FILE, MODEL_FILE
from ..analysis.reuse import REUSE_DIR
from ..errors import UserError
from .app import app
from .pareto import STORAGE_HELP, STUDY_HELP, output_dir

if TYPE_CHECKING:
    import torch

    from ..analysis.reuse import ReuseResult

class Loaded(NamedTuple):
    model: "torch.nn.Module"
    what: str           # one line naming the network, for the output
    out_dir: Path       # default folder for the files
    stem: str           # file names: STEM.csv, STEM.html


def _from_trial(study_dir: Path | None, number: int, storage: str | None, study_name: str | None) -> Loaded:
    from ..analysis.export import build_loaded, trial_weights
    from ..search import artifacts
    from ..search.io import open_study_with_space
    from ..search.record import EPOCHS_TRAINED, MAX_EPOCHS, find_trial, trial_config

    study, _ = open_study_with_space(study_dir, storage, study_name)
    here = output_dir(study_dir, study.study_name)
    trial = find_trial(study, number)
    location, weights = trial_weights(trial, here)
    config = trial_config(trial)
    model = build_loaded(config["model"], weights, f"trial {number}'s checkpoint {artifacts.describe(location)}")
    epochs = f"{trial.user_attrs.get(EPOCHS_TRAINED, '?')} of {trial.user_attrs.get(MAX_EPOCHS, '?')} epochs"
    return Loaded(model, f"trial {number} of {study.study_name} ({trial.state.name}, {epochs})",
                  here / REUSE_DIR, f"trial-{number}")


def _from_checkpoint(path: Path) -> Loaded:
    from ..analysis.export import build_loaded
    from ..training.checkpoint import load_checkpoint

    expected = "expected a checkpoint written by training (a dict with 'model' and 'config')"
    try:
        state = load_checkpoint(path)
    except Exception as e:  # torch raises several types for a foreign or damaged file
        detail = str(e).splitlines()[0] if str(e) else "no detail"
        raise UserError(f"{path}: not a dsearch checkpoint ({e.__class__.__name__}: {detail[:200]}); "
                        f"{expected}") from None
    if not (isinstance(state, dict) and isinstance(state.get("model"), dict)
            and isinstance(state.get("config"), dict) and isinstance(state["config"].get("model"), dict)):
        keys = sorted(state)[:6] if isinstance(state, dict) else type(state).__name__
        raise UserError(f"{path}: not a dsearch checkpoint (found {keys}); {expected}, or an exported folder")
    model = build_loaded(state["config"]["model"], state["model"], f"checkpoint {path}")
    epoch = f", epoch {state['epoch']}" if "epoch" in state else ""
    return Loaded(model, f"checkpoint {path}{epoch}", path.parent, f"{path.stem}-{REUSE_DIR}")


def _from_export(folder: Path) -> Loaded:
    import json

    from ..analysis.export import TRIAL_FILE, load_model

    model = load_model(folder)
    what = f"exported network {folder}"
    try:
        t = json.loads((folder / TRIAL_FILE).read_text())
        what += f" (trial {t['trial']} of {t['study']}, {t['state']})"
    except (OSError, ValueError, KeyError, TypeError):
        pass                        # trial.json is provenance only; the network loads without it
    return Loaded(model, what, folder, REUSE_DIR)


def load_network(path: Path | None, trial: int | None, storage: str | None, study_name: str | None) -> Loaded:
    """The network PATH names: a study's trial (with --trial), an exported folder, or a training checkpoint."""
    if trial is not None:
        if path is None and storage is None:
            raise UserError("--trial needs a STUDY_DIR or --storage URL")
        return _from_trial(path, trial, storage, study_name)
    if storage is not None or study_name is not None:
        raise UserError("--storage/--study name a study: add --trial N")
    if path is None:
        raise UserError("give a STUDY_DIR with --trial N, a folder written by `dsearch export`, or a checkpoint")
    if not path.exists():
        raise UserError(f"{path} does not exist (give a study directory with --trial N, a folder written by "
                        "`dsearch export`, or a checkpoint .pt)")
    if path.is_file() and path.name == MODEL_FILE and (path.parent / CONFIG_FILE).is_file():
        path = path.parent                  # export's model.pt: a plain state dict, its config beside it
    if path.is_dir():
        from ..search.storage import STUDY_DB

        if (path / CONFIG_FILE).is_file() or (path / MODEL_FILE).is_file():
            return _from_export(path)
        if (path / STUDY_DB).is_file():
            raise UserError(f"{path} is a study directory: say which trial with --trial N")
        raise UserError(f"{path}: neither a study directory ({STUDY_DB}) nor a folder written by `dsearch export` "
                        f"({CONFIG_FILE} + {MODEL_FILE})")
    return _from_checkpoint(path)


def reuse_command(path: Path | None, trial: int | None = None, out: Path | None = None,
                  storage: str | None = None, study_name: str | None = None) -> "ReuseResult":
    """`dsearch reuse`: load the network, write its Fig. 5 CSV and HTML, print where and the three findings."""
    from ..analysis.reuse import finding_lines, write_reuse

    loaded = load_network(path, trial, storage, study_name)
    csv_path, html_path, result = write_reuse(loaded.model, out if out is not None else loaded.out_dir,
                                              loaded.stem, title=f"Feature reuse (DenseNet Fig. 5): {loaded.what}")
    shape = ", ".join(f"{b.num_layers}" for b in result.blocks)
    print(f"feature reuse of {loaded.what}: {len(result.blocks)} dense blocks of {shape} layers")
    print(f"CSV: {csv_path}")
    print(f"HTML: {html_path}")
    for line in finding_lines(result.findings):
        print(line)
    return result


@app.command()
def reuse(
    path: Optional[Path] = typer.Argument(None, metavar="PATH", help="study directory (with --trial), folder written by "
                                                     "`dsearch export`, or checkpoint .pt written by training"),
    trial: Optional[int] = typer.Option(None, "--trial", help="Optuna trial number (for a study)"),
    out: Optional[Path] = typer.Option(None, "--out", help="folder for the CSV and HTML (default: STUDY_DIR/reuse "
                                                           "as trial-N.*, the exported folder, or the checkpoint's)"),
    storage: Optional[str] = typer.Option(None, "--storage", help=STORAGE_HELP),
    study: Optional[str] = typer.Option(None, "--study", help=STUDY_HELP),
) -> None:
    """The paper's Fig. 5 for a trained network: per-block heatmaps of mean |weight| from source to target layer."""
    reuse_command(path, trial, out, storage, study)
