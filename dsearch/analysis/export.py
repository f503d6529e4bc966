"""`dsearch export` and `load_model`: a trial's network as a folder anyone can load or deploy.

The folder holds the network in one format: `model.pt` (a plain state_dict, loadable with
`torch.load(weights_only=True)`; the default), `model.onnx` (ONNX, dynamic batch axis) or `model.ts` (TorchScript);
beside it `config.json` (the trial's RunConfig as JSON), `trial.json` (where it came from: study, trial number, how
it was picked, state, values, epochs) and `manifest.json` (what inference needs: input size, per-channel mean and
std, class names, format, opset, the check at export; deploy.manifest). The checkpoint is checked against the
config, and the written file against the PyTorch network on a batch of the trial's validation images (largest
logit difference ≤ deploy.TOLERANCE), before anything appears at `--out`: the folder is built beside it and renamed.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from ..errors import UserError, did_you_mean
from ..search import artifacts
from ..search.record import CHECKPOINT, EPOCHS_TRAINED, FAIL_REASON, MAX_EPOCHS, find_trial, trial_config
from .deploy import FORMATS, ONNX, STATE_DICT, TORCHSCRIPT

if TYPE_CHECKING:
    import optuna
    import torch
    from optuna.trial import FrozenTrial

MODEL_FILE = "model.pt"
ONNX_FILE = "model.onnx"
TORCHSCRIPT_FILE = "model.ts"
CONFIG_FILE = "config.json"
TRIAL_FILE = "trial.json"
MANIFEST_FILE = "manifest.json"
FORMAT_FILES = {STATE_DICT: MODEL_FILE, ONNX: ONNX_FILE, TORCHSCRIPT: TORCHSCRIPT_FILE}
CHECKED_WITH = {STATE_DICT: "dsearch.load_model", ONNX: "onnxruntime", TORCHSCRIPT: "torch.jit.load"}
# Every file an export writes: a new export into an existing folder replaces them all (a stale model file of
# another format would contradict the manifest); other files there are left alone.
EXPORT_FILES = (*FORMAT_FILES.values(), CONFIG_FILE, TRIAL_FILE, MANIFEST_FILE)


class Exported(NamedTuple):
    """What `export_trial` wrote: the folder, its files (the model file first) and the manifest."""

    folder: Path
    files: tuple[str, ...]
    manifest: dict[str, Any]


def check_format(fmt: str) -> str:
    """--format: one of deploy.FORMATS, else UserError; for onnx, UserError if its packages are missing."""
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}{did_you_mean(fmt, FORMATS)}")
    if fmt == ONNX:
        from .deploy import require_export_packages

        require_export_packages()
    return fmt


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


def _staging(out: Path) -> Path:
    """An empty folder beside `out`, in its nearest existing ancestor (so nothing is created at a failed export)."""
    anchor = next((p for p in (out.parent, *out.parent.parents) if p.exists()), Path("."))
    return Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=anchor))


def _publish(staged: Path, out: Path, names: tuple[str, ...]) -> None:
    """Move the staged files to `out`: a rename of the folder if `out` is new, else file by file (each atomic)."""
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staged, out)
        return
    for stale in set(EXPORT_FILES) - set(names):
        (out / stale).unlink(missing_ok=True)
    for name in names:
        os.replace(staged / name, out / name)
    staged.rmdir()


def _check(fmt: str, staged: Path, images: "torch.Tensor", expected: "torch.Tensor") -> float:
    """The largest |logit difference| between the PyTorch network and the file written in `staged`, read back."""
    import torch

    from .deploy import load_torchscript, max_difference, run_onnx

    if fmt == ONNX:
        return max_difference(run_onnx(staged / ONNX_FILE, images), expected)
    with torch.no_grad():
        if fmt == TORCHSCRIPT:
            return max_difference(load_torchscript(staged / TORCHSCRIPT_FILE)(images), expected)
        return max_difference(load_model(staged)(images), expected)


def export_trial(study: "optuna.Study", study_dir: Path, number: int, out: Path, fmt: str = STATE_DICT,
                 picked: str = "") -> Exported:
    """Write trial `number`'s network in format `fmt` (deploy.FORMATS), its config, provenance and manifest to
    folder `out`, after checking the written file against the network on a batch of its validation images.

    picked: how the trial was chosen (deploy.choose_trial), recorded in trial.json and the manifest. UserError on
    any failure, with nothing written.
    """
    import torch

    from .deploy import TOLERANCE, check_batch, manifest, write_onnx, write_torchscript

    check_format(fmt)
    trial = find_trial(study, number)
    path = checkpoint_file(trial, study_dir)
    weights = read_weights(path)
    config = trial_config(trial)
    model = build_loaded(config["model"], weights, f"trial {number}'s checkpoint {artifacts.describe(path)}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a directory")
    provenance = {
        "study": study.study_name, "trial": trial.number, "picked": picked or "by number", "state": trial.state.name,
        "values": dict(zip(study.metric_names, trial.values)) if trial.values and study.metric_names
        else trial.values,
        "params": trial.params, EPOCHS_TRAINED: trial.user_attrs.get(EPOCHS_TRAINED),
        MAX_EPOCHS: trial.user_attrs.get(MAX_EPOCHS), "checkpoint": path,
    }
    c = model.config
    batch = check_batch(config.get("data", {}), (c.in_channels, *_input_size(config)), c.num_classes)
    # The plain path for export: the memory-efficient one (autograd Functions) only runs with gradients, and
    # tracers see it. Same modules, same parameter names, so the same weights load.
    plain = build_loaded({**config["model"], "memory_efficient": False}, weights, "the export copy")
    with torch.no_grad():
        expected = plain(batch.images)
    example = batch.images[:2] if len(batch.images) >= 2 else batch.images.repeat(2, 1, 1, 1)
    files = (FORMAT_FILES[fmt], CONFIG_FILE, TRIAL_FILE, MANIFEST_FILE)
    staged = None
    try:
        staged = _staging(out)
        opset = None
        if fmt == ONNX:
            opset = write_onnx(plain, example, staged / ONNX_FILE)
        elif fmt == TORCHSCRIPT:
            write_torchscript(plain, example, staged / TORCHSCRIPT_FILE)
        else:
            torch.save(model.state_dict(), staged / MODEL_FILE)
        (staged / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
        difference = _check(fmt, staged, batch.images, expected)
        if not difference <= TOLERANCE:
            raise UserError(f"trial {number}'s {fmt} export doesn't reproduce the network: largest |logit "
                            f"difference| {difference:.3g} > {TOLERANCE:g} on {batch.what} ({CHECKED_WITH[fmt]}); "
                            f"nothing written to {out}")
        described = manifest(fmt, FORMAT_FILES[fmt], opset, batch, difference, CHECKED_WITH[fmt],
                             config.get("data", {}), provenance)
        (staged / TRIAL_FILE).write_text(json.dumps(provenance, indent=2) + "\n")
        (staged / MANIFEST_FILE).write_text(json.dumps(described, indent=2) + "\n")
        _publish(staged, out, files)
    except OSError as e:
        raise UserError(f"--out {out}: can't write ({e.strerror or e.__class__.__name__})") from None
    finally:
        if staged is not None and staged.exists():
            shutil.rmtree(staged, ignore_errors=True)
    return Exported(out, files, described)


def _input_size(config: dict[str, Any]) -> tuple[int, int]:
    """(H, W) of the trial's images: its dataset's image size (DataConfig.info)."""
    from ..training.config import DataConfig

    try:
        size = DataConfig.model_validate(config["data"]).info.image_size
    except Exception as e:  # a config recorded by another dsearch version
        raise UserError(f"the trial's recorded data config can't be read ({e.__class__.__name__}); "
                        "its input size is unknown") from None
    return size, size


def read_manifest(folder: str) -> dict[str, Any] | None:
    """An exported folder's manifest.json, or None for a folder exported before there was one (a state_dict)."""
    file = artifacts.join(folder, MANIFEST_FILE)
    if not artifacts.exists(file):
        return None
    try:
        return json.loads(artifacts.read_bytes(file))
    except ValueError:
        raise UserError(f"{artifacts.describe(file)}: not valid JSON; export the trial again") from None


