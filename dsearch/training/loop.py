"""The paper's training protocol: SGD + Nesterov under the step schedule, epoch by epoch (`fit`), and `evaluate`.

The recipe knobs (cosine, warm-up, label smoothing, cutout) are off by default, leaving the paper's protocol.

Knows nothing of Ray or Optuna: a search hooks in through fit's per-epoch callback.
"""

from __future__ import annotations

import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import UserError
from ..metrics import EPOCH, EPOCH_TIME, IMAGES_PER_S, LR, MEMORY_EFFICIENT, MEMORY_WHY, TRAIN_LOSS, VAL_ACC, VAL_LOSS
from ..net.model import set_memory_efficient
from .checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .config import RunConfig, TrainConfig
from .data import TrainingData
from .memory import choose_run_path
from .precision import DTYPE_NAMES, Precision, autocast, resolve_precision
from .schedule import schedule_lr

STOP = "stop"
CHANNELS_LAST = "channels_last"     # the checkpoint's record of the layout the run trained in
AMP = "amp"                         # ... and of its autocast dtype: fp32, bf16 or fp16 (precision.DTYPE_NAMES)


class TrainingDiverged(UserError):
    """The loss became NaN or inf; the message names the epoch and the step."""


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
    precision: dict[str, Any] = field(default_factory=dict)   # Precision.record(): the dtype and layout trained in


def resolve_device(t: TrainConfig) -> torch.device:
    """`auto` is cuda when available, else cpu."""
    if t.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(t.device)


def make_optimizer(model: nn.Module, t: TrainConfig) -> torch.optim.SGD:
    """SGD with (Nesterov) momentum and weight decay on every parameter, as the official code."""
    return torch.optim.SGD(model.parameters(), lr=t.lr, momentum=t.momentum, nesterov=t.nesterov,
                           weight_decay=t.weight_decay)


def evaluate(model: nn.Module, data: TrainingData, *, batch_size: int = 256, amp: torch.dtype | None = None,
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
            with autocast(data.device.type, amp):
                out = model(x)
            loss_sum += F.cross_entropy(out.float(), y, reduction="sum").double()
            correct += (out.argmax(1) == y).sum()
            n += len(y)
    return float(loss_sum) / max(n, 1), int(correct) / max(n, 1)


def _epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 2_654_435_761 + epoch * 40_503 + 97) % (2 ** 63)


