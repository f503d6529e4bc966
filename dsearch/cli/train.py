"""`dsearch train`: a run config from flags, a rich progress bar per epoch, metrics.csv and summary.json."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path
from typing import Any, Callable, List, Optional

import typer
from pydantic import ValidationError

from ..errors import UserError, did_you_mean
from ..metrics import (EPOCH, EPOCH_METRICS, EPOCH_TIME, IMAGES_PER_S, LR, MACS, MEMORY_EFFICIENT, MEMORY_WHY, PARAMS,
                       PEAK_MEMORY_BYTES, TRAIN_LOSS, TRAIN_TIME_S, VAL_ACC, VAL_LOSS, WALL_TIME_S)
from ..net.config import ModelConfig
from ..strict import format_validation_error
from ..training.config import DATASETS, DataConfig, RunConfig, TrainConfig
from .app import app, parse_sets

CHECKPOINT, METRICS_CSV, SUMMARY_JSON = "checkpoint.pt", "metrics.csv", "summary.json"

# What a resumed run may change: where and how fast it runs, not what it computes. train.epochs may
# change too (to extend a run) when the epochs already trained keep their lr (see check_resumable).
RESUME_MAY_CHANGE = ("train.device", "train.num_threads", "train.compile", "train.channels_last",
                     "data.root", "data.download", "data.num_workers")


def _validated(section: str, build: Callable[[], Any], model: type) -> Any:
    """build(), with a ValidationError as one line whose keys carry the section (`train.lr: ...`)."""
    try:
        return build()
    except ValidationError as e:
        raise UserError(format_validation_error(
            e, prefix=(section,), fields_at=lambda loc: list(model.model_fields) if len(loc) == 2 else [])) from None


def build_run_config(preset: str | None, dataset: str, sets: dict[str, Any], *, data_dir: Path | None = None,
                     epochs: int | None = None, subset: int | None = None, download: bool = False) -> RunConfig:
    """RunConfig from a preset (optional), dotted `model.*` / `train.*` / `data.*` overrides and flags."""
    if dataset not in DATASETS:
        raise UserError(f"--dataset {dataset!r}: unknown dataset (known: {', '.join(DATASETS)})"
                        f"{did_you_mean(dataset, DATASETS)}")
    parts: dict[str, dict[str, Any]] = {"model": {}, "train": {}, "data": {}}
    for key, value in sets.items():
        head, _, rest = key.partition(".")
        if head not in parts or not rest or "." in rest:
            raise UserError(f"--set {key}: keys are model.NAME, train.NAME or data.NAME (a bare NAME means model.NAME)")
        parts[head][rest] = value
    for name in ("in_channels", "num_classes"):
        if name in parts["model"]:
            raise UserError(f"--set model.{name}: comes from the dataset ({dataset}); drop it")
    if "name" in parts["data"]:
        raise UserError("--set data.name: the dataset is --dataset NAME; drop it")
    if preset is not None:
        from ..net.presets import get_preset

        base = get_preset(preset)
        model = _validated("model", lambda: base.with_overrides(**parts["model"]) if parts["model"] else base,
                           ModelConfig)
    else:
        model = _validated("model", lambda: ModelConfig(**parts["model"]), ModelConfig)
    data = {"name": dataset, "download": download, **parts["data"]}
    if data_dir is not None:
        data["root"] = data_dir
    if subset is not None:
        data["train_subset"] = subset
    train = dict(parts["train"])
    if epochs is not None:
        train["epochs"] = epochs
    return RunConfig(model=model, train=_validated("train", lambda: TrainConfig(**train), TrainConfig),
                     data=_validated("data", lambda: DataConfig(**data), DataConfig))


def write_metrics(path: Path, history: list[dict[str, Any]]) -> None:
    """One row per epoch, columns as the callback's metric keys."""
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(EPOCH_METRICS), extrasaction="ignore")
        w.writeheader()
        w.writerows(history)
    tmp.replace(path)


