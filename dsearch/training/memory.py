"""Measured training memory of one step, to hold net/cost.count_memory (closed form) to account.

saved_bytes: the unique storages autograd saves for backward (torch.autograd.graph.saved_tensors_hooks), parameters
and buffers excluded. measure_step: one training step as training/loop.py runs it (forward under autocast,
cross-entropy on out.float(), zero_grad(set_to_none), backward, SGD step), its peak and its saved bytes:
- on CUDA, torch.cuda.max_memory_allocated over the second step, less what the process held before building the
  network (cuBLAS's and cuDNN's workspaces, allocated in the steps, count);
- on a CPU, the running total of PyTorch's CPU allocator over the second step, as the profiler records it
  ([memory] events, profile_memory=True) with the model, optimizer and batch created under it, above the total at
  the trace's start: every tensor's bytes,
  not the allocator's or the kernels' own scratch (oneDNN), which the process's RSS would mix with the heap's
  fragmentation.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..net.config import ModelConfig
from .precision import autocast

STEP = "dsearch.measured_step"


def host_memory_bytes() -> int | None:
    """The machine's memory (MemTotal), None if unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def gpu_memory_bytes(device: torch.device | None = None) -> int | None:
    """Total memory of a CUDA device (the first by default), None without CUDA."""
    if not torch.cuda.is_available():
        return None
    index = device.index if device is not None and device.index is not None else 0
    return int(torch.cuda.get_device_properties(index).total_memory)


def choose_run_path(run, device: torch.device, amp: torch.dtype | None, channels_last: bool) -> tuple[bool, str]:
    """`train.memory_efficient` for a run on this host (`dsearch train`): its share is the whole device."""
    from ..net.cost import choose_memory_path
    from .precision import DTYPE_NAMES

    t, d = run.train, run.data
    share = gpu_memory_bytes(device) if device.type == "cuda" else host_memory_bytes()
    size = (d.info.in_channels, d.info.image_size, d.info.image_size)
    on, why, _ = choose_memory_path(run.model, size, t.batch_size, DTYPE_NAMES[amp], setting=t.memory_efficient,
                                    share_bytes=share, device=device.type, channels_last=channels_last)
    return on, why


def saved_bytes(model: nn.Module, x: torch.Tensor, y: torch.Tensor, amp: torch.dtype | None = None, *,
                label_smoothing: float = 0.0) -> int:
    """Bytes of the unique storages autograd saves in model(x) + cross-entropy (no backward is run)."""
    own = {t.untyped_storage().data_ptr() for t in (*model.parameters(), *model.buffers())}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        if s.data_ptr() not in own:
            seen.setdefault(s.data_ptr(), s.nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with autocast(x.device.type, amp):
            out = model(x)
        F.cross_entropy(out.float(), y, label_smoothing=label_smoothing)
    return sum(seen.values())


@dataclass(frozen=True)
class StepMemory:
    saved_bytes: int
    peak_bytes: int


def train_step(model, optimizer, x, y, amp) -> None:
    """One SGD step in training/loop.py's order: forward and loss, then zero_grad, backward, step (the last
    step's gradients are alive through the forward, as in training)."""
    with autocast(x.device.type, amp):
        out = model(x)
    loss = F.cross_entropy(out.float(), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def measure_step(config: ModelConfig, batch_size: int, input_size: tuple[int, int, int] | None = None, *,
                 amp: torch.dtype | None = None, device: str | torch.device = "cpu", channels_last: bool = False,
                 seed: int = 0) -> StepMemory:
    """Saved bytes and peak bytes of a training step of a fresh network (the config's memory_efficient)."""
    from ..net.model import DenseNet

    device = torch.device(device)
    c, h, w = tuple(input_size or config.default_input_size())

    def build():
        torch.manual_seed(seed)
        layout = torch.channels_last if channels_last else torch.contiguous_format
        model = DenseNet(config).to(device, memory_format=layout).train()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=1e-4)
        x = torch.randn(batch_size, c, h, w, device=device).contiguous(memory_format=layout)
        y = torch.randint(0, config.num_classes, (batch_size,), device=device)
        return model, optimizer, x, y

    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)     # what this process held before (other runs' tensors)
        model, optimizer, x, y = build()
        train_step(model, optimizer, x, y, amp)
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        train_step(model, optimizer, x, y, amp)
        torch.cuda.synchronize(device)
        peak = int(torch.cuda.max_memory_allocated(device)) - base
    else:
        peak = _cpu_peak(build, amp)
        model, optimizer, x, y = build()
    return StepMemory(saved_bytes(model, x, y, amp), peak)


def _cpu_peak(build, amp) -> int:
    import gc

    from torch.profiler import ProfilerActivity, profile, record_function

    gc.collect()      # earlier garbage freed now, not inside the trace (it would lower the running total there)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        model, optimizer, x, y = build()
        train_step(model, optimizer, x, y, amp)      # gradients and momentum buffers exist from here on
        with record_function(STEP):
            train_step(model, optimizer, x, y, amp)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(path))
        events = json.loads(path.read_text())["traceEvents"]
    span = next(e for e in events if e.get("name") == STEP and e.get("ph") == "X")
    start, end = span["ts"], span["ts"] + span["dur"]
    memory = sorted((e for e in events if e.get("name") == "[memory]"), key=lambda e: e["ts"])
    # The allocator's running total counts from the process's first traced allocation; the trace's own baseline is
    # the total before its first event (everything the step uses was allocated inside the trace).
    base = memory[0]["args"]["Total Allocated"] - memory[0]["args"]["Bytes"]
    return int(max(e["args"]["Total Allocated"] for e in memory if start <= e["ts"] <= end) - base)
