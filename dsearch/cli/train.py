"""`dsearch train`: a run config from flags, a rich progress bar per epoch, metrics.csv and summary.json."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path
from typing import Any, List, Optional

import typer

from ..errors import UserError
from ..metrics import (EPOCH, EPOCH_METRICS, EPOCH_TIME, IMAGES_PER_S, LR, MACS, PARAMS, PEAK_MEMORY_BYTES,
                       TRAIN_LOSS, TRAIN_TIME_S, VAL_ACC, VAL_LOSS, WALL_TIME_S)
from ..net.config import ModelConfig
from ..training.config import DataConfig, RunConfig, TrainConfig
from .app import app, parse_sets

CHECKPOINT, METRICS_CSV, SUMMARY_JSON = "checkpoint.pt", "metrics.csv", "summary.json"


def build_run_config(preset: str | None, dataset: str, sets: dict[str, Any], *, data_dir: Path | None = None,
                     epochs: int | None = None, subset: int | None = None, download: bool = False) -> RunConfig:
    """RunConfig from a preset (optional), dotted `model.*` / `train.*` / `data.*` overrides and flags."""
    parts: dict[str, dict[str, Any]] = {"model": {}, "train": {}, "data": {}}
    for key, value in sets.items():
        head, _, rest = key.partition(".")
        if head not in parts or not rest or "." in rest:
            raise UserError(f"--set {key}: keys are model.NAME, train.NAME or data.NAME (a bare NAME means model.NAME)")
        parts[head][rest] = value
    for name in ("in_channels", "num_classes"):
        if name in parts["model"]:
            raise UserError(f"--set model.{name}: comes from the dataset ({dataset}); drop it")
    if preset is not None:
        from ..net.presets import get_preset

        model = get_preset(preset).with_overrides(**parts["model"]) if parts["model"] else get_preset(preset)
    else:
        model = ModelConfig(**parts["model"])
    data = {"name": dataset, "download": download, **parts["data"]}
    if data_dir is not None:
        data["root"] = data_dir
    if subset is not None:
        data["train_subset"] = subset
    train = dict(parts["train"])
    if epochs is not None:
        train["epochs"] = epochs
    return RunConfig(model=model, train=TrainConfig(**train), data=DataConfig(**data))


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
        self.bar = Progress(TextColumn("epoch {task.fields[epoch]}/{task.fields[epochs]}"), BarColumn(),
                            MofNCompleteColumn(), TextColumn("{task.fields[ips]:>6.0f} img/s"),
                            TextColumn("loss {task.fields[loss]}"), TimeElapsedColumn(), TextColumn("ETA"),
                            TimeRemainingColumn(), console=Console(stderr=True), transient=True,
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


def train_command(preset: str | None, dataset: str, sets: dict[str, Any], *, data_dir: Path | None,
                  epochs: int | None, subset: int | None, final: bool, resume: bool, out: Path | None,
                  download: bool, progress: bool = True) -> dict[str, Any]:
    """Run `dsearch train`: train, print a line per epoch, write metrics.csv and summary.json in out."""
    from ..net.cost import count_macs, count_params
    from ..training.data import load_data
    from ..training.loop import fit

    run = build_run_config(preset, dataset, sets, data_dir=data_dir, epochs=epochs, subset=subset,
                           download=download)
    out = Path(out) if out is not None else Path("runs") / f"{preset or 'custom'}-{dataset}{'-final' if final else ''}"
    ckpt = out / CHECKPOINT
    if ckpt.exists() and not resume:
        raise UserError(f"{out} already holds a run ({CHECKPOINT}); pass --resume to continue it or --out NEW_DIR")
    if resume and not ckpt.exists():
        raise UserError(f"--resume: no {CHECKPOINT} in {out}; run without --resume to start")
    out.mkdir(parents=True, exist_ok=True)
    data = load_data(run.data, final=final)
    t = run.train
    bar = EpochProgress(t.epochs, t.batch_size, data.num_train, enabled=progress)
    bar.console.print(f"{data.describe()}; {t.epochs} epoch{'s' if t.epochs != 1 else ''}, batch {t.batch_size}, lr {t.lr:g}"
                      f"{' (final: train+val, test once at the end)' if final else ''}")

    def callback(metrics: dict[str, Any]) -> None:
        history.append(metrics)
        write_metrics(out / METRICS_CSV, history)
        bar.on_epoch(metrics)

    history: list[dict[str, Any]] = []
    if resume:
        from ..training.checkpoint import load_checkpoint

        history.extend(load_checkpoint(ckpt)["history"])
    with bar:
        result = fit(run, data, callback=callback, checkpoint_path=ckpt, resume=resume, final=final,
                     on_batch=bar.on_batch)
    summary = {
        PARAMS: count_params(run.model),
        MACS: count_macs(run.model, input_size=(data.in_channels, data.image_size, data.image_size)),
        "best_val_acc": result.best_val_acc, "final_val_acc": result.final_val_acc,
        "test_acc": result.test_acc, "test_loss": result.test_loss, "epochs": result.epochs_trained,
        WALL_TIME_S: result.wall_time_s, TRAIN_TIME_S: result.train_time_s,
        IMAGES_PER_S: result.images_per_s, PEAK_MEMORY_BYTES: result.peak_memory_bytes,
        "num_train": data.num_train, "num_eval": data.num_eval, "eval_split": data.eval_split,
        "config": run.model_dump(mode="json"),
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
