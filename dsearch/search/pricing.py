"""What a trial costs before it trains: params, MACs and training memory (closed form), within the constraints.

The memory of a trial is the predicted peak of one training step (net/cost.count_memory) at its batch size, in the
dtype `train.amp` gives on its device type, on the path `train.memory_efficient` chooses for its share of the device:
- a GPU trial (resources.gpu > 0): one GPU's memory (resources.gpu_memory_gib, else the driver's own GPU's) times its
  fraction of it (resources.gpu < 1: trials packed on one GPU, each capped there by search/trainable.py);
- a CPU trial: the machine's memory times its share of the cores (resources.cpu of all of them).
The share is the driver's view, taken once per search; `trial_share` is the pure rule, `local_share` reads the host.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

from ..metrics import MACS, MEMORY, PARAMS
from ..net.cost import choose_memory_path, count_macs, count_params, format_bytes
from ..training.config import RunConfig
from .sampling import input_size

if TYPE_CHECKING:
    from .schema import Resources, SearchSpace

GIB = 1024 ** 3


@dataclass(frozen=True)
class Share:
    """A trial's device type and the bytes of it it may use (None: unknown); how many trials share one GPU."""

    device: str
    bytes: int | None
    per_gpu: int = 1
    why: str = ""


def trial_share(resources: "Resources", *, gpu_bytes: int | None, host_bytes: int | None,
                host_cpus: int | None) -> Share:
    """The rule of the module docstring, on the device sizes given."""
    if resources.gpu > 0:
        fraction = min(float(resources.gpu), 1.0)
        per_gpu = max(1, int(1 / fraction + 1e-9)) if fraction < 1 else 1
        if gpu_bytes is None:
            return Share("cuda", None, per_gpu, "GPU memory unknown (set resources.gpu_memory_gib)")
        return Share("cuda", int(gpu_bytes * fraction), per_gpu,
                     f"{format_bytes(gpu_bytes)} GPU × {fraction:g}")
    if host_bytes is None or not host_cpus:
        return Share("cpu", None, 1, "host memory unknown")
    fraction = min(float(resources.cpu) / host_cpus, 1.0)
    return Share("cpu", int(host_bytes * fraction), 1,
                 f"{format_bytes(host_bytes)} host memory × {resources.cpu:g}/{host_cpus} cores")


@lru_cache(maxsize=8)
def _local_share(cpu: float, gpu: float, gpu_memory_gib: float | None) -> Share:
    from ..training.memory import gpu_memory_bytes, host_memory_bytes     # torch: only once a share is needed
    from .schema import Resources

    resources = Resources(cpu=cpu, gpu=gpu, gpu_memory_gib=gpu_memory_gib)
    gpu_bytes = int(gpu_memory_gib * GIB) if gpu_memory_gib else (gpu_memory_bytes() if gpu > 0 else None)
    return trial_share(resources, gpu_bytes=gpu_bytes, host_bytes=host_memory_bytes(), host_cpus=os.cpu_count())


def local_share(resources: "Resources") -> Share:
    """A trial's share as this (the driver's) host sees it; read once per resources."""
    return _local_share(float(resources.cpu), float(resources.gpu), resources.gpu_memory_gib)


def describe_share(resources: "Resources", share: Share | None = None) -> str:
    """One line for `dsearch run`: how trials share a GPU (or the CPU) and the memory each may use."""
    share = share or local_share(resources)
    size = format_bytes(share.bytes) if share.bytes else "unknown"
    if share.device == "cuda":
        if share.per_gpu > 1:
            return (f"GPU packing: {share.per_gpu} trials share each GPU (resources.gpu {resources.gpu:g}), each "
                    f"capped at {resources.gpu:.0%} of its memory: {size} ({share.why})")
        return f"GPU trials: one per GPU (resources.gpu {resources.gpu:g}), memory {size} each ({share.why})"
    return f"CPU trials: {resources.cpu:g} core(s) each, memory share {size} ({share.why})"


def dtype_name(run: RunConfig, device: str) -> str:
    """The autocast dtype a trial will train in on `device` (as training/precision.choose_amp decides)."""
    from ..training.precision import DTYPE_NAMES, choose_amp, detect_cpu

    setting = run.train.amp
    return DTYPE_NAMES[choose_amp(setting, device, cpu=detect_cpu() if device == "cpu" else None)]


@dataclass(frozen=True)
class Price:
    params: int
    macs: int
    memory: int                    # predicted peak bytes of a training step on the chosen path
    memory_efficient: bool
    memory_why: str

    def metrics(self) -> dict[str, int]:
        return {PARAMS: self.params, MACS: self.macs, MEMORY: self.memory}


def price(space: "SearchSpace", run: RunConfig, share: Share | None = None, *,
          cpu_channels_last: bool = False) -> Price:
    """Params, MACs and memory of a resolved trial; sets its memory path (model and train.memory_efficient).

    The layout: train.channels_last where set, else channels_last on a GPU and, on a CPU, the study's decision
    (cpu_channels_last; contiguous until one is made). Raises the config's UserError if the network does not fit
    its input."""
    share = share or local_share(space.resources)
    size = input_size(run.data)
    layout = run.train.channels_last
    if layout is None:
        layout = True if share.device == "cuda" else cpu_channels_last
    efficient, why, memory = choose_memory_path(
        run.model, size, run.train.batch_size, dtype_name(run, share.device), setting=run.train.memory_efficient,
        share_bytes=share.bytes, limit_bytes=space.constraints.max_memory, device=share.device,
        channels_last=layout)
    run.model = run.model.with_overrides(memory_efficient=efficient)
    run.train.memory_efficient = efficient
    return Price(count_params(run.model), count_macs(run.model, size), memory.peak_bytes, efficient, why)


def over_budget(space: "SearchSpace", cost: Price) -> str | None:
    """Why a priced trial is over the space's constraints, or None if within."""
    c = space.constraints
    reasons = []
    if c.max_params is not None and cost.params > c.max_params:
        reasons.append(f"params {cost.params:,} > constraints.max_params {c.max_params:,.0f}")
    if c.max_macs is not None and cost.macs > c.max_macs:
        reasons.append(f"MACs {cost.macs:,} > constraints.max_macs {c.max_macs:,.0f}")
    if c.max_memory is not None and cost.memory > c.max_memory:
        reasons.append(f"memory {cost.memory:,} B ({format_bytes(cost.memory)}, {cost.memory_why}) > "
                       f"constraints.max_memory {c.max_memory:,.0f} B")
    return "; ".join(reasons) or None


def check_constraints(space: "SearchSpace", run: RunConfig) -> str | None:
    """Why a resolved config is over the space's budget (params, MACs, memory), or None if within."""
    return over_budget(space, price(space, run.model_copy(deep=True)))
