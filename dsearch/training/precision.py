"""Which autocast dtype and memory layout a run trains with (`train.amp`, `train.channels_last`).

`amp: auto` is bf16 where the hardware computes in bf16 natively: a CUDA GPU with bf16 (Ampere and later; an older
GPU gets fp16 with loss scaling), a CPU with AVX-512 BF16 or AMX. Elsewhere it is off (fp32): a CPU without them
would emulate bf16 through fp32 conversions, slower than fp32 itself. BN statistics, the loss and the optimizer
state stay fp32 under autocast.

`channels_last: null` is on for CUDA. On a CPU it is decided by a probe, as cudnn.benchmark does for kernels: a few
forward + backward steps of a copy of the model in each layout, on random batches of the run's shape, and the
faster layout wins (contiguous unless channels_last is ≥ 5 % faster). The answer is cached per network, batch,
dtype and thread count for the process. Both layouts compute the same function, up to float rounding.

The decisions are pure functions (`choose_amp`, `choose_layout`, `parse_cpu_flags`); `detect_cpu` and
`probe_layouts` are the edges that read the processor and the clock.
"""

from __future__ import annotations

import copy
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

PROBE_STEPS = 2         # timed steps per layout, after one untimed warm-up step
PROBE_MARGIN = 1.05     # channels_last must be this much faster to be chosen


@dataclass(frozen=True)
class CpuFeatures:
    """The processor's native bf16 units."""

    avx512_bf16: bool = False
    amx_bf16: bool = False

    @property
    def native_bf16(self) -> bool:
        return self.avx512_bf16 or self.amx_bf16

    @property
    def bf16_units(self) -> str:
        units = [name for name, has in (("AMX-BF16", self.amx_bf16), ("AVX512-BF16", self.avx512_bf16)) if has]
        return " + ".join(units) if units else "no native bf16"


def parse_cpu_flags(cpuinfo: str) -> CpuFeatures:
    """The bf16 units named in /proc/cpuinfo's `flags` line (x86 Linux)."""
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags = set(line.partition(":")[2].split())
            return CpuFeatures(avx512_bf16="avx512_bf16" in flags, amx_bf16="amx_bf16" in flags)
    return CpuFeatures()


@lru_cache(maxsize=1)
def detect_cpu() -> CpuFeatures:
    """This processor's bf16 units: torch's own cpuinfo check, or /proc/cpuinfo where torch has none."""
    cpu = getattr(torch, "cpu", None)
    avx = getattr(cpu, "_is_avx512_bf16_supported", None)
    amx = getattr(cpu, "_is_amx_tile_supported", None)
    if avx is not None and amx is not None:
        return CpuFeatures(avx512_bf16=bool(avx()), amx_bf16=bool(amx()))
    try:
        return parse_cpu_flags(Path("/proc/cpuinfo").read_text())
    except OSError:
        return CpuFeatures()


AMP_DTYPES = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def choose_amp(setting: str, device_type: str, *, cpu: CpuFeatures | None = None,
               cuda_bf16: bool = True) -> torch.dtype | None:
    """The autocast dtype of `train.amp` (None: fp32) on a device type; auto as the module docstring says."""
    if setting != "auto":
        return AMP_DTYPES[setting]
    if device_type == "cuda":
        return torch.bfloat16 if cuda_bf16 else torch.float16
    if device_type == "cpu" and cpu is not None and cpu.native_bf16:
        return torch.bfloat16
    return None


def choose_layout(setting: bool | None, device_type: str, probe: dict[bool, float] | None = None) -> bool:
    """Whether to train channels_last: the setting when given; on for CUDA; on a CPU, the probe's faster layout.

    probe maps channels_last (False/True) to seconds per step; without one a CPU stays contiguous.
    """
    if setting is not None:
        return setting
    if device_type == "cuda":
        return True
    if not probe:
        return False
    return probe[True] * PROBE_MARGIN <= probe[False]


def autocast(device_type: str, dtype: torch.dtype | None):
    """torch.autocast in dtype, or no autocast (fp32) for None: how fit and the probe run a step."""
    return torch.autocast(device_type, dtype=dtype) if dtype is not None else nullcontext()


def describe(amp: torch.dtype | None, channels_last: bool) -> str:
    """`bf16 + channels_last`, `fp32`, … as the bench and the logs print it."""
    name = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[amp]
    return f"{name} + channels_last" if channels_last else name