def load_model(path: str | Path, device: "str | torch.device" = "cpu") -> "torch.nn.Module":
    """The DenseNet exported to folder `path` (config.json's model section + the weights), eval mode, on `device`.

    `path` is a local folder or a URI (s3://…, gs://…) where an exported folder was copied. A state_dict export
    (model.pt) and a TorchScript one (model.ts: its weights, in the network config.json describes) load; an ONNX
    one is a UserError that says to run model.onnx with onnxruntime.
    """
    from ..training.checkpoint import load_checkpoint

    folder = str(path)
    config_file = artifacts.join(folder, CONFIG_FILE)
    if not artifacts.exists(config_file):
        raise UserError(f"{artifacts.describe(folder)}: no {CONFIG_FILE} (expected a folder written by `dsearch export`)")
    fmt = (read_manifest(folder) or {}).get("format", STATE_DICT)
    if fmt == ONNX:
        raise UserError(f"{artifacts.describe(folder)}: an ONNX export; run {ONNX_FILE} with onnxruntime "
                        f"(InferenceSession), or export --format {STATE_DICT} or {TORCHSCRIPT} for dsearch.load_model")
    if fmt not in FORMAT_FILES:
        raise UserError(f"{artifacts.describe(folder)}: {MANIFEST_FILE} names format {fmt!r}; expected one of "
                        f"{', '.join(FORMATS)}")
    model_file = artifacts.join(folder, FORMAT_FILES[fmt])
    if not artifacts.exists(model_file):
        raise UserError(f"{artifacts.describe(folder)}: no {FORMAT_FILES[fmt]} (expected a folder written by "
                        "`dsearch export`)")
    config = json.loads(artifacts.read_bytes(config_file))
    data = io.BytesIO(artifacts.read_bytes(model_file))
    if fmt == TORCHSCRIPT:
        from .deploy import load_torchscript

        weights = load_torchscript(data).state_dict()
    else:
        weights = load_checkpoint(data)
    return build_loaded(config["model"], weights, artifacts.describe(model_file)).to(device)
