"""`dsearch export` and `load_model`: a trial's weights and resolved config as a folder anyone can load.

The folder holds `model.pt` (a plain state_dict, loadable with `torch.load(weights_only=True)`),
`config.json` (the trial's RunConfig as JSON) and `trial.json` (where it came from: study, trial
number, state, values, epochs). The checkpoint is checked against the config before anything is
written, so an export that succeeds always loads.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import UserError
from ..search import artifacts
from ..search.record import CHECKPOINT, EPOCHS_TRAINED, FAIL_REASON, MAX_EPOCHS, find_trial, trial_config

if TYPE_CHECKING:
    import optuna
    import torch
    from optuna.trial import FrozenTrial

MODEL_FILE = "model.pt"
CONFIG_FILE = "config.json"
TRIAL_FILE = "trial.json"


def checkpoint_file(trial: "FrozenTrial", study_dir: Path) -> str:
    """The trial's checkpoint: a local path (a relative one is taken from the study directory) or a URI.

    UserError if none is recorded, or if it can't be found there.
    """
    raw = trial.user_attrs.get(CHECKPOINT)
    if not raw:
        why = trial.user_attrs.get(FAIL_REASON) or "no checkpoint recorded"
        raise UserError(f"trial {trial.number} has no checkpoint (state {trial.state.name}, {why}); "
                        "only trials that trained keep weights")
    location = raw if artifacts.is_uri(raw) or Path(raw).is_absolute() else str(Path(study_dir) / raw)
    if not artifacts.exists(location):
        why = ("is not in the object store or can't be read from this machine (credentials? network?)"
               if artifacts.is_uri(location) else "does not exist (moved or deleted?)")
        raise UserError(f"trial {trial.number}'s checkpoint {artifacts.describe(location)} {why}; "
                        "the study records where it was written")
    return location


def read_weights(location: str | Path) -> dict[str, "torch.Tensor"]:
    """The model state_dict inside a checkpoint written by train.fit (key "model"), from a path or a URI."""
    from ..training.checkpoint import load_checkpoint

    path = artifacts.describe(str(location))
    try:
        checkpoint = load_checkpoint(io.BytesIO(artifacts.read_bytes(str(location))))
    except Exception as e:  # torch raises several types for a bad or foreign file
        raise UserError(f"checkpoint {path}: can't read it ({e.__class__.__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else 'no detail'})") from None
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("model"), dict):
        raise UserError(f"checkpoint {path}: expected a dict with a 'model' state_dict (as train.fit writes)")
    return checkpoint["model"]


def trial_weights(trial: "FrozenTrial", study_dir: Path) -> tuple[str, dict[str, "torch.Tensor"]]:
    """Where a trial's checkpoint is (path or URI) and the model state_dict in it; UserError if it has none or
    it can't be read."""
    location = checkpoint_file(trial, study_dir)
    return location, read_weights(location)


def build_loaded(model_config: dict[str, Any], state_dict: dict[str, "torch.Tensor"], source: str) -> "torch.nn.Module":
    """build_model(config) with the weights loaded strictly, in eval mode; UserError on any mismatch."""
    from ..net.config import ModelConfig
    from ..net.model import build_model

    model = build_model(ModelConfig.model_validate(model_config))
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as e:
        detail = " ".join(str(e).split())
        raise UserError(f"{source}: weights don't match the config's model ({detail[:300]})") from None
    return model.eval()


def export_trial(study: "optuna.Study", study_dir: Path, number: int, out: Path) -> Path:
    """Write trial `number`'s weights, config and provenance to folder `out`; returns `out`."""
    import torch

    trial = find_trial(study, number)
    path = checkpoint_file(trial, study_dir)
    weights = read_weights(path)
    config = trial_config(trial)
    model = build_loaded(config["model"], weights, f"trial {number}'s checkpoint {artifacts.describe(path)}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a directory")
    provenance = {
        "study": study.study_name, "trial": trial.number, "state": trial.state.name,
        "values": dict(zip(study.metric_names, trial.values)) if trial.values and study.metric_names
        else trial.values,
        "params": trial.params, EPOCHS_TRAINED: trial.user_attrs.get(EPOCHS_TRAINED),
        MAX_EPOCHS: trial.user_attrs.get(MAX_EPOCHS), "checkpoint": path,
    }
    try:
        out.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), out / MODEL_FILE)
        (out / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
        (out / TRIAL_FILE).write_text(json.dumps(provenance, indent=2) + "\n")
    except OSError as e:
        raise UserError(f"--out {out}: can't write ({e.strerror or e.__class__.__name__})") from None
    return out


def load_model(path: str | Path, device: "str | torch.device" = "cpu") -> "torch.nn.Module":
    """The DenseNet exported to folder `path` (config.json's model section + model.pt), eval mode, on `device`.

    `path` is a local folder or a URI (s3://…, gs://…) where an exported folder was copied.
    """
    from ..training.checkpoint import load_checkpoint

    folder = str(path)
    config_file, model_file = artifacts.join(folder, CONFIG_FILE), artifacts.join(folder, MODEL_FILE)
    for name, f in ((CONFIG_FILE, config_file), (MODEL_FILE, model_file)):
        if not artifacts.exists(f):
            raise UserError(f"{artifacts.describe(folder)}: no {name} (expected a folder written by `dsearch export`)")
    config = json.loads(artifacts.read_bytes(config_file))
    weights = load_checkpoint(io.BytesIO(artifacts.read_bytes(model_file)))
    return build_loaded(config["model"], weights, artifacts.describe(model_file)).to(device)
