"""One-call GPU check (≤ 8 minutes on one H100-class GPU): training speed, packing, memory model, a short search.

Four sections, each a function whose dict is stored under its key in the JSON (an exception in one is recorded as
{"error": ...} and the others still run); the JSON is rewritten after every section, so a run cut short keeps what
finished. The total wall time is recorded too.
  throughput  training images/s (SGD Nesterov 0.9, wd 1e-4, cross-entropy on out.float(); synthetic batches made
              on the device; --warmup steps, then --steps timed steps between two torch.cuda.synchronize()) of
              bc100       DenseNet-BC L=100 k=12 (dsearch.build_model("densenet_bc100_k12")), 32×32×3, and
              quickstart  DenseNet-BC L=16 k=8 θ=0.5, 1 input channel (the quickstart space's seed network), 28×28×1,
              at --batch (64), each under fp32, bf16 autocast, fp32 + channels_last, bf16 + channels_last,
              torch.compile (bf16 + channels_last) and the memory-efficient path (bf16 + channels_last); and
              torchvision's DenseNet class with the same blocks, growth, width and stem maps and the CIFAR 3×3 stem
              (bench/throughput.py's torchvision_twin) under fp32, bf16 + channels_last and compile. cudnn.benchmark
              is on, as in dsearch's GPU training. Compile cells run last; a cell that would start after
              --throughput-s seconds of the section is skipped (recorded "skipped").
  packing     aggregate training images/s of 1, 2, 4 and 8 concurrent quickstart-size training processes (spawned)
              on the one GPU, bf16 + channels_last at --batch: each process caps itself at 1/N of the device's
              memory (torch.cuda.set_per_process_memory_fraction), runs --pack-warmup steps, waits for the others
              (a barrier), then trains for a --pack-window-s wall-clock window and reports images and seconds (last
              step synchronized); aggregate = the sum of the per-process images/s. Target: 4 processes ≥ 2.5× one.
  memory      the closed-form model (net/cost.count_memory) against a measured step (training/memory.measure_step:
              torch.cuda.max_memory_allocated over a second training step) for 5 networks, normal and
              memory-efficient, fp32 and bf16, channels_last: saved bytes predicted and measured (exactly equal
              expected) and peak bytes (the ratio predicted / measured). On the GPU in its own spawned process, so
              the other sections' allocations (cuBLAS workspaces, compiled graphs) are not in the measured peak.
  search      `dsearch run` (python -m dsearch.cli run SPACE --study-dir DIR --quiet) of spaces/quickstart.yaml with
              resources {cpu: 1, gpu: 0.25} and max_concurrent_trials 4, in a temp folder, stopped with SIGINT
              (which dsearch handles cleanly: running trials are recorded interrupted) at --search-s seconds (180)
              or earlier if the whole check would pass --budget-s; its wall time and the trials' states and
              speeds, read from the study with Optuna. Real Fashion-MNIST where dsearch finds it (--data-dir,
              $DSEARCH_DATA, ./data, /usr/share/datasets/fashion-mnist), else synthetic images of the same shape
              (recorded in "data").
--dry-run: every code path on a CPU-only machine in under a minute (device cpu, 1 thread, batch 4, 1 warm-up step and
1 timed step, bc100 on 8×8 images; torch.compile with backend "eager" on the quickstart nets only, bc100's compile
cells skipped; packing with 1 and 2 processes for 1 s windows; memory on the CPU (the profiler's allocator total,
contiguous, fp32, 2 threads) for 2 small networks at batch 2; a 1-trial, 1-epoch search on synthetic 28×28×1
images with gpu 0).
Usage: python bench/gpu_check.py [--dry-run] [--out bench/gpu_check.json] [--sections throughput,packing,...]
Writes bench/gpu_check.json (or --out).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
QUICKSTART_SPACE = ROOT / "spaces" / "quickstart.yaml"

QUICKSTART = {"variant": "densenet-bc", "depth": 16, "growth_rate": 8, "compression": 0.5, "in_channels": 1}
NETS = {  # name: (preset name or ModelConfig fields, input (C, H, W))
    "bc100": ("densenet_bc100_k12", (3, 32, 32)),
    "quickstart": (QUICKSTART, (1, 28, 28)),
}
DRY_INPUT = {"bc100": (3, 8, 8)}      # --dry-run: bc100 on 8×8 images (bf16 is emulated on most CPUs: slow)
SETTINGS = {  # name: (autocast dtype, channels_last, torch.compile, memory_efficient)
    "fp32": (None, False, False, False),
    "bf16": ("bf16", False, False, False),
    "fp32 + channels_last": (None, True, False, False),
    "bf16 + channels_last": ("bf16", True, False, False),
    "compile (bf16 + channels_last)": ("bf16", True, True, False),
    "memory_efficient (bf16 + channels_last)": ("bf16", True, False, True),
}
TORCHVISION_SETTINGS = ("fp32", "bf16 + channels_last", "compile (bf16 + channels_last)")
UNEVEN = {"block_layers": (2, 3, 1), "growth_rate": (4, 6, 5), "bottleneck": True, "bottleneck_width": 3,
          "compression": 0.7, "init_features": 7}
MEMORY_NETS = {  # name: (preset name or ModelConfig fields, input (C, H, W), batch on the GPU)
    "densenet_bc100_k12": ("densenet_bc100_k12", (3, 32, 32), 64),
    "densenet40_k12": ("densenet40_k12", (3, 32, 32), 64),
    "quickstart": (QUICKSTART, (1, 28, 28), 64),
    "densenet121": ("densenet121", (3, 224, 224), 8),
    "uneven": (UNEVEN, (3, 32, 32), 64),
}
DRY_MEMORY_NETS = ("quickstart", "uneven")
PACKING_TARGET = 2.5
STUDY = "gpu_check"


def model_config(spec):
    from dsearch import ModelConfig
    from dsearch.net.presets import resolve_config

    return resolve_config(spec) if isinstance(spec, str) else ModelConfig(**spec)


def synchronize(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def training_setup(model, input_size, batch: int, device: str, channels_last: bool, num_classes: int):
    """The model on the device (train mode, in the layout), its SGD, one synthetic batch made on the device."""
    import torch

    layout = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(device, memory_format=layout).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4)
    x = torch.randn(batch, *input_size, device=device).contiguous(memory_format=layout)
    y = torch.randint(0, num_classes, (batch,), device=device)
    return model, optimizer, x, y


# --- 1. throughput ---------------------------------------------------------------------------------------------


def time_cell(make, input_size, setting: str, a) -> dict:
    """Warm-up then timed training steps of a fresh model under one setting; images/s."""
    import torch

    from dsearch.training.memory import train_step      # the step as dsearch's loop runs it
    from dsearch.training.precision import AMP_DTYPES

    amp, channels_last, compiled, _ = SETTINGS[setting]
    torch.manual_seed(0)
    model = make()
    num_classes = model.classifier.out_features
    model, optimizer, x, y = training_setup(model, input_size, a.batch, a.device, channels_last, num_classes)
    run = torch.compile(model, backend=a.compile_backend) if compiled else model
    t0 = time.perf_counter()
    for _ in range(a.warmup):
        train_step(run, optimizer, x, y, AMP_DTYPES.get(amp))
    synchronize(a.device)
    t1 = time.perf_counter()
    for _ in range(a.steps):
        train_step(run, optimizer, x, y, AMP_DTYPES.get(amp))
    synchronize(a.device)
    took = time.perf_counter() - t1
    row = {"images_per_s": a.steps * a.batch / took, "ms_per_step": 1000 * took / a.steps,
           "warmup_s": t1 - t0}
    if compiled:
        row["compile_backend"] = a.compile_backend
    return row


def throughput(a) -> dict:
    import torch

    from dsearch.net.model import build_model

    sys.path.insert(0, str(HERE))
    from throughput import torchvision_twin

    if a.device == "cuda":
        torch.backends.cudnn.benchmark = True
    cells = []          # (net, impl, setting, maker)
    for net, (spec, _) in NETS.items():
        config = model_config(spec)
        for setting, (_, _, _, efficient) in SETTINGS.items():
            cells.append((net, "dsearch", setting,
                          lambda c=config, e=efficient: build_model(c, memory_efficient=e)))
        for setting in TORCHVISION_SETTINGS:
            cells.append((net, "torchvision", setting, lambda c=config: torchvision_twin(c)))
    compile_order = {("quickstart", "dsearch"): 0, ("quickstart", "torchvision"): 1,
                     ("bc100", "dsearch"): 2, ("bc100", "torchvision"): 3}
    eager = [c for c in cells if not SETTINGS[c[2]][2]]
    compiled = sorted((c for c in cells if SETTINGS[c[2]][2]), key=lambda c: compile_order[c[:2]])
    start = time.perf_counter()
    rows = []
    for net, impl, setting, make in eager + compiled:
        size = DRY_INPUT.get(net, NETS[net][1]) if a.dry_run else NETS[net][1]
        row = {"net": net, "impl": impl, "setting": setting, "batch": a.batch, "input": list(size)}
        elapsed = time.perf_counter() - start
        if SETTINGS[setting][2] and a.dry_run and net == "bc100":
            row["skipped"] = ("torch.compile of DenseNet-BC-100 on a CPU takes minutes with inductor (and > 7 s "
                              "with backend eager on 2 cores); --dry-run compiles the quickstart nets only")
        elif elapsed > a.throughput_s:
            row["skipped"] = f"the section's budget: {elapsed:.0f} s spent of --throughput-s {a.throughput_s:g}"
        else:
            try:
                row.update(time_cell(make, size, setting, a))
            except Exception as e:      # one cell (an OOM, a compile error) doesn't lose the others
                row["error"] = f"{type(e).__name__}: {e}"
            finally:
                if SETTINGS[setting][2]:
                    torch._dynamo.reset()
                if a.device == "cuda":
                    torch.cuda.empty_cache()
        rows.append(row)
    fp32 = {(r["net"], r["impl"]): r.get("images_per_s") for r in rows if r["setting"] == "fp32"}
    dsearch_rate = {(r["net"], r["setting"]): r.get("images_per_s") for r in rows if r["impl"] == "dsearch"}
    for r in rows:
        base = fp32.get((r["net"], r["impl"]))
        if r.get("images_per_s") and base:
            r["speedup_vs_fp32"] = r["images_per_s"] / base
        twin = dsearch_rate.get((r["net"], r["setting"]))
        if r["impl"] == "torchvision" and r.get("images_per_s") and twin:
            r["dsearch_vs_torchvision"] = twin / r["images_per_s"]
    out = {"batch": a.batch, "warmup_steps": a.warmup, "timed_steps": a.steps,
           "cudnn_benchmark": a.device == "cuda", "rows": rows}
    failed = [f"{r['net']} {r['impl']} {r['setting']}: {r['error']}" for r in rows if "error" in r]
    if failed:
        out["error"] = f"{len(failed)} of {len(rows)} cells failed: " + "; ".join(failed)
    return out


def print_throughput(s: dict) -> None:
    print(f"throughput (batch {s['batch']}, {s['warmup_steps']} warm-up + {s['timed_steps']} timed steps)")
    print(f"{'net':<11} {'impl':<12} {'setting':<40} {'img/s':>9} {'ms/step':>8} {'× fp32':>7} {'warm s':>7}")
    for r in s["rows"]:
        if "images_per_s" not in r:
            print(f"{r['net']:<11} {r['impl']:<12} {r['setting']:<40} "
                  f"{('skipped: ' + r['skipped']) if 'skipped' in r else 'error: ' + r.get('error', '?')}")
            continue
        sp = f"{r['speedup_vs_fp32']:.2f}" if "speedup_vs_fp32" in r else "-"
        print(f"{r['net']:<11} {r['impl']:<12} {r['setting']:<40} {r['images_per_s']:>9.0f} "
              f"{r['ms_per_step']:>8.2f} {sp:>7} {r['warmup_s']:>7.1f}")


# --- 2. packing ------------------------------------------------------------------------------------------------


def pack_worker(rank: int, n: int, device: str, amp: str | None, channels_last: bool, batch: int, warmup: int,
                window_s: float, barrier, queue) -> None:
    """One of n concurrent training processes: capped at 1/n of the GPU, warm-up, then a timed window."""
    try:
        import torch

        from dsearch.net.model import build_model
        from dsearch.training.memory import train_step
        from dsearch.training.precision import AMP_DTYPES

        torch.set_num_threads(1)
        if device == "cuda":
            torch.cuda.set_per_process_memory_fraction(1 / n)
            torch.backends.cudnn.benchmark = True
        torch.manual_seed(rank)
        config = model_config(QUICKSTART)
        model, optimizer, x, y = training_setup(build_model(config), NETS["quickstart"][1], batch, device,
                                                channels_last, config.num_classes)
        for _ in range(warmup):
            train_step(model, optimizer, x, y, AMP_DTYPES.get(amp))
        synchronize(device)
        barrier.wait(timeout=300)
        images, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < window_s:
            train_step(model, optimizer, x, y, AMP_DTYPES.get(amp))
            images += batch
        synchronize(device)
        seconds = time.perf_counter() - t0
        queue.put({"rank": rank, "images": images, "seconds": seconds, "images_per_s": images / seconds})
    except BaseException as e:
        queue.put({"rank": rank, "error": f"{type(e).__name__}: {e}"})
        barrier.abort()


def collect(queue, procs, n: int, timeout_s: float) -> list:
    """Up to n results from the queue: until all came, the time is up, or every process has exited."""
    import queue as queues

    results, deadline = [], time.perf_counter() + timeout_s
    while len(results) < n and time.perf_counter() < deadline:
        try:
            results.append(queue.get(timeout=1))
        except queues.Empty:
            if not any(p.is_alive() for p in procs):
                try:
                    results.append(queue.get(timeout=1))    # put just before it exited
                except queues.Empty:
                    break
    for p in procs:
        p.join(timeout=30)
        if p.is_alive():
            p.terminate()
            p.join()
    return results


def pack_once(n: int, a) -> dict:
    import multiprocessing as mp

    # CUDA needs fresh processes (spawn). On a CPU (--dry-run) a fork server that has imported torch and this module
    # once starts each worker in a fraction of a second instead of a fresh interpreter's few seconds.
    ctx = mp.get_context("spawn" if a.device == "cuda" else "forkserver")
    if a.device != "cuda":
        ctx.set_forkserver_preload(["torch", "dsearch.net.model", __name__])
    barrier, queue = ctx.Barrier(n), ctx.Queue()
    amp, channels_last = (None, False) if a.device == "cpu" else ("bf16", True)
    procs = [ctx.Process(target=pack_worker, args=(rank, n, a.device, amp, channels_last, a.batch,
                                                   a.pack_warmup, a.pack_window_s, barrier, queue))
             for rank in range(n)]
    t0 = time.perf_counter()
    for p in procs:
        p.start()
    results = collect(queue, procs, n, 300 + a.pack_window_s)
    results.sort(key=lambda r: r["rank"])
    errors = [r["error"] for r in results if "error" in r]
    if len(results) < n:
        errors.append(f"{n - len(results)} of {n} processes reported nothing")
    row = {"processes": n, "per_process": results, "wall_s": time.perf_counter() - t0,
           "setting": "fp32" if amp is None else "bf16 + channels_last"}
    if errors:
        row["error"] = "; ".join(errors)
    else:
        row["aggregate_images_per_s"] = sum(r["images_per_s"] for r in results)
    return row


def packing(a) -> dict:
    rows = [pack_once(n, a) for n in a.pack]
    agg = {r["processes"]: r.get("aggregate_images_per_s") for r in rows}
    out = {"batch": a.batch, "warmup_steps": a.pack_warmup, "window_s": a.pack_window_s, "rows": rows,
           "target_4_vs_1": PACKING_TARGET}
    if agg.get(1):
        for n, v in agg.items():
            if n != 1 and v:
                out[f"ratio_{n}_vs_1"] = v / agg[1]
    if "ratio_4_vs_1" in out:
        out["meets_target"] = out["ratio_4_vs_1"] >= PACKING_TARGET
    if any("error" in r for r in rows):
        out["error"] = "; ".join(f"{r['processes']} processes: {r['error']}" for r in rows if "error" in r)
    return out


def print_packing(s: dict) -> None:
    print(f"packing: quickstart-size net, batch {s['batch']}, {s['window_s']:g} s windows")
    print(f"{'procs':>5} {'aggregate img/s':>16} {'per process img/s':<40}")
    for r in s["rows"]:
        each = ", ".join(f"{p['images_per_s']:.0f}" for p in r["per_process"] if "images_per_s" in p)
        agg = f"{r['aggregate_images_per_s']:.0f}" if "aggregate_images_per_s" in r else "error"
        print(f"{r['processes']:>5} {agg:>16} {each:<40}")
    for k, v in s.items():
        if k.startswith("ratio_"):
            print(f"{k}: {v:.2f}×" + (f" (target ≥ {PACKING_TARGET}×)" if k == "ratio_4_vs_1" else ""))


# --- 3. memory -------------------------------------------------------------------------------------------------


def memory_rows(device: str, names: list, dtypes: list, channels_last: bool, batch: int | None,
                threads: int | None) -> list:
    """count_memory against measure_step for each network × normal / efficient × dtype."""
    import gc

    import torch

    from dsearch.net.cost import count_memory
    from dsearch.training.memory import measure_step
    from dsearch.training.precision import AMP_DTYPES      # fp32: not a key, None

    if threads:
        torch.set_num_threads(threads)
    if device == "cuda":
        torch.backends.cudnn.benchmark = True
    rows = []
    for name in names:
        spec, size, gpu_batch = MEMORY_NETS[name]
        b = batch or gpu_batch
        for efficient in (False, True):
            config = model_config(spec).with_overrides(memory_efficient=efficient)
            for dtype in dtypes:
                row = {"net": name, "memory_efficient": efficient, "dtype": dtype, "batch": b,
                       "input": list(size), "device": device, "channels_last": channels_last}
                try:
                    gc.collect()
                    if device == "cuda":
                        torch.cuda.empty_cache()
                        row["allocated_before_bytes"] = torch.cuda.memory_allocated()
                    predicted = count_memory(config, size, b, dtype, efficient, device=device,
                                             channels_last=channels_last)
                    measured = measure_step(config, b, size, amp=AMP_DTYPES.get(dtype),
                                            device=device, channels_last=channels_last)
                    row.update({"saved_predicted": predicted.saved_bytes, "saved_measured": measured.saved_bytes,
                                "saved_equal": predicted.saved_bytes == measured.saved_bytes,
                                "peak_predicted": predicted.peak_bytes, "peak_measured": measured.peak_bytes,
                                "peak_ratio": predicted.peak_bytes / measured.peak_bytes,
                                "state_bytes": predicted.state_bytes, "batch_bytes": predicted.batch_bytes})
                except Exception as e:
                    row["error"] = f"{type(e).__name__}: {e}"
                rows.append(row)
    return rows


def _memory_child(kwargs: dict, queue) -> None:
    try:
        queue.put({"rows": memory_rows(**kwargs)})
    except BaseException as e:
        queue.put({"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()})


def memory(a) -> dict:
    """In a spawned process: the measured peak is everything that process has on the device."""
    import multiprocessing as mp

    if a.dry_run:
        # 2 threads, as tests/conftest.py runs test_memory.py: with 1 thread and batch ≤ 8 the CPU step of the
        # memory-efficient path allocates less than at 2 threads, or at batch ≥ 16 (predicted / measured ≈ 1.12).
        kwargs = {"device": "cpu", "names": list(DRY_MEMORY_NETS), "dtypes": ["fp32"], "channels_last": False,
                  "batch": 2, "threads": 2}
    else:
        kwargs = {"device": "cuda", "names": list(MEMORY_NETS), "dtypes": ["fp32", "bf16"], "channels_last": True,
                  "batch": None, "threads": None}
    if a.dry_run:
        # On a CPU the measured peak is over the profiled step alone (training/memory.py), whatever the process
        # holds: no process of its own needed, which saves its start (~4 s) in CI.
        result = {"rows": memory_rows(**kwargs)}
    else:
        ctx = mp.get_context("spawn")
        queue = ctx.Queue()
        p = ctx.Process(target=_memory_child, args=(kwargs, queue))
        p.start()
        got = collect(queue, [p], 1, a.memory_timeout_s)
        result = got[0] if got else {"error": f"the memory process reported nothing (exit code {p.exitcode}; "
                                              f"--memory-timeout-s {a.memory_timeout_s:g})"}
    if "rows" in result:
        errors = [f"{r['net']} {r['dtype']} {'efficient' if r['memory_efficient'] else 'normal'}: {r['error']}"
                  for r in result["rows"] if "error" in r]
        if errors:
            result["error"] = "; ".join(errors)
        ok = [r for r in result["rows"] if "error" not in r]
        result["all_saved_equal"] = all(r["saved_equal"] for r in ok)
        if ok:
            result["peak_ratio_range"] = [min(r["peak_ratio"] for r in ok), max(r["peak_ratio"] for r in ok)]
    return {**{k: kwargs[k] for k in ("device", "dtypes", "channels_last", "threads")},
            "cudnn_benchmark": kwargs["device"] == "cuda", **result}


def print_memory(s: dict) -> None:
    print(f"memory: count_memory vs measure_step on {s['device']} "
          f"({'channels_last' if s['channels_last'] else 'contiguous'})")
    print(f"{'net':<19} {'path':<10} {'dtype':<5} {'batch':>5} {'saved pred MiB':>14} {'= meas':>6} "
          f"{'peak pred MiB':>13} {'peak meas MiB':>13} {'ratio':>6}")
    for r in s.get("rows", []):
        path = "efficient" if r["memory_efficient"] else "normal"
        if "error" in r:
            print(f"{r['net']:<19} {path:<10} {r['dtype']:<5} {r['batch']:>5} error: {r['error']}")
            continue
        print(f"{r['net']:<19} {path:<10} {r['dtype']:<5} {r['batch']:>5} {r['saved_predicted'] / 2**20:>14.2f} "
              f"{str(r['saved_equal']):>6} {r['peak_predicted'] / 2**20:>13.2f} {r['peak_measured'] / 2**20:>13.2f} "
              f"{r['peak_ratio']:>6.3f}")


# --- 4. search -------------------------------------------------------------------------------------------------


def search_space(a, tmp: Path) -> tuple[Path, dict]:
    """spaces/quickstart.yaml with fractional-GPU resources (or, dry-run, a tiny budget on synthetic images)."""
    import yaml

    from dsearch.training.config import DataConfig
    from dsearch.training.data.locate import MissingDataError, find_files

    space = yaml.safe_load(QUICKSTART_SPACE.read_text())
    space["name"] = STUDY
    space["budget"]["num_samples"] = a.search_samples
    if a.dry_run:
        space["resources"] = {"cpu": 1, "gpu": 0}
        space["budget"].update({"max_epochs": 1, "max_concurrent_trials": 1})
        space["data"] = {"name": "synthetic", "augment": False, "synthetic_channels": 1, "synthetic_image_size": 28,
                         "synthetic_size": 256, "val_size": 64}
        data = "synthetic 28×28×1 (dry run: 256 training images, 64 validation)"
    else:
        space["resources"] = {"cpu": 1, "gpu": 0.25}
        space["budget"]["max_concurrent_trials"] = 4
        if a.data_dir:
            space["data"]["root"] = str(a.data_dir)
        try:
            find_files(DataConfig(**space["data"]))
            data = "fashion_mnist"
        except MissingDataError as e:
            kept = {k: space["data"][k] for k in ("augment", "val_size") if k in space["data"]}
            space["data"] = {"name": "synthetic", **kept, "synthetic_channels": 1, "synthetic_image_size": 28,
                             "synthetic_size": space["data"].get("train_subset", 10000)}
            data = f"synthetic 28×28×1 of the quickstart's sizes (fashion_mnist not found: {e})"
    path = tmp / "space.yaml"
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    return path, {"data": data, "resources": space["resources"], "budget": space["budget"]}


def search(a, deadline_s: float) -> dict:
    import shutil

    tmp = Path(tempfile.mkdtemp(prefix="gpu_check_search_"))
    try:
        result = run_search(a, deadline_s, tmp)
    finally:
        if not a.keep_study:
            shutil.rmtree(tmp, ignore_errors=True)
    if a.keep_study:
        result["study_dir"] = str(tmp / "study")
    return result


def run_search(a, deadline_s: float, tmp: Path) -> dict:
    import optuna

    from dsearch.search.record import summarize

    space, described = search_space(a, tmp)
    study_dir = tmp / "study"
    log = tmp / "run.log"
    cmd = [sys.executable, "-m", "dsearch.cli", "run", str(space), "--study-dir", str(study_dir), "--quiet"]
    t0 = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
        interrupted = False
        try:
            proc.wait(timeout=deadline_s)
        except subprocess.TimeoutExpired:
            interrupted = True
            proc.send_signal(signal.SIGINT)            # dsearch stops its trials and records them
            try:
                proc.wait(timeout=a.search_grace_s)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGINT)        # a second Ctrl-C stops at once
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
    wall = time.perf_counter() - t0
    output = log.read_text(errors="replace").splitlines()
    result = {**described, "command": " ".join(cmd[1:]), "deadline_s": deadline_s, "interrupted_at_deadline":
              interrupted, "returncode": proc.returncode, "wall_s": wall, "output_tail": output[-15:]}
    expected = (130,) if interrupted else (0,)
    if proc.returncode not in expected:
        result["error"] = f"dsearch run exited {proc.returncode} (expected {expected[0]}): " + \
                          (output[-1] if output else "no output")
    db = study_dir / "study.db"
    if not db.exists():
        result.setdefault("error", "no study.db was written")
        return result
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=STUDY, storage=f"sqlite:///{db}")
    summary = summarize(study, wall)
    trials = []
    for t in study.get_trials(deepcopy=False):
        u = t.user_attrs
        trials.append({"number": t.number, "state": t.state.name, "params": t.params,
                       "values": t.values, **{k: u[k] for k in (
                           "epochs_trained", "images_per_s", "wall_time_s", "train_time_s", "peak_memory_bytes",
                           "precision", "worker_pid", "fail_reason", "error_kind", "error") if k in u}})
    result.update({"states": summary["trials"], "best_val_acc": summary["best_val_acc"],
                   "overhead_share": summary["overhead_share"], "trials": trials})
    return result


def print_search(s: dict) -> None:
    print(f"search: {s.get('command', '')}")
    print(f"  data {s.get('data')}; resources {s.get('resources')}; exit {s.get('returncode')} after "
          f"{s.get('wall_s', 0):.0f} s{' (SIGINT at the deadline)' if s.get('interrupted_at_deadline') else ''}")
    print(f"  states {s.get('states')}; best val_acc {s.get('best_val_acc')}; overhead {s.get('overhead_share')}")
    for t in s.get("trials", []):
        ips = f"{t['images_per_s']:.0f} img/s" if t.get("images_per_s") else ""
        print(f"  trial {t['number']:>3} {t['state']:<9} epochs {t.get('epochs_trained', '-')} {ips} "
              f"{t.get('precision', '')} {t.get('fail_reason', '')}")


# --- driver ----------------------------------------------------------------------------------------------------


def environment(a) -> dict:
    import torch

    env = {"torch": torch.__version__, "python": platform.python_version(), "device": a.device,
           "cpu_count": os.cpu_count(), "dry_run": a.dry_run}
    if a.device == "cuda":
        p = torch.cuda.get_device_properties(0)
        env.update({"gpu": p.name, "gpu_memory_bytes": p.total_memory, "cuda": torch.version.cuda,
                    "cudnn": torch.backends.cudnn.version(), "capability": list(torch.cuda.get_device_capability())})
    return env


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU: every code path, no GPU")
    p.add_argument("--out", type=Path, default=HERE / "gpu_check.json")
    p.add_argument("--sections", default="throughput,packing,memory,search")
    p.add_argument("--batch", type=int, help="default 64 (dry run 4)")
    p.add_argument("--warmup", type=int, help="warm-up steps per throughput cell (default 10, dry run 1)")
    p.add_argument("--steps", type=int, help="timed steps per throughput cell (default 50, dry run 1)")
    p.add_argument("--throughput-s", type=float, default=150,
                   help="cells that would start after this many seconds of the section are skipped")
    p.add_argument("--compile-backend", help="torch.compile backend (default inductor; dry run eager)")
    p.add_argument("--pack", help="process counts (default 1,2,4,8; dry run 1,2)")
    p.add_argument("--pack-warmup", type=int, help="warm-up steps per process (default 20, dry run 2)")
    p.add_argument("--pack-window-s", type=float, help="timed window per process count (default 8, dry run 1)")
    p.add_argument("--memory-timeout-s", type=float, default=240)
    p.add_argument("--search-s", type=float, help="SIGINT the search after this many seconds (default 180, "
                   "dry run 120: it ends on its own first)")
    p.add_argument("--search-samples", type=int, help="the space's num_samples (default 40: more than 3 minutes "
                   "hold, so the run is stopped at its deadline; dry run 1)")
    p.add_argument("--search-grace-s", type=float, default=30, help="wait for the search after its SIGINT")
    p.add_argument("--budget-s", type=float, default=470,
                   help="the search is cut to end (SIGINT + grace) within this many seconds of the start")
    p.add_argument("--data-dir", type=Path, help="where Fashion-MNIST's IDX files are (for the search)")
    p.add_argument("--keep-study", action="store_true", help="keep the search's temp folder (its path is recorded)")
    a = p.parse_args()
    dry = a.dry_run
    for name, full, tiny in (("batch", 64, 4), ("warmup", 10, 1), ("steps", 50, 1), ("compile_backend", "inductor",
                             "eager"), ("pack", "1,2,4,8", "1,2"), ("pack_warmup", 20, 2), ("pack_window_s", 8, 1.0),
                             ("search_s", 180, 120), ("search_samples", 40, 1)):
        if getattr(a, name) is None:
            setattr(a, name, tiny if dry else full)
    a.pack = [int(n) for n in str(a.pack).split(",")]
    if min(a.pack) < 1:
        p.error(f"--pack: process counts must be ≥ 1, got {a.pack}")
    sections = a.sections.split(",")
    unknown = set(sections) - {"throughput", "packing", "memory", "search"}
    if unknown:
        p.error(f"unknown sections: {', '.join(sorted(unknown))}")

    start = time.perf_counter()
    import torch

    if not dry and not torch.cuda.is_available():
        sys.exit("gpu_check: error: no CUDA device: this check needs a GPU (or use --dry-run for the CPU)")
    a.device = "cpu" if dry else "cuda"
    if dry:
        torch.set_num_threads(1)
    result = {"environment": environment(a), "args": {k: (str(v) if isinstance(v, Path) else v)
                                                      for k, v in vars(a).items()}}

    def save() -> None:
        result["total_wall_s"] = time.perf_counter() - start
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(result, indent=2, default=str) + "\n")

    runs = {"throughput": (throughput, print_throughput), "packing": (packing, print_packing),
            "memory": (memory, print_memory), "search": (search, print_search)}
    for name in sections:
        fn, show = runs[name]
        t0 = time.perf_counter()
        try:
            if name == "search":
                left = a.budget_s - (t0 - start) - a.search_grace_s
                out = fn(a, max(30.0, min(a.search_s, left)))
            else:
                out = fn(a)
        except Exception as e:
            out = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
        out["section_wall_s"] = time.perf_counter() - t0
        result[name] = out
        save()
        print()
        if "rows" in out or "trials" in out:
            show(out)
        if "error" in out:
            print(f"{name}: error: {out['error']}")
        print(f"({name}: {out['section_wall_s']:.1f} s)")
    if a.device == "cuda":
        result["environment"]["max_memory_allocated_bytes"] = torch.cuda.max_memory_allocated()
    save()
    print(f"\ntotal {result['total_wall_s']:.1f} s → {a.out}")


if __name__ == "__main__":
    main()
