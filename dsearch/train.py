"""The paper's training protocol: SGD + Nesterov, step lr schedule (a pure function), fit, evaluate, checkpoints.

Knows nothing of Ray or Optuna: a search hooks in through fit's per-epoch callback.
"""

from __future__ import annotations

import os
import resource
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import RunConfig, TrainConfig
from .errors import UserError

# Metric names, defined once.
EPOCH, TRAIN_LOSS, VAL_LOSS, VAL_ACC, LR, EPOCH_TIME, IMAGES_PER_S = (
    "epoch", "train_loss", "val_loss", "val_acc", "lr", "epoch_time", "images_per_s")
METRICS = (EPOCH, TRAIN_LOSS, VAL_LOSS, VAL_ACC, LR, EPOCH_TIME, IMAGES_PER_S)
STOP = "stop"


class TrainingDiverged(UserError):
    """The loss became NaN or inf; the message names the epoch and the step."""


def lr_at(epoch: float, epochs: int, *, lr: float = 0.1, milestones: Sequence[float] = (0.5, 0.75),
          gamma: float = 0.1) -> float:
    """Learning rate at a (fractional, 0-based) epoch: lr × gamma^(milestones passed); milestones are fractions of epochs."""
    passed = sum(1 for m in milestones if epoch >= m * epochs - 1e-9)
    return lr * gamma ** passed


def schedule_lr(epoch: float, t: TrainConfig) -> float:
    """lr_at with a resolved TrainConfig's lr, milestones and gamma."""
    return lr_at(epoch, t.epochs, lr=t.lr, milestones=t.lr_milestones or (0.5, 0.75), gamma=t.lr_gamma)


@dataclass
class FitResult:
    """What a run produced; accuracies are fractions in [0, 1], times in seconds."""

    model: nn.Module
    history: list[dict[str, Any]] = field(default_factory=list)
    best_val_acc: float | None = None
    final_val_acc: float | None = None
    test_acc: float | None = None
    test_loss: float | None = None
    wall_time_s: float = 0.0
    train_time_s: float = 0.0
    images_per_s: float = 0.0
    peak_memory_bytes: int = 0
    epochs_trained: int = 0
    stopped_early: bool = False


def resolve_device(t: TrainConfig) -> torch.device:
    """`auto` is cuda when available, else cpu."""
    if t.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(t.device)


def amp_dtype(t: TrainConfig, device: torch.device) -> torch.dtype | None:
    """Autocast dtype: `auto` is bf16 on GPU and off on CPU."""
    mode = t.amp if t.amp != "auto" else ("bf16" if device.type == "cuda" else "off")
    return {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[mode]


def make_optimizer(model: nn.Module, t: TrainConfig) -> torch.optim.SGD:
    """SGD with (Nesterov) momentum and weight decay on every parameter, as the official code."""
    return torch.optim.SGD(model.parameters(), lr=t.lr, momentum=t.momentum, nesterov=t.nesterov,
                           weight_decay=t.weight_decay)


def evaluate(model: nn.Module, data, *, batch_size: int = 256, amp: torch.dtype | None = None,
             channels_last: bool = False) -> tuple[float, float]:
    """Mean cross-entropy loss (nats) and accuracy (fraction) on the data's eval split."""
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=data.device)
    correct = torch.zeros((), dtype=torch.long, device=data.device)
    n = 0
    with torch.inference_mode():
        for x, y in data.eval_batches(batch_size):
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with _autocast(data.device, amp):
                out = model(x)
            loss_sum += F.cross_entropy(out.float(), y, reduction="sum").double()
            correct += (out.argmax(1) == y).sum()
            n += len(y)
    return float(loss_sum) / max(n, 1), int(correct) / max(n, 1)


def _autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


def _epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 2_654_435_761 + epoch * 40_503 + 97) % (2 ** 63)


