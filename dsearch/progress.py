"""`dsearch train`: a run config from flags, a rich progress bar per epoch, metrics.csv and summary.json."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path
from typing import Any

from .config import DataConfig, ModelConfig, RunConfig, TrainConfig
from .errors import UserError

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
        from .presets import get_preset

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
    from .train import METRICS

    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(METRICS), extrasaction="ignore")
        w.writeheader()
        w.writerows(history)
    tmp.replace(path)


def epoch_line(m: dict[str, Any], epochs: int) -> str:
    """`epoch 3/300  train_loss 0.6114  val_loss 0.6054  val_acc 76.60%  lr 0.01  12.3 s  1024 img/s`."""
    val = (f"val_loss {m['val_loss']:.4f}  val_acc {100 * m['val_acc']:.2f}%  " if m.get("val_acc") is not None
           else "")
    return (f"epoch {m['epoch']}/{epochs}  train_loss {m['train_loss']:.4f}  {val}lr {m['lr']:g}  "
            f"{m['epoch_time']:.1f} s  {m['images_per_s']:.0f} img/s")


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
    from .cost import count_macs, count_params
    from .data import load_data
    from .train import fit

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
        from .train import load_checkpoint

        history.extend(load_checkpoint(ckpt)["history"])
    with bar:
        result = fit(run, data, callback=callback, checkpoint_path=ckpt, resume=resume, final=final,
                     on_batch=bar.on_batch)
    summary = {
        "params": count_params(run.model),
        "macs": count_macs(run.model, input_size=(data.in_channels, data.image_size, data.image_size)),
        "best_val_acc": result.best_val_acc, "final_val_acc": result.final_val_acc,
        "test_acc": result.test_acc, "test_loss": result.test_loss, "epochs": result.epochs_trained,
        "wall_time_s": result.wall_time_s, "train_time_s": result.train_time_s,
        "images_per_s": result.images_per_s, "peak_memory_bytes": result.peak_memory_bytes,
        "num_train": data.num_train, "num_eval": data.num_eval, "eval_split": data.eval_split,
        "config": run.model_dump(mode="json"),
    }
    (out / SUMMARY_JSON).write_text(json.dumps(summary, indent=2) + "\n")
    acc = (f"test_acc {100 * result.test_acc:.2f}%" if result.test_acc is not None
           else f"best_val_acc {100 * (result.best_val_acc or 0):.2f}%")
    bar.console.print(f"{acc}  params {summary['params']:,}  MACs {summary['macs']:,}  "
                      f"{result.wall_time_s:.0f} s  → {out}")
    return summary
