"""What runs on a Ray worker: one trial is `fit` with a report (and checkpoint) after every epoch.

A trial that fails raises `TrialError` (its kind, message and traceback), so Ray marks it ERROR and
the driver records it as FAIL; a result without the scheduler's metric would end the whole run.

A trial trains on a GPU only if Ray gave it one (since Ray 2.60 a CPU trial sees every GPU of its machine), with a
fractional GPU capped at its share of the device's memory; on a CPU it trains in the memory layout its study
decided once (`study_layout`, in the driver), not in whatever a timing under its siblings' load says.
"""

from __future__ import annotations

import os
import socket
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import UserError
from ..metrics import (EPOCH, EPOCH_TIME, MACS, MEASURED_PEAK_BYTES, MEMORY, MEMORY_EFFICIENT, PARAMS, PEAK_MEMORY_BYTES,
                       TRAIN_TIME_S, VAL_ACC)
from ..training.config import RunConfig, TrainConfig
from .reports import (CHECKPOINT_FILE, NODE, NODE_ID, NODE_IP, PRECISION, PRECISION_WHY, RESUME_FROM,
                      RESUMED_CURVE, RESUMED_TIMES, WORKER_PID)

if TYPE_CHECKING:
    import optuna

    from .schema import SearchSpace

# Error kinds, the `error_kind` user attribute of a FAIL(error) trial.
DIVERGED, OUT_OF_MEMORY, EXCEPTION, WORKER_DIED = "diverged", "out_of_memory", "exception", "worker_died"
STUDY_LAYOUT = "cpu_layout"     # study user attr: the layout decided for its CPU trials ({channels_last, why})


class TrialError(Exception):
    """A trial's failure, as raised on the worker and recorded by the driver."""

    def __init__(self, kind: str, message: str, traceback_text: str) -> None:
        super().__init__(kind, message, traceback_text)
        self.kind, self.message, self.traceback_text = kind, message, traceback_text

    def __str__(self) -> str:
        return f"{self.kind}: {self.message}"


def error_kind(exc: BaseException) -> str:
    """diverged (a NaN/inf loss), out_of_memory (device or host allocation), or exception."""
    from ..training.loop import TrainingDiverged

    if isinstance(exc, TrainingDiverged):
        return DIVERGED
    text = str(exc).lower()
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError" or "out of memory" in text:
        return OUT_OF_MEMORY
    return EXCEPTION


def train_trial(config: dict, data: Any = None, layout: dict | None = None) -> None:
    """Ray Tune function trainable: fit() with a report after every epoch (+ checkpoint).

    layout: the study's decision for CPU trials (study_layout), or None.
    """
    from ray import tune

    try:
        _train(tune, config, data, layout)
    except Exception as e:
        raise TrialError(error_kind(e), f"{type(e).__name__}: {e}", traceback.format_exc()) from None


def trial_device(t: TrainConfig, gpu_ids: list) -> str:
    """The device a trial trains on: `auto` is cuda only when Ray assigned the trial a GPU (gpu_ids), else cpu."""
    if t.device == "auto":
        return "cuda" if gpu_ids else "cpu"
    if t.device.startswith("cuda") and not gpu_ids:
        raise UserError(f"train.device is {t.device} but Ray gave this trial no GPU (resources.gpu: 0): it would "
                        "share a GPU that Ray doesn't count; set resources.gpu, or train.device auto or cpu")
    return t.device


MEASURE_CPU_PEAK = "DSEARCH_MEASURE_CPU_PEAK"


def limit_gpu_memory(share: float, device: Any) -> None:
    """A trial with a fraction of a GPU (resources.gpu < 1) may allocate that fraction of its memory, no more: the
    trials packed on a device can't starve each other into out-of-memory errors."""
    import torch

    if 0 < share < 1:
        torch.cuda.set_per_process_memory_fraction(share, device)


