"""Which autocast dtype and memory layout a run trains with (`train.amp`, `train.channels_last`).

`amp: auto` is bf16 where the hardware computes in bf16 natively: a CUDA GPU with bf16 (Ampere and later; an older
GPU gets fp16 with loss scaling), a CPU with AVX-512 BF16 or AMX. Elsewhere it is off (fp32): a CPU without them
would emulate bf16 through fp32 conversions, slower than fp32 itself. BN statistics, the loss and the optimizer
state stay fp32 under autocast. $DSEARCH_ASSUME_NATIVE_BF16=1 (or 0) makes a CPU count as one with (or without)
native bf16 units: emulated bf16 computes the same numbers, only slower, so a test suite can run here as it would on
such a CPU. A resumed run keeps the dtype it started in (the checkpoint records it), as it keeps its layout.

`channels_last: null` is on for CUDA. On a CPU it is decided by a probe, as cudnn.benchmark does for kernels: a few
forward + backward steps of a copy of the model in each layout, on random batches of the run's shape, and the
faster layout wins (contiguous unless channels_last is ≥ 5 % faster). Both layouts compute the same function, up
to float rounding only, so the same command must not train in one layout today and the other tomorrow: a probe's
timings are kept per (processor, torch version, network, batch, dtype, threads) in the process and in
$DSEARCH_CACHE_DIR/layout-probes.json (default ~/.cache/dsearch, or $XDG_CACHE_HOME/dsearch), and a later run on this
host reads them instead of timing again. A search decides the layout once for its study (search/trainable.py:
study_layout) rather than by a timing in each trial; a resumed run keeps the layout of its checkpoint.

The decisions are pure functions (`choose_amp`, `choose_layout`, `parse_cpu_flags`); `detect_cpu` and
`probe_layouts` are the edges that read the processor and the clock.
"""

from __future__ import annotations

import copy
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import UserError

PROBE_STEPS = 2         # timed steps per layout, after one untimed warm-up step
PROBE_MARGIN = 1.05     # channels_last must be this much faster to be chosen
ASSUME_NATIVE_BF16 = "DSEARCH_ASSUME_NATIVE_BF16"   # 1: count this CPU as one with native bf16, 0: without


@dataclass(frozen=True)
class CpuFeatures:
    """The processor's native bf16 units."""

    avx512_bf16: bool = False
    amx_bf16: bool = False
    assumed: bool | None = None     # $DSEARCH_ASSUME_NATIVE_BF16's answer, which overrides the units found

    @property
    def native_bf16(self) -> bool:
        return self.assumed if self.assumed is not None else self.avx512_bf16 or self.amx_bf16

    @property
    def bf16_units(self) -> str:
        if self.assumed is not None:
            return (f"{'native' if self.assumed else 'no native'} bf16 assumed "
                    f"(${ASSUME_NATIVE_BF16}={int(self.assumed)})")
        units = [name for name, has in (("AMX-BF16", self.amx_bf16), ("AVX512-BF16", self.avx512_bf16)) if has]
        return " + ".join(units) if units else "no native bf16"


def parse_cpu_flags(cpuinfo: str) -> CpuFeatures:
    """The bf16 units named in /proc/cpuinfo's `flags` line (x86 Linux)."""
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags = set(line.partition(":")[2].split())
            return CpuFeatures(avx512_bf16="avx512_bf16" in flags, amx_bf16="amx_bf16" in flags)
    return CpuFeatures()


def detect_cpu() -> CpuFeatures:
    """This processor's bf16 units (read_cpu), unless $DSEARCH_ASSUME_NATIVE_BF16 is 1 or 0: then that answer."""
    cpu = read_cpu()
    value = os.environ.get(ASSUME_NATIVE_BF16, "").strip()
    if not value:
        return cpu
    if value not in ("0", "1"):
        raise UserError(f"${ASSUME_NATIVE_BF16}={value!r}: expected 1 (count this CPU as one with native bf16), "
                        "0 (as one without), or unset (what the processor has)")
    return CpuFeatures(cpu.avx512_bf16, cpu.amx_bf16, assumed=value == "1")


@lru_cache(maxsize=1)
def read_cpu() -> CpuFeatures:
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
DTYPE_NAMES = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}   # how records and checkpoints name them