def peak_memory(device: torch.device) -> int:
    """Peak bytes so far: the CUDA allocator's on GPU, the process's max RSS on CPU."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux reports KiB


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write atomically: a temp file in the same folder, then os.replace."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def load_checkpoint(path: Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    """A checkpoint written by fit, loaded with weights_only=True (tensors and plain containers only)."""
    return torch.load(Path(path), map_location=device, weights_only=True)


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def _train_epoch(model: nn.Module, data, optimizer, scaler, t: TrainConfig, epoch: int, *, amp, channels_last: bool,
                 on_batch, checkpoint_path, lr: float) -> tuple[float, int]:
    """One pass over the training split; returns the mean loss (nats) and the images seen."""
    device = data.device
    steps = data.steps_per_epoch(t.batch_size)
    model.train()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    # The first non-finite step is tracked on the device, so a GPU checks it without a sync every step.
    first_bad = torch.full((), -1, dtype=torch.long, device=device)
    n = 0
    for step, (x, y) in enumerate(data.train_batches(t.batch_size, epoch=epoch, seed=t.seed), start=1):
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with _autocast(device, amp):
            out = model(x)
        loss = F.cross_entropy(out.float(), y)
        first_bad = torch.where(~torch.isfinite(loss.detach()) & (first_bad < 0), step, first_bad)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        loss_sum += loss.detach().double() * len(y)
        n += len(y)
        if (device.type == "cpu" or step % 50 == 0 or step == steps) and int(first_bad) > 0:
            kept = checkpoint_path if checkpoint_path else "not kept (no checkpoint path)"
            raise TrainingDiverged(f"training diverged: the loss became {float(loss.detach()):.4g} at epoch "
                                   f"{epoch + 1}, step {int(first_bad)} of {steps} (lr {lr:g}); the last good "
                                   f"checkpoint is {kept}; try a lower train.lr")
        if on_batch is not None:
            on_batch(epoch + 1, step, steps, float(loss.detach()) if step % 10 == 0 or step == steps else None)
    return float(loss_sum) / max(n, 1), n


def fit(run: RunConfig, data, *, callback: Callable[[dict], Any] | None = None,
        checkpoint_path: Path | None = None, resume: bool = False, final: bool = False,
        model: nn.Module | None = None,
        on_batch: Callable[[int, int, int, float | None], None] | None = None,
        eval_batch_size: int | None = None) -> FitResult:
    """Train under the paper protocol, epoch by epoch; callback(metrics) after each (return "stop" to stop).

    on_batch(epoch, step, steps, loss) is called after each step (loss every 10 steps, else None).
    Times in seconds, images/s of the training loop only. final=True needs data loaded with final=True:
    there is no validation then; the test split is evaluated once, after the last epoch.
    """
    t0 = time.perf_counter()
    t = run.train
    if final != (data.eval_split == "test"):
        raise UserError(f"fit(final={final}) needs data loaded with final={final} "
                        f"(this data's eval split is {data.eval_split!r})")
    if t.num_threads:
        torch.set_num_threads(t.num_threads)
    device = resolve_device(t)
    amp = amp_dtype(t, device)
    channels_last = t.channels_last if t.channels_last is not None else device.type == "cuda"
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        torch.backends.cudnn.benchmark = True
    if model is None:
        from .model import build_model

        torch.manual_seed(t.seed)
        model = build_model(run.model)
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    data = data.to(device)
    optimizer = make_optimizer(model, t)
    scaler = torch.amp.GradScaler(device.type) if amp == torch.float16 else None
    history: list[dict[str, Any]] = []
    start = 0
    if resume and checkpoint_path is not None and Path(checkpoint_path).exists():
        ck = load_checkpoint(checkpoint_path, device)
        model.load_state_dict(ck["model"])
        optimizer.load_state_dict(ck["optimizer"])
        if scaler is not None and "scaler" in ck:
            scaler.load_state_dict(ck["scaler"])
        _set_rng_state(ck["rng"])
        start, history = int(ck["epoch"]), list(ck["history"])
    step_model = torch.compile(model) if t.compile else model
    batch = t.batch_size
    eval_bs = eval_batch_size or 2 * batch
    train_time = 0.0
    images_done = 0
    loop_time = 0.0
    stopped = False
    for epoch in range(start, t.epochs):
        e0 = time.perf_counter()
        lr = schedule_lr(epoch, t)
        for group in optimizer.param_groups:
            group["lr"] = lr
        # Every random draw of an epoch derives from (seed, epoch), so a resumed run matches a straight one.
        torch.manual_seed(_epoch_seed(t.seed, epoch))
        loss_mean, n = _train_epoch(step_model, data, optimizer, scaler, t, epoch, amp=amp, channels_last=channels_last,
                                    on_batch=on_batch, checkpoint_path=checkpoint_path, lr=lr)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t_train = time.perf_counter() - e0
        loop_time += t_train
        val_loss = val_acc = None
        if not final:
            val_loss, val_acc = evaluate(step_model, data, batch_size=eval_bs, amp=amp,
                                         channels_last=channels_last)
        epoch_time = time.perf_counter() - e0
        train_time += epoch_time
        images_done += n
        metrics = {EPOCH: epoch + 1, TRAIN_LOSS: loss_mean, VAL_LOSS: val_loss,
                   VAL_ACC: val_acc, LR: lr, EPOCH_TIME: epoch_time, IMAGES_PER_S: n / max(t_train, 1e-9)}
        history.append(metrics)
        if checkpoint_path is not None:
            state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch + 1,
                     "lr": lr, "rng": _rng_state(), "history": history,
                     "config": run.model_dump(mode="json")}
            if scaler is not None:
                state["scaler"] = scaler.state_dict()
            save_checkpoint(checkpoint_path, state)
        if callback is not None and callback(dict(metrics)) == STOP:
            stopped = epoch + 1 < t.epochs
            break
    result = FitResult(model=model, history=history, stopped_early=stopped,
                       epochs_trained=int(history[-1][EPOCH]) if history else 0)
    accs = [h[VAL_ACC] for h in history if h[VAL_ACC] is not None]
    if accs:
        result.best_val_acc, result.final_val_acc = max(accs), accs[-1]
    if final:
        e0 = time.perf_counter()
        result.test_loss, result.test_acc = evaluate(step_model, data, batch_size=eval_bs, amp=amp,
                                                     channels_last=channels_last)
        train_time += time.perf_counter() - e0
    result.train_time_s = train_time
    result.images_per_s = images_done / loop_time if loop_time > 0 else 0.0
    result.wall_time_s = time.perf_counter() - t0
    result.peak_memory_bytes = peak_memory(device)
    return result


__all__ = ["fit", "evaluate", "lr_at", "schedule_lr", "FitResult", "TrainingDiverged", "save_checkpoint",
           "load_checkpoint", "make_optimizer", "METRICS", "STOP"]
