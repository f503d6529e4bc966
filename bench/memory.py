"""Peak memory and step time of one training step, normal vs memory-efficient DenseNet.

Each mode runs in a fresh process. CPU: peak RSS (getrusage high-water mark, glibc mmap threshold
fixed at 128 KiB) above the process's baseline just before the step; step time (median) in another
process whose glibc keeps freed memory, like a caching allocator, and again with glibc's defaults (model, optimizer and batch already built). GPU:
torch.cuda.max_memory_allocated above the allocation before the step.
Usage: python bench/memory.py [--preset densenet_bc100_k12] [--batch 64] [--steps 5] [--device cpu]
Writes bench/memory.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path


def measure(preset: str, efficient: bool, batch: int, steps: int, device: str, threads: int) -> dict:
    """One mode, in this process: peak memory of the first step (bytes), then mean step time (s)."""
    import torch

    from dsearch import build_model

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = build_model(preset, memory_efficient=efficient).to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4)
    c, h, w = model.config.default_input_size()
    x = torch.randn(batch, c, h, w, device=device)
    y = torch.randint(0, model.config.num_classes, (batch,), device=device)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        step()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        step()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    times.sort()
    return {"mode": "memory_efficient" if efficient else "normal", "peak_bytes": peak,
            "step_s": times[len(times) // 2]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="densenet_bc100_k12")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--child", choices=["normal", "memory_efficient"])
    a = ap.parse_args()
    if a.child:
        print(json.dumps(measure(a.preset, a.child == "memory_efficient", a.batch, a.steps, a.device,
                                 a.threads)))
        return
    def child(mode: str, env: dict) -> dict:
        out = subprocess.run([sys.executable, __file__, "--child", mode, "--preset", a.preset,
                              "--batch", str(a.batch), "--steps", str(a.steps), "--device", a.device,
                              "--threads", str(a.threads)], check=True, capture_output=True, text=True,
                             env=env)
        return json.loads(out.stdout.strip().splitlines()[-1])

    # Memory: a fixed mmap threshold makes glibc map every large tensor separately and unmap it on
    # free, so RSS follows the live tensors instead of the allocator's high-water heap.
    # Time: glibc told to keep what it frees (as PyTorch's CUDA caching allocator does); with its
    # defaults, each mode also pays page faults for memory it gave back — reported separately.
    caching = {"MALLOC_MMAP_THRESHOLD_": str(2 ** 32), "MALLOC_TRIM_THRESHOLD_": str(2 ** 36),
               "MALLOC_TOP_PAD_": str(2 ** 30)}
    rows = []
    for mode in ("normal", "memory_efficient"):
        mem = child(mode, {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(128 * 1024)})
        if a.device == "cpu":
            timed = child(mode, {**os.environ, **caching})
            default = child(mode, dict(os.environ))
            rows.append({**mem, "step_s": timed["step_s"], "step_s_default_malloc": default["step_s"]})
        else:
            rows.append(mem)
    normal, eff = rows
    result = {"preset": a.preset, "batch": a.batch, "device": a.device, "threads": a.threads,
              "rows": rows, "memory_ratio": eff["peak_bytes"] / normal["peak_bytes"],
              "time_ratio": eff["step_s"] / normal["step_s"]}
    print(f"{'mode':<18}{'peak MiB':>10}{'step s':>9}")
    for r in rows:
        print(f"{r['mode']:<18}{r['peak_bytes'] / 2**20:>10.1f}{r['step_s']:>9.3f}")
    print(f"memory-efficient / normal: memory {result['memory_ratio']:.1%}, time {result['time_ratio']:.1%}")
    if "step_s_default_malloc" in eff:
        result["time_ratio_default_malloc"] = eff["step_s_default_malloc"] / normal["step_s_default_malloc"]
        print(f"(with glibc's default malloc settings: {normal['step_s_default_malloc']:.3f} s vs "
              f"{eff['step_s_default_malloc']:.3f} s, time {result['time_ratio_default_malloc']:.1%})")
    Path(__file__).with_suffix(".json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