def epoch_line(m: dict[str, Any], epochs: int) -> str:
    """`epoch 3/300  train_loss 0.6114  val_loss 0.6054  val_acc 76.60%  lr 0.01  12.3 s  1024 img/s`."""
    val = (f"val_loss {m[VAL_LOSS]:.4f}  val_acc {100 * m[VAL_ACC]:.2f}%  " if m.get(VAL_ACC) is not None
           else "")
    return (f"epoch {m[EPOCH]}/{epochs}  train_loss {m[TRAIN_LOSS]:.4f}  {val}lr {m[LR]:g}  "
            f"{m[EPOCH_TIME]:.1f} s  {m[IMAGES_PER_S]:.0f} img/s")


class EpochProgress:
    """A rich bar for the current epoch (images/s, loss, ETA) and one printed line per finished epoch."""

    def __init__(self, epochs: int, batch_size: int, num_train: int, enabled: bool = True) -> None:
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)

        self.console = Console(soft_wrap=True, highlight=False)   # lines on stdout, the bar on stderr
        self.epochs, self.batch_size, self.num_train = epochs, batch_size, num_train
        bar_console = Console(stderr=True)
        # Only on a terminal: elsewhere rich draws no bar but ends with an empty line on stderr.
        enabled = enabled and bar_console.is_terminal
        self.bar = Progress(TextColumn("epoch {task.fields[epoch]}/{task.fields[epochs]}"), BarColumn(),
                            MofNCompleteColumn(), TextColumn("{task.fields[ips]:>6.0f} img/s"),
                            TextColumn("loss {task.fields[loss]}"), TimeElapsedColumn(), TextColumn("ETA"),
                            TimeRemainingColumn(), console=bar_console, transient=True,
                            disable=not enabled)
        self.task = None
        self.t0 = time.perf_counter()

    def __enter__(self) -> "EpochProgress":
        self.bar.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.bar.__exit__(*exc)

    def on_batch(self, epoch: int, step: int, steps: int, loss: float | None) -> None:
        if self.task is None or step == 1:
            if self.task is not None:
                self.bar.remove_task(self.task)
            self.t0 = time.perf_counter()
            self.task = self.bar.add_task("", total=steps, epoch=epoch, epochs=self.epochs, ips=0.0, loss="-")
        images = min(step * self.batch_size, self.num_train)
        fields: dict[str, Any] = {"ips": images / max(time.perf_counter() - self.t0, 1e-9)}
        if loss is not None:
            fields["loss"] = f"{loss:.4f}"
        self.bar.update(self.task, completed=step, **fields)

    def on_epoch(self, metrics: dict[str, Any]) -> None:
        self.console.print(epoch_line(metrics, self.epochs))


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def _show(v: Any) -> str:
    return json.dumps(v) if isinstance(v, (list, dict, str)) or v is None else str(v)


def _load_error(e: Exception) -> str:
    """torch.load's error in a few words (its weights_only message is a paragraph of advice)."""
    text = str(e)
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1]
    line = next((x.strip() for x in text.splitlines() if x.strip()), "")
    line = line.split(". ")[0][:160]
    return f"{e.__class__.__name__}: {line}" if line else e.__class__.__name__


def read_resume_checkpoint(ckpt: Path) -> dict[str, Any]:
    """The checkpoint `dsearch train --resume` continues from; UserError if it isn't one fit wrote."""
    from ..training.checkpoint import load_checkpoint

    try:
        state = load_checkpoint(ckpt)
    except Exception as e:  # torch raises several types for a truncated, garbage or foreign file
        raise UserError(f"--resume: {ckpt}: can't read it ({_load_error(e)}); it is truncated or not written "
                        "by `dsearch train`; start again with a new --out") from None
    keys = ("model", "optimizer", "epoch", "history", "config")
    if (not isinstance(state, dict) or any(k not in state for k in keys) or not isinstance(state["config"], dict)
            or not isinstance(state["history"], list)):
        raise UserError(f"--resume: {ckpt}: not a checkpoint written by `dsearch train` (expected the keys "
                        f"{', '.join(keys)}); start again with a new --out")
    return state