def peak_memory(device: torch.device) -> int:
    """Peak bytes so far: the CUDA allocator's on GPU, the process's max RSS on CPU."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux reports KiB


def _train_epoch(model: nn.Module, data: TrainingData, optimizer, scaler, t: TrainConfig, epoch: int, *, amp,
                 channels_last: bool, on_batch, checkpoint_path, cutout: int) -> tuple[float, int]:
    """One pass over the training split; returns the mean loss (nats) and the images seen.

    The lr is set before every step from the pure schedule (warm-up and cosine move within an epoch).
    """
    device = data.device
    steps = data.steps_per_epoch(t.batch_size)
    model.train()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    # The first non-finite step is tracked on the device, so a GPU checks it without a sync every step.
    first_bad = torch.full((), -1, dtype=torch.long, device=device)
    n = 0
    batches = data.train_batches(t.batch_size, epoch=epoch, seed=t.seed, cutout=cutout)
    for step, (x, y) in enumerate(batches, start=1):
        lr = schedule_lr(epoch, t, step - 1, steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(device.type, amp):
            out = model(x)
        # Smoothing is a training-time target only: evaluate() reports the plain cross-entropy.
        loss = F.cross_entropy(out.float(), y, label_smoothing=t.label_smoothing)
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
            bad = int(first_bad)
            bad_lr = schedule_lr(epoch, t, bad - 1, steps)
            raise TrainingDiverged(f"training diverged: the loss became {float(loss.detach()):.4g} at epoch "
                                   f"{epoch + 1}, step {bad} of {steps} (lr {bad_lr:g}); the last good "
                                   f"checkpoint is {kept}; try a lower train.lr")
        if on_batch is not None:
            on_batch(epoch + 1, step, steps, float(loss.detach()) if step % 10 == 0 or step == steps else None)
    return float(loss_sum) / max(n, 1), n


@dataclass
class _Setup:
    """What fit trains with: the device, precision and memory layout chosen, and what lives on that device."""

    device: torch.device
    precision: Precision
    data: TrainingData
    model: nn.Module
    step_model: nn.Module            # the model, or torch.compile's wrapper of it (same parameters)
    optimizer: torch.optim.SGD
    scaler: torch.amp.GradScaler | None
    memory_efficient: bool = False
    memory_why: str = ""

    def record(self) -> dict[str, Any]:
        """What the run trains in, and why: Precision.record(), its dtype and layout, the memory path."""
        return {**self.precision.record(), "dtype": DTYPE_NAMES[self.amp], CHANNELS_LAST: self.channels_last,
                MEMORY_EFFICIENT: self.memory_efficient, MEMORY_WHY: self.memory_why}

    @property
    def amp(self) -> torch.dtype | None:
        return self.precision.amp

    @property
    def channels_last(self) -> bool:
        return self.precision.channels_last

    def evaluate(self, batch_size: int) -> tuple[float, float]:
        """Mean loss (nats) and accuracy (fraction) on the eval split, in the training precision and layout."""
        return evaluate(self.step_model, self.data, batch_size=batch_size, amp=self.amp,
                        channels_last=self.channels_last)


@dataclass
class _Clock:
    """Running totals of a fit: seconds training plus evaluating, seconds in the training loop, images trained on."""

    train_s: float = 0.0
    loop_s: float = 0.0
    images: int = 0


def _setup(run: RunConfig, data: TrainingData, model: nn.Module | None, *, resumed: dict[str, Any] | None = None,
           chosen_layout: tuple[bool, str] | None = None) -> _Setup:
    """Pick device, autocast dtype and layout; build (seeded) or adopt the model; move model and data there.

    resumed: the checkpoint of the run being resumed, whose layout and dtype are kept where the settings are auto.
    chosen_layout: (channels_last, why) decided for the run elsewhere, used on a CPU where train.channels_last is null.
    """
    t = run.train
    if t.num_threads:
        torch.set_num_threads(t.num_threads)
    device = resolve_device(t)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        # cuDNN times its kernels in each process and keeps the fastest, so on a GPU two runs, or a resumed run
        # and an uninterrupted one, may convolve with different algorithms and differ in the last bits. On a CPU
        # resume is bitwise (tests/test_train.py).
        torch.backends.cudnn.benchmark = True
    if model is None:
        from ..net.model import build_model

        # The initial weights are a function of the seed alone.
        torch.manual_seed(t.seed)
        model = build_model(run.model)
    model = model.to(device)
    shape = (min(t.batch_size, data.num_train), data.in_channels, data.image_size, data.image_size)
    resumed = resumed or {}
    precision = resolve_precision(t.amp, t.channels_last, device, model=model, input_shape=shape,
                                  num_classes=data.num_classes, resumed_layout=resumed.get(CHANNELS_LAST),
                                  resumed_amp=resumed.get(AMP), chosen_layout=chosen_layout)
    amp, channels_last = precision.amp, precision.channels_last
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    efficient, memory_why = choose_run_path(run, device, amp, channels_last)
    set_memory_efficient(model, efficient)
    data = data.to(device)
    optimizer = make_optimizer(model, t)
    # bf16 has fp32's exponent range; only fp16 gradients underflow without loss scaling.
    scaler = torch.amp.GradScaler(device.type) if amp == torch.float16 else None
    # torch.compile traces lazily, at the first call, so a checkpoint restored into `model` afterwards is used.
    step_model = torch.compile(model) if t.compile else model
    return _Setup(device, precision, data, model, step_model, optimizer, scaler, efficient, memory_why)


def _restore(s: _Setup, ck: dict[str, Any]) -> tuple[int, list[dict[str, Any]]]:
    """Load a checkpoint written by fit into s; the epochs it had done and their metrics."""
    s.model.load_state_dict(ck["model"])
    s.optimizer.load_state_dict(ck["optimizer"])
    if s.scaler is not None and "scaler" in ck:
        s.scaler.load_state_dict(ck["scaler"])
    set_rng_state(ck["rng"])
    return int(ck["epoch"]), list(ck["history"])


def _epoch(s: _Setup, t: TrainConfig, epoch: int, *, final: bool, eval_batch_size: int, on_batch,
           checkpoint_path: Path | None, cutout: int = 0) -> tuple[dict[str, Any], float, int]:
    """Train one epoch, then validate unless final; its metrics, the seconds in the training loop, the images seen.

    The LR metric is the lr of the epoch's first step.
    """
    e0 = time.perf_counter()
    lr = schedule_lr(epoch, t, 0, s.data.steps_per_epoch(t.batch_size))
    # Every random draw of an epoch derives from (seed, epoch), so a resumed run matches a straight one.
    torch.manual_seed(_epoch_seed(t.seed, epoch))
    loss_mean, n = _train_epoch(s.step_model, s.data, s.optimizer, s.scaler, t, epoch, amp=s.amp,
                                channels_last=s.channels_last, on_batch=on_batch,
                                checkpoint_path=checkpoint_path, cutout=cutout)
    if s.device.type == "cuda":
        torch.cuda.synchronize(s.device)  # CUDA runs asynchronously: without it the clock stops early
    t_train = time.perf_counter() - e0
    val_loss = val_acc = None
    if not final:
        val_loss, val_acc = s.evaluate(eval_batch_size)
    epoch_time = time.perf_counter() - e0
    metrics = {EPOCH: epoch + 1, TRAIN_LOSS: loss_mean, VAL_LOSS: val_loss,
               VAL_ACC: val_acc, LR: lr, EPOCH_TIME: epoch_time, IMAGES_PER_S: n / max(t_train, 1e-9)}
    return metrics, t_train, n


def _checkpoint_state(s: _Setup, run: RunConfig, history: list[dict[str, Any]]) -> dict[str, Any]:
    """What is saved after the last epoch of history: enough for `_restore` to continue bitwise exactly."""
    last = history[-1]
    state = {"model": s.model.state_dict(), "optimizer": s.optimizer.state_dict(), "epoch": last[EPOCH],
             "lr": last[LR], "rng": rng_state(), "history": history, CHANNELS_LAST: s.channels_last,
             AMP: DTYPE_NAMES[s.amp], "config": run.model_dump(mode="json")}
    if s.scaler is not None:
        state["scaler"] = s.scaler.state_dict()
    return state


def _result(s: _Setup, history: list[dict[str, Any]], *, stopped: bool, test: tuple[float, float] | None,
            clock: _Clock, t0: float) -> FitResult:
    """The FitResult of a finished fit; test is the final run's (loss, accuracy), None in a search run."""
    result = FitResult(model=s.model, history=history, stopped_early=stopped,
                       epochs_trained=int(history[-1][EPOCH]) if history else 0, precision=s.record())
    accs = [h[VAL_ACC] for h in history if h[VAL_ACC] is not None]
    if accs:
        result.best_val_acc, result.final_val_acc = max(accs), accs[-1]
    if test is not None:
        result.test_loss, result.test_acc = test
    result.train_time_s = clock.train_s
    result.images_per_s = clock.images / clock.loop_s if clock.loop_s > 0 else 0.0
    result.wall_time_s = time.perf_counter() - t0
    result.peak_memory_bytes = peak_memory(s.device)
    return result


