"""Training images/s through `fit` for every precision × layout, both networks, against the machine's matmul roof.

Networks (each also as torchvision's DenseNet class, the same network with the CIFAR 3×3 stem swapped in):
  bc100       DenseNet-BC L=100 k=12 (769,162 params), 32×32×3, --threads threads (default 2)
  quickstart  DenseNet-BC L=16 k=8 θ=0.5 (the quickstart's seed network), 28×28×1, 1 thread (as a quickstart trial)
Settings: fp32 (the CPU default before issue 13), fp32 + channels_last, bf16 autocast, bf16 + channels_last, and
`auto` (train.amp: auto, train.channels_last: null: what dsearch now picks on this processor; it names the setting).
Each measurement is one epoch of --steps steps of synthetic batches of --batch, after a 3-step warm-up epoch for each
fresh model (oneDNN builds its kernels for each new shape in the first steps); rounds alternate settings; the
median is reported. The roof is the best of a few square matmuls per dtype on the same threads; the fraction of the
roof is (3 × forward FLOPs per image, from dsearch.net.cost) × images/s ÷ roof (forward + backward ≈ 3 forwards).
Usage: python bench/throughput.py [--steps 6] [--rounds 2] [--threads 2] [--nets bc100,quickstart]
Writes bench/throughput.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

SETTINGS = {  # name: (train.amp, train.channels_last)
    "fp32": ("off", False),
    "fp32 + channels_last": ("off", True),
    "bf16": ("bf16", False),
    "bf16 + channels_last": ("bf16", True),
    "auto": ("auto", None),
}
NETS = {  # name: (dsearch model overrides, input (C, H, W), threads: None = --threads)
    "bc100": ({"variant": "densenet-bc", "depth": 100, "growth_rate": 12}, (3, 32, 32), None),
    "quickstart": ({"variant": "densenet-bc", "depth": 16, "growth_rate": 8, "compression": 0.5,
                    "in_channels": 1}, (1, 28, 28), 1),
}


def torchvision_twin(model_config):
    """torchvision's DenseNet class with the same blocks, growth, width and stem maps, and the CIFAR 3×3 stem."""
    import torch.nn as nn
    from torchvision.models.densenet import DenseNet

    c = model_config
    m = DenseNet(growth_rate=c.growth_rates[0], block_config=tuple(c.block_layers),
                 num_init_features=c.init_features, bn_size=c.bottleneck_width, num_classes=c.num_classes)
    m.features.conv0 = nn.Conv2d(c.in_channels, c.init_features, kernel_size=3, padding=1, bias=False)
    m.features.norm0, m.features.relu0, m.features.pool0 = nn.Identity(), nn.Identity(), nn.Identity()
    return m