@dataclass(frozen=True)
class Precision:
    """The resolved setting of a run and why; `record` is what summary.json and a trial's user attrs hold."""

    amp: torch.dtype | None
    channels_last: bool
    why: str
    probe: dict[bool, float] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return describe(self.amp, self.channels_last)

    def record(self) -> dict[str, Any]:
        out: dict[str, Any] = {"precision": self.name, "precision_why": self.why}
        if self.probe:
            out["layout_probe_s_per_step"] = {"contiguous": round(self.probe[False], 5),
                                              "channels_last": round(self.probe[True], 5)}
        return out


def _step_seconds(model: nn.Module, x: torch.Tensor, y: torch.Tensor, amp: torch.dtype | None,
                  steps: int) -> float:
    best = float("inf")
    for i in range(steps + 1):
        t0 = time.perf_counter()
        with autocast(x.device.type, amp):
            out = model(x)
        F.cross_entropy(out.float(), y).backward()
        model.zero_grad(set_to_none=True)
        if i:                                         # step 0 builds the kernels
            best = min(best, time.perf_counter() - t0)
    return best


_PROBES: dict[tuple, dict[bool, float]] = {}


def probe_layouts(model: nn.Module, input_shape: tuple[int, ...], num_classes: int,
                  amp: torch.dtype | None, *, steps: int = PROBE_STEPS) -> dict[bool, float]:
    """Seconds per forward + backward step of a copy of model in each layout, on random batches of input_shape.

    The model, its BN statistics and the global random stream are untouched. Cached per (network, batch, dtype,
    threads) for the process, so every fit of the same network in a process trains in the same layout.
    """
    config = getattr(model, "config", None)
    key = (repr(config) if config is not None else repr(model), tuple(input_shape), amp, torch.get_num_threads())
    if key not in _PROBES:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(input_shape, generator=g)
        y = torch.randint(0, num_classes, (input_shape[0],), generator=g)
        result = {}
        for cl in (False, True):
            twin = copy.deepcopy(model).train()
            xi = x
            if cl:
                twin = twin.to(memory_format=torch.channels_last)
                xi = x.contiguous(memory_format=torch.channels_last)
            result[cl] = _step_seconds(twin, xi, y, amp, steps)
        _PROBES[key] = result
    return _PROBES[key]


def resolve_precision(amp_setting: str, layout_setting: bool | None, device: torch.device, *,
                      model: nn.Module | None = None, input_shape: tuple[int, ...] | None = None,
                      num_classes: int = 10, resumed_layout: bool | None = None) -> Precision:
    """The run's Precision: the pure choices above, fed by this machine's features and, on a CPU, the probe.

    resumed_layout: the layout of the run being resumed; it stands in for the probe, so a resumed run continues
    in the layout it started in.
    """
    dev = device.type
    cpu = detect_cpu() if dev == "cpu" else None
    cuda_bf16 = dev == "cuda" and torch.cuda.is_bf16_supported(including_emulation=False)
    amp = choose_amp(amp_setting, dev, cpu=cpu, cuda_bf16=cuda_bf16)
    if amp_setting != "auto":
        why = f"train.amp: {amp_setting}"
    elif dev == "cpu":
        why = f"auto: CPU with {cpu.bf16_units}"
    elif dev == "cuda":
        why = "auto: CUDA " + ("with bf16" if cuda_bf16 else "without bf16: fp16 with loss scaling")
    else:
        why = f"auto: {dev}"
    probe: dict[bool, float] = {}
    if layout_setting is None and resumed_layout is not None:
        return Precision(amp, resumed_layout, why + "; channels_last " + ("on" if resumed_layout else "off") +
                         " as in the run resumed")
    if layout_setting is None and dev == "cpu" and model is not None and input_shape is not None:
        probe = probe_layouts(model, input_shape, num_classes, amp)
    cl = choose_layout(layout_setting, dev, probe)
    if layout_setting is not None:
        why += f"; train.channels_last: {str(layout_setting).lower()}"
    elif probe:
        why += f"; channels_last {probe[False] / probe[True]:.2f}× the contiguous layout's speed in a probe"
    else:
        why += "; channels_last on " + dev if cl else ""
    return Precision(amp, cl, why, probe)