def check_resumable(state: dict[str, Any], run: RunConfig, ckpt: Path, *, final: bool) -> None:
    """Refuse to continue a checkpoint under other settings (one line naming the first difference).

    Only RESUME_MAY_CHANGE may differ, and train.epochs when the new schedule gives every epoch
    already trained the lr it was trained with (and leaves at least those epochs).
    """
    from ..training.schedule import schedule_lr

    where = f"--resume: {ckpt} was written by a different run"
    fix = "use the same settings, or a new --out"
    a, b = _flatten(state["config"]), _flatten(run.model_dump(mode="json"))
    for key in list(a) + [k for k in b if k not in a]:
        va, vb = a.get(key, "(absent)"), b.get(key, "(absent)")
        if va != vb and key != "train.epochs" and not key.startswith(RESUME_MAY_CHANGE):
            raise UserError(f"{where}: {key} {_show(va)} → {_show(vb)}; {fix}")
    history = state["history"]
    was_final = bool(history) and all(h.get("val_acc") is None for h in history)
    if history and was_final != final:
        raise UserError(f"{where}: --final {'on → off' if was_final else 'off → on'}; {fix}")
    done, epochs = int(state["epoch"]), run.train.epochs
    if epochs != a.get("train.epochs"):
        old = TrainConfig.model_validate(state["config"]["train"])   # equal to run.train but for epochs
        if epochs < done:
            raise UserError(f"--resume: {ckpt} already holds {done} epochs; train.epochs {epochs} is fewer "
                            f"(give --epochs ≥ {done})")
        # At each trained epoch's start and middle: a cosine schedule depends on the epochs at every step.
        for e, step in ((e, step) for e in range(done) for step in (0, 1)):
            before, after = schedule_lr(e, old, step, 2), schedule_lr(e, run.train, step, 2)
            if abs(before - after) > 1e-12 * max(before, after):
                raise UserError(f"{where}: train.epochs {old.epochs} → {epochs} changes the lr of epoch "
                                f"{e + 1}, already trained ({before:g} → {after:g}); keep --epochs "
                                f"{old.epochs}, or start a new --out")


def _check_out(out: Path) -> None:
    """UserError if `out` can't be a folder: it is a file, or below one."""
    for folder in (out, *out.parents):
        if folder.exists():
            if not folder.is_dir():
                what = "is a file" if folder == out else f"is below {folder}, which is a file"
                raise UserError(f"--out {out}: {what}; give a folder")
            return