def fit(run: RunConfig, data: TrainingData, *, callback: Callable[[dict], Any] | None = None,
        checkpoint_path: Path | None = None, resume: bool = False, final: bool = False,
        model: nn.Module | None = None,
        on_batch: Callable[[int, int, int, float | None], None] | None = None,
        eval_batch_size: int | None = None,
        on_start: Callable[[dict[str, Any]], None] | None = None,
        layout: tuple[bool, str] | None = None) -> FitResult:
    """Train under the paper protocol, epoch by epoch; callback(metrics) after each (return "stop" to stop).

    on_batch(epoch, step, steps, loss) is called after each step (loss every 10 steps, else None).
    on_start(precision) is called once the dtype, layout and memory path are chosen (Precision.record(), with
    memory_efficient and memory_why), before training.
    layout: (channels_last, why) decided elsewhere (a search's study), instead of a probe on a CPU when
    train.channels_last is null. A resumed run keeps the layout and dtype of its checkpoint where the settings are auto.
    Times in seconds, images/s of the training loop only. final=True needs data loaded with final=True:
    there is no validation then; the test split is evaluated once, after the last epoch.
    """
    t0 = time.perf_counter()
    t = run.train
    if final != (data.eval_split == "test"):
        raise UserError(f"fit(final={final}) needs data loaded with final={final} "
                        f"(this data's eval split is {data.eval_split!r})")
    ck = None
    if resume and checkpoint_path is not None and Path(checkpoint_path).exists():
        ck = load_checkpoint(checkpoint_path, resolve_device(t))
    # A resumed run keeps the layout and dtype it started in (this node's probe or hardware may answer otherwise).
    s = _setup(run, data, model, resumed=ck, chosen_layout=layout)
    if on_start is not None:
        on_start(s.record())
    start, history = 0, []
    if ck is not None:
        start, history = _restore(s, ck)
        del ck
    eval_bs = eval_batch_size or 2 * t.batch_size
    clock = _Clock()
    stopped = False
    for epoch in range(start, t.epochs):
        metrics, t_train, n = _epoch(s, t, epoch, final=final, eval_batch_size=eval_bs, on_batch=on_batch,
                                     checkpoint_path=checkpoint_path, cutout=run.data.cutout)
        clock.loop_s += t_train
        clock.train_s += metrics[EPOCH_TIME]
        clock.images += n
        history.append(metrics)
        if checkpoint_path is not None:
            save_checkpoint(checkpoint_path, _checkpoint_state(s, run, history))
        if callback is not None and callback(dict(metrics)) == STOP:
            stopped = epoch + 1 < t.epochs
            break
    test = None
    if final:
        e0 = time.perf_counter()
        test = s.evaluate(eval_bs)
        clock.train_s += time.perf_counter() - e0
    return _result(s, history, stopped=stopped, test=test, clock=clock, t0=t0)