def _train(tune: Any, config: dict, data: Any, layout: dict | None = None) -> None:
    import ray

    from ..training.checkpoint import load_checkpoint
    from ..training.loop import fit, peak_memory, resolve_device
    from .artifacts import copy_to_local

    run = RunConfig.model_validate(config["run"])
    context = ray.get_runtime_context()
    node = {NODE: socket.gethostname(), NODE_IP: ray.util.get_node_ip_address(),
            NODE_ID: context.get_node_id(), WORKER_PID: os.getpid()}
    check_data_here(data, node)
    # Ray ≥ 2.60 leaves a CPU trial every GPU of its machine (ray issue 54868): a GPU only if Ray assigned one.
    run.train.device = trial_device(run.train, ray.get_gpu_ids())
    device = resolve_device(run.train)
    if device.type == "cuda":
        limit_gpu_memory(float(context.get_assigned_resources().get("GPU", 0)), device)
    fixed = {**{m: config[m] for m in (PARAMS, MACS, MEMORY) if m in config}, **node}
    # fit() writes here each epoch; Ray copies it to the experiment's storage with each report.
    work = Path(tune.get_context().get_trial_dir()) / "latest"
    ckpt_path = work / CHECKPOINT_FILE
    history: list[dict[str, Any]] = []
    if config.get(RESUME_FROM):
        copy_to_local(config[RESUME_FROM], ckpt_path)     # a local path or the object store's URI
        history = load_checkpoint(ckpt_path)["history"]
    train_time = 0.0
    reported = False

    def report(metrics: dict) -> None:
        nonlocal train_time, reported
        if metrics[EPOCH] > len(history):               # not a row of the checkpoint, reported again
            train_time += metrics.get(EPOCH_TIME, 0.0)
        out = {**metrics, **fixed, TRAIN_TIME_S: train_time, PEAK_MEMORY_BYTES: peak_memory(device)}
        if device.type == "cuda":
            out[MEASURED_PEAK_BYTES] = out[PEAK_MEMORY_BYTES]
        if not reported and history:    # the checkpoint's epochs before this one, once: the driver's curve is whole
            done = [h for h in history if h[EPOCH] < metrics[EPOCH]]
            out.update({RESUMED_CURVE: [h[VAL_ACC] for h in done], RESUMED_TIMES: [h.get(EPOCH_TIME) for h in done]})
        reported = True
        tune.report(out, checkpoint=tune.Checkpoint.from_directory(str(work)))

    def started(precision: dict) -> None:
        fixed.update({PRECISION: precision[PRECISION], PRECISION_WHY: precision[PRECISION_WHY]})
        if device.type == "cpu" and os.environ.get(MEASURE_CPU_PEAK, "1") != "0":
            # The process's RSS mixes in Ray, the data and the allocator's slack: one profiled step of this network
            # at the run's batch, dtype and layout is the honest measure on a CPU (training/memory.py). It costs a
            # fraction of a second (the profiler's first start in a process ~1.4 s); $DSEARCH_MEASURE_CPU_PEAK=0
            # skips it.
            from ..training.memory import measure_step
            from ..training.precision import AMP_DTYPES
            from .sampling import input_size

            fixed[MEASURED_PEAK_BYTES] = measure_step(
                run.model.with_overrides(memory_efficient=precision[MEMORY_EFFICIENT]), run.train.batch_size,
                input_size(run.data), amp=AMP_DTYPES.get(precision["dtype"]), channels_last=precision["channels_last"]).peak_bytes

    chosen = (layout["channels_last"], layout["why"]) if layout else None
    result = fit(run, data, callback=report, checkpoint_path=ckpt_path, resume=bool(config.get(RESUME_FROM)),
                 on_start=started, layout=chosen)
    if not reported and result.history:
        # The checkpoint held every epoch (the driver died between its last checkpoint and the tell): report the
        # last one again, or the trial would be told PRUNED at 0 epochs with NaN values.
        report(dict(result.history[-1]))


def check_data_here(data: Any, node: dict) -> None:
    """A folder dataset's files must be at the same path on every node: say which node lacks which path."""
    missing = data.missing_files() if hasattr(data, "missing_files") else None
    if missing:
        raise FileNotFoundError(f"node {node[NODE]} ({node[NODE_IP]}) has no {missing}: a folder dataset must be "
                                "at the same path on every node of the cluster")


def study_layout(space: "SearchSpace", study: "optuna.Study", data: Any) -> dict | None:
    """The memory layout of the study's CPU trials (train.channels_last null), decided once, in the driver.

    Each trial is a fresh process, so a probe in each would time every trial again, under its siblings' load, and
    the same configuration and seed could train in either layout (other rounding). One probe on the space's first
    seed trial (else its middle configuration), in one trial's threads, decides for the whole study; the answer is
    kept in the study's user attrs, so a continued study keeps it. None where there is nothing to decide: GPU
    trials (channels_last on by rule) or a space that sets train.channels_last.
    """
    import torch

    from ..net.model import build_model
    from ..training.precision import choose_amp, choose_layout, detect_cpu, probe_layouts
    from .sampling import resolve, suggest

    if STUDY_LAYOUT in study.user_attrs:
        return study.user_attrs[STUDY_LAYOUT]
    if space.resources.gpu > 0:
        return None
    try:
        params = dict(space.seed_trials[0]) if space.seed_trials else suggest(space, _Middle())
        run = resolve(space, params)
    except UserError:
        run = None
    if run is not None and (run.train.channels_last is not None or run.train.device not in ("auto", "cpu")):
        return None
    if run is None:
        decision = {"channels_last": False, "why": "channels_last off for the study (no valid configuration to probe)"}
    else:
        t = run.train
        threads = torch.get_num_threads()
        torch.set_num_threads(max(1, int(space.resources.cpu)))
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(t.seed)
                model = build_model(run.model)
            shape = (min(t.batch_size, data.num_train), data.in_channels, data.image_size, data.image_size)
            amp = choose_amp(t.amp, "cpu", cpu=detect_cpu())
            probe = probe_layouts(model, shape, data.num_classes, amp)
        finally:
            torch.set_num_threads(threads)
        cl = choose_layout(None, "cpu", probe)
        decision = {"channels_last": cl, "why": f"channels_last {'on' if cl else 'off'} for the study: "
                    f"{probe[False] / probe[True]:.2f}× the contiguous layout's speed in one probe in the driver",
                    "probe_s_per_step": {"contiguous": round(probe[False], 5), "channels_last": round(probe[True], 5)}}
    study.set_user_attr(STUDY_LAYOUT, decision)
    return decision


class _Middle:
    """A trial-like whose suggestions are the middle of each range (the middle choice): a typical network."""

    def suggest_int(self, name: str, low: int, high: int, *, step: int = 1, log: bool = False) -> int:
        return low + (high - low) // step // 2 * step

    def suggest_float(self, name: str, low: float, high: float, *, step: float | None = None,
                      log: bool = False) -> float:
        if log:
            return (low * high) ** 0.5
        if step:
            return low + round((high - low) / step) // 2 * step
        return (low + high) / 2

    def suggest_categorical(self, name: str, choices: Any) -> Any:
        return choices[len(choices) // 2]