def matmul_roof(dtype, threads: int, budget_s: float = 0.5) -> float:
    """Best GFLOP/s of n×n @ n×n in dtype on `threads` threads; n doubles from 256 to 2048 while one product
    takes under budget_s (emulated bf16 can be 20× slower than fp32), 3 repeats at each n."""
    import torch

    torch.set_num_threads(threads)
    best = 0.0
    for n in (256, 512, 1024, 2048):
        a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
        a @ b
        took = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            a @ b
            took = min(took, time.perf_counter() - t0)
        best = max(best, 2 * n ** 3 / took / 1e9)
        if took > budget_s:
            break
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=6, help="training steps per measurement")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=2, help="threads for bc100 (quickstart always uses 1)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--nets", default="bc100,quickstart")
    p.add_argument("--settings", default=",".join(SETTINGS))
    p.add_argument("--emulated-bf16", action="store_true",
                   help="measure the bf16 settings even on a CPU without native bf16 (slow)")
    args = p.parse_args()

    import torch

    from dsearch.net.config import ModelConfig
    from dsearch.net.cost import count_macs, count_params
    from dsearch.net.model import build_model
    from dsearch.training.config import DataConfig, RunConfig, TrainConfig
    from dsearch.training.data import load_data
    from dsearch.training.loop import fit

    from dsearch.training.precision import detect_cpu

    nets = args.nets.split(",")
    settings = args.settings.split(",")
    cpu = detect_cpu()
    skipped = [] if cpu.native_bf16 or args.emulated_bf16 else [s for s in settings if s.startswith("bf16")]
    settings = [s for s in settings if s not in skipped]
    threads_of = {n: NETS[n][2] or args.threads for n in nets}
    roof = {t: {"fp32": matmul_roof(torch.float32, t), "bf16": matmul_roof(torch.bfloat16, t)}
            for t in sorted(set(threads_of.values()))}

    def run_config(net: str, setting: str, steps: int) -> RunConfig:
        overrides, (c, h, _), _ = NETS[net]
        amp, cl = SETTINGS[setting]
        return RunConfig(model=ModelConfig(**overrides),
                         data=DataConfig(name="synthetic", synthetic_image_size=h, synthetic_channels=c,
                                         synthetic_size=steps * args.batch, val_size=10),
                         train=TrainConfig(epochs=1, batch_size=args.batch, device="cpu", amp=amp,
                                           channels_last=cl, num_threads=threads_of[net]))

    rows = []
    for net in nets:
        mc = ModelConfig(**NETS[net][0])
        inp = NETS[net][1]
        makers = {"dsearch": lambda: build_model(mc), "torchvision": lambda: torchvision_twin(mc)}
        flop_per_image = 3 * 2 * count_macs(mc, inp)
        cells = []
        for setting in settings:
            for impl, make in makers.items():
                warm, measured = run_config(net, setting, 3), run_config(net, setting, args.steps)
                torch.manual_seed(0)
                model = make()
                fit(warm, load_data(warm.data), model=model)
                cells.append((setting, impl, model, measured, load_data(measured.data)))
        rates = {(s, i): [] for s, i, *_ in cells}
        ran_as = {}
        for _ in range(args.rounds):
            for setting, impl, model, measured, data in cells:
                result = fit(measured, data, model=model)
                rates[(setting, impl)].append(result.images_per_s)
                ran_as[(setting, impl)] = result.precision["precision"]
        threads = threads_of[net]
        for setting in settings:
            resolved = ran_as[(setting, "dsearch")]
            dtype = "bf16" if resolved.startswith("bf16") else "fp32"
            ips = statistics.median(rates[(setting, "dsearch")])
            tv = statistics.median(rates[(setting, "torchvision")])
            rows.append({"net": net, "params": count_params(mc), "threads": threads, "setting": setting,
                         "resolved": resolved, "images_per_s": ips, "runs": rates[(setting, "dsearch")],
                         "torchvision_images_per_s": tv, "ratio_vs_torchvision": ips / tv,
                         "gflop_per_image": flop_per_image / 1e9,
                         "roof_fraction": ips * flop_per_image / 1e9 / roof[threads][dtype], "roof_dtype": dtype})
    base = {r["net"]: r["images_per_s"] for r in rows if r["setting"] == "fp32"}
    for r in rows:
        r["speedup_vs_fp32"] = r["images_per_s"] / base[r["net"]] if r["net"] in base else None

    print(f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
          f"{cpu.bf16_units}, batch {args.batch}, {args.steps} steps × {args.rounds} rounds")
    for t, r in roof.items():
        print(f"matmul roof, {t} thread(s): fp32 {r['fp32']:.1f} GFLOP/s, bf16 {r['bf16']:.1f} GFLOP/s")
    if skipped:
        print(f"not measured (no native bf16 on this CPU; --emulated-bf16 measures them): {', '.join(skipped)}")
    print(f"{'net':<11} {'thr':>3} {'setting':<22} {'runs as':<22} {'img/s':>7} {'× fp32':>6} {'roof':>6} "
          f"{'tv img/s':>8} {'÷ tv':>5}")
    for r in rows:
        sp = f"{r['speedup_vs_fp32']:.2f}" if r["speedup_vs_fp32"] else "-"
        print(f"{r['net']:<11} {r['threads']:>3} {r['setting']:<22} {r['resolved']:<22} {r['images_per_s']:>7.1f} "
              f"{sp:>6} {r['roof_fraction']:>6.1%} {r['torchvision_images_per_s']:>8.1f} "
              f"{r['ratio_vs_torchvision']:>5.2f}")
    out = Path(__file__).with_suffix(".json")
    out.write_text(json.dumps({"torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                               "bf16_units": cpu.bf16_units, "skipped": skipped,
                               "batch": args.batch, "steps": args.steps, "rounds": args.rounds,
                               "roof_gflops": roof, "rows": rows}, indent=2) + "\n")
    print(f"→ {out}")


if __name__ == "__main__":
    main()