def cuda_has_bf16(device: torch.device) -> bool:
    """Whether the CUDA device of the run (not the current default device) computes bf16 natively (Ampere on)."""
    if torch.version.hip:
        return True
    index = device.index if device.index is not None else torch.cuda.current_device()
    return torch.cuda.get_device_capability(index)[0] >= 8


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
    name = DTYPE_NAMES[amp]
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
CACHE_DIR = "DSEARCH_CACHE_DIR"
PROBE_FILE = "layout-probes.json"


def probe_file() -> Path:
    """Where this host keeps its layout probes: $DSEARCH_CACHE_DIR, else $XDG_CACHE_HOME/dsearch or ~/.cache/dsearch."""
    if os.environ.get(CACHE_DIR):
        return Path(os.environ[CACHE_DIR]).expanduser() / PROBE_FILE
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dsearch" / PROBE_FILE


@lru_cache(maxsize=1)
def _processor() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def _host_key(key: tuple) -> str:
    return repr((_processor(), torch.__version__, *key))


def _recall_probe(key: tuple) -> dict[bool, float] | None:
    """This host's earlier timings for key, or None (no file, an unreadable one, or no entry)."""
    import json

    try:
        entry = json.loads(probe_file().read_text()).get(_host_key(key))
        return {False: float(entry["contiguous"]), True: float(entry["channels_last"])}
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None


def _remember_probe(key: tuple, result: dict[bool, float]) -> None:
    """Add key's timings to the host's file (atomically: another run may write it too); a read-only home is fine."""
    import json

    path = probe_file()
    try:
        try:
            known = json.loads(path.read_text())
        except (OSError, ValueError):
            known = {}
        known[_host_key(key)] = {"contiguous": result[False], "channels_last": result[True]}
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(known, indent=1))
        tmp.replace(path)
    except OSError:
        pass


def probe_layouts(model: nn.Module, input_shape: tuple[int, ...], num_classes: int,
                  amp: torch.dtype | None, *, steps: int = PROBE_STEPS) -> dict[bool, float]:
    """Seconds per forward + backward step of a copy of model in each layout, on random batches of input_shape.

    The model, its BN statistics and the global random stream (dropout draws in the copies) are untouched. Kept
    per (network, batch, dtype, threads) for the process and in the host's probe file (see the module doc), so the
    same network trains in the same layout in every run on this host.
    """
    config = getattr(model, "config", None)
    key = (repr(config) if config is not None else repr(model), tuple(input_shape), str(amp), torch.get_num_threads())
    if key not in _PROBES and (known := _recall_probe(key)) is not None:
        _PROBES[key] = known
    if key not in _PROBES:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(input_shape, generator=g)
        y = torch.randint(0, num_classes, (input_shape[0],), generator=g)
        result = {}
        with torch.random.fork_rng(devices=[]):      # the CPU stream; the probe runs on a CPU
            for cl in (False, True):
                twin = copy.deepcopy(model).train()
                xi = x
                if cl:
                    twin = twin.to(memory_format=torch.channels_last)
                    xi = x.contiguous(memory_format=torch.channels_last)
                result[cl] = _step_seconds(twin, xi, y, amp, steps)
        _PROBES[key] = result
        _remember_probe(key, result)
    return _PROBES[key]


def resolve_precision(amp_setting: str, layout_setting: bool | None, device: torch.device, *,
                      model: nn.Module | None = None, input_shape: tuple[int, ...] | None = None,
                      num_classes: int = 10, resumed_layout: bool | None = None, resumed_amp: str | None = None,
                      chosen_layout: tuple[bool, str] | None = None) -> Precision:
    """The run's Precision: the pure choices above, fed by this machine's features and, on a CPU, the probe.

    resumed_layout, resumed_amp: the layout and dtype name (fp32, bf16, fp16) of the run being resumed; on auto they
    stand in for this machine's answer, so a resumed run continues as it started, on whatever node or GPU kind.
    chosen_layout: (channels_last, why) decided for this run elsewhere (a search decides once per study); it stands
    in for the probe on a CPU.
    """
    dev = device.type
    cpu = detect_cpu() if dev == "cpu" else None
    cuda_bf16 = dev == "cuda" and cuda_has_bf16(device)
    if amp_setting == "auto" and resumed_amp is not None:
        amp = {name: dtype for dtype, name in DTYPE_NAMES.items()}[resumed_amp]
        why = f"auto: {resumed_amp} as in the run resumed"
    else:
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
    if layout_setting is None and dev == "cpu" and chosen_layout is not None:
        return Precision(amp, chosen_layout[0], f"{why}; {chosen_layout[1]}")
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
