"""Does bf16 cost accuracy? The quickstart's seed network on real Fashion-MNIST in fp32 and in bf16 autocast.

DenseNet-BC L=16 k=8 θ=0.5 (19,978 params), 10,000 training images, 2,000 validation images, 4 epochs, batch 64,
lr 0.1 ÷10 after epochs 1 and 3 (the quickstart's protocol), one thread per run, seeds 0..--seeds-1. Reports the
final val_acc per seed and the medians; the issue-13 bar is |median(bf16) − median(fp32)| ≤ 0.005.
On a CPU without native bf16 the bf16 runs are emulated (same numerics, about 5× slower than fp32 here).
Usage: python bench/precision_accuracy.py [--seeds 3] [--jobs 2] [--settings fp32,bf16]
Writes bench/precision_accuracy.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

AMP = {"fp32": "off", "bf16": "bf16"}


def train_one(setting: str, seed: int) -> dict:
    import torch

    from dsearch.net.config import ModelConfig
    from dsearch.training.config import DataConfig, RunConfig, TrainConfig
    from dsearch.training.data import load_data
    from dsearch.training.loop import fit

    torch.set_num_threads(1)
    run = RunConfig(model=ModelConfig(variant="densenet-bc", depth=16, growth_rate=8, compression=0.5,
                                      in_channels=1),
                    data=DataConfig(name="fashion_mnist", augment=False, val_size=2000, train_subset=10000),
                    train=TrainConfig(epochs=4, batch_size=64, lr_milestones=(0.25, 0.75), seed=seed,
                                      device="cpu", amp=AMP[setting], num_threads=1))
    result = fit(run, load_data(run.data))
    return {"setting": setting, "seed": seed, "val_acc": result.final_val_acc, "precision": result.precision,
            "train_time_s": result.train_time_s}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--jobs", type=int, default=2, help="runs at once (one thread each)")
    p.add_argument("--settings", default="fp32,bf16")
    args = p.parse_args()
    settings = args.settings.split(",")
    jobs = [(s, seed) for seed in range(args.seeds) for s in settings]
    with ProcessPoolExecutor(args.jobs) as pool:
        runs = list(pool.map(train_one, *zip(*jobs)))
    medians = {s: statistics.median(r["val_acc"] for r in runs if r["setting"] == s) for s in settings}
    print(f"{'seed':>4} " + " ".join(f"{s:>8}" for s in settings))
    for seed in range(args.seeds):
        print(f"{seed:>4} " + " ".join(f"{r['val_acc']:>8.4f}" for s in settings for r in runs
                                        if r["setting"] == s and r["seed"] == seed))
    print("median " + " ".join(f"{medians[s]:>8.4f}" for s in settings))
    for s in settings[1:]:
        print(f"median({s}) − median({settings[0]}) = {medians[s] - medians[settings[0]]:+.4f}")
    for r in runs:
        print(f"  {r['setting']} seed {r['seed']}: {r['precision']['precision']}, {r['train_time_s']:.0f} s")
    out = Path(__file__).with_suffix(".json")
    out.write_text(json.dumps({"runs": runs, "medians": medians}, indent=2) + "\n")
    print(f"→ {out}")


if __name__ == "__main__":
    main()