def train_command(preset: str | None, dataset: str, sets: dict[str, Any], *, data_dir: Path | None,
                  epochs: int | None, subset: int | None, final: bool, resume: bool, out: Path | None,
                  download: bool, progress: bool = True) -> dict[str, Any]:
    """Run `dsearch train`: train, print a line per epoch, write metrics.csv and summary.json in out."""
    run = build_run_config(preset, dataset, sets, data_dir=data_dir, epochs=epochs, subset=subset,
                           download=download)
    out = Path(out) if out is not None else Path("runs") / f"{preset or 'custom'}-{dataset}{'-final' if final else ''}"
    _check_out(out)
    ckpt = out / CHECKPOINT
    if ckpt.exists() and not resume:
        raise UserError(f"{out} already holds a run ({CHECKPOINT}); pass --resume to continue it or --out NEW_DIR")
    if resume and not ckpt.exists():
        raise UserError(f"--resume: no {CHECKPOINT} in {out}; run without --resume to start")
    history: list[dict[str, Any]] = []
    if resume:
        state = read_resume_checkpoint(ckpt)
        check_resumable(state, run, ckpt, final=final)
        history.extend(state["history"])
        del state
    from ..net.cost import count_macs, count_params    # torch and the data only once the settings are checked
    from ..training.data import load_data
    from ..training.loop import fit

    data = load_data(run.data, final=final)          # a missing dataset: nothing written yet
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"--out {out}: can't create it ({e.strerror or e.__class__.__name__})") from None
    t = run.train
    bar = EpochProgress(t.epochs, t.batch_size, data.num_train, enabled=progress)
    bar.console.print(f"{data.describe()}; {t.epochs} epoch{'s' if t.epochs != 1 else ''}, batch {t.batch_size}, lr {t.lr:g}"
                      f"{' (final: train+val, test once at the end)' if final else ''}")

    def callback(metrics: dict[str, Any]) -> None:
        history.append(metrics)
        write_metrics(out / METRICS_CSV, history)
        bar.on_epoch(metrics)

    def started(precision: dict[str, Any]) -> None:
        bar.console.print(f"training in {precision['precision']} ({precision['precision_why']}); "
                          f"memory-efficient path {'on' if precision[MEMORY_EFFICIENT] else 'off'} ({precision[MEMORY_WHY]})")

    with bar:
        result = fit(run, data, callback=callback, checkpoint_path=ckpt, resume=resume, final=final,
                     on_batch=bar.on_batch, on_start=started)
    summary = {
        PARAMS: count_params(run.model),
        MACS: count_macs(run.model, input_size=(data.in_channels, data.image_size, data.image_size)),
        "best_val_acc": result.best_val_acc, "final_val_acc": result.final_val_acc,
        "test_acc": result.test_acc, "test_loss": result.test_loss, "epochs": result.epochs_trained,
        WALL_TIME_S: result.wall_time_s, TRAIN_TIME_S: result.train_time_s,
        IMAGES_PER_S: result.images_per_s, PEAK_MEMORY_BYTES: result.peak_memory_bytes,
        "num_train": data.num_train, "num_eval": data.num_eval, "eval_split": data.eval_split,
        **result.precision, "config": run.model_dump(mode="json"),
    }
    (out / SUMMARY_JSON).write_text(json.dumps(summary, indent=2) + "\n")
    acc = (f"test_acc {100 * result.test_acc:.2f}%" if result.test_acc is not None
           else f"best_val_acc {100 * (result.best_val_acc or 0):.2f}%")
    bar.console.print(f"{acc}  params {summary[PARAMS]:,}  MACs {summary[MACS]:,}  "
                      f"{result.wall_time_s:.0f} s  → {out}")
    return summary


@app.command()
def train(
    preset: Optional[str] = typer.Argument(None, help="preset name (optional; see `dsearch model --list`)"),
    dataset: str = typer.Option("cifar10", "--dataset", help="cifar10, cifar100, svhn, imagenet, fashion_mnist, "
                                "mnist or synthetic"),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="folder holding the dataset's files, or a "
                                            "torchvision-style root (default: $DSEARCH_DATA, standard places)"),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="key=value, value as YAML; model.*, train.*, "
                                             "data.* (bare key: model.*), repeatable"),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="epochs (default: the paper's for the dataset)"),
    subset: Optional[int] = typer.Option(None, "--subset", help="training images, drawn stratified after the "
                                         "validation split"),
    final: bool = typer.Option(False, "--final", help="train on train+val, report test accuracy once"),
    resume: bool = typer.Option(False, "--resume", help="continue from OUT/checkpoint.pt"),
    out: Optional[Path] = typer.Option(None, "--out", help="output folder (default runs/PRESET-DATASET)"),
    download: bool = typer.Option(False, "--download", help="fetch missing data with torchvision's downloaders"),
) -> None:
    """Train one DenseNet under the paper's protocol; writes metrics.csv and summary.json."""
    train_command(preset, dataset, parse_sets(set_, default_prefix="model."), data_dir=data_dir, epochs=epochs,
                  subset=subset, final=final, resume=resume, out=out, download=download)
