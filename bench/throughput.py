"""Training images/s through `fit` (what `dsearch train` runs): dsearch's DenseNet-BC-100 k=12 vs torchvision's.

The torchvision model is torchvision.models.densenet.DenseNet(growth_rate=12, block_config=(16, 16, 16),
num_init_features=24, bn_size=4) with the CIFAR stem (one 3×3 conv, no BN/ReLU/max-pool) swapped in: the
same network, 769,162 params. Both train on the same 32×32 synthetic batches of 64 under the same protocol.
Each measurement is one epoch of --steps steps, after a 3-step warm-up epoch per model (oneDNN builds its
kernels for each new shape in the first steps); rounds alternate the models; the median is reported.
Usage: python bench/throughput.py [--steps 6] [--rounds 2] [--threads 2] [--device auto]
Writes bench/throughput.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def torchvision_densenet_bc100_k12():
    """torchvision's DenseNet class in the paper's CIFAR configuration (3×3 stem conv, 24 maps)."""
    import torch.nn as nn
    from torchvision.models.densenet import DenseNet

    m = DenseNet(growth_rate=12, block_config=(16, 16, 16), num_init_features=24, bn_size=4, num_classes=10)
    m.features.conv0 = nn.Conv2d(3, 24, kernel_size=3, padding=1, bias=False)
    m.features.norm0, m.features.relu0, m.features.pool0 = nn.Identity(), nn.Identity(), nn.Identity()
    return m


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=6, help="training steps per measurement")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--device", default="auto")
    args = p.parse_args()

    import torch

    from dsearch.training.config import DataConfig, RunConfig, TrainConfig
    from dsearch.training.data import load_data
    from dsearch.net.model import build_model
    from dsearch.net.presets import get_preset
    from dsearch.training.loop import fit, resolve_device

    torch.set_num_threads(args.threads)

    def run_config(steps: int) -> RunConfig:
        return RunConfig(model=get_preset("densenet_bc100_k12"),
                         data=DataConfig(name="synthetic", synthetic_image_size=32, synthetic_size=steps * args.batch,
                                         val_size=10),
                         train=TrainConfig(epochs=1, batch_size=args.batch, device=args.device,
                                           num_threads=args.threads))

    makers = {"dsearch build_model('densenet_bc100_k12')": lambda: build_model("densenet_bc100_k12"),
              "torchvision DenseNet(12, (16,16,16), 24, bn_size=4), 3×3 stem": torchvision_densenet_bc100_k12}
    params = {name: sum(p.numel() for p in make().parameters()) for name, make in makers.items()}
    warm, measured = run_config(3), run_config(args.steps)
    warm_data, data = load_data(warm.data), load_data(measured.data)
    models = {}
    for name, make in makers.items():
        torch.manual_seed(0)
        models[name] = make()
        fit(warm, warm_data, model=models[name])
    rates: dict[str, list[float]] = {name: [] for name in makers}
    for _ in range(args.rounds):
        for name in makers:
            rates[name].append(fit(measured, data, model=models[name]).images_per_s)
    device = str(resolve_device(measured.train))
    rows = [{"model": n, "params": params[n], "images_per_s": statistics.median(r), "runs": r}
            for n, r in rates.items()]
    ratio = rows[0]["images_per_s"] / rows[1]["images_per_s"]
    print(f"device {device}, {args.threads} threads, batch {args.batch}, 32×32, {args.steps} steps × {args.rounds}")
    print(f"{'model':<62} {'params':>9} {'images/s':>9}")
    for r in rows:
        print(f"{r['model']:<62} {r['params']:>9,} {r['images_per_s']:>9.1f}")
    out = Path(__file__).with_suffix(".json")
    out.write_text(json.dumps({"device": device, "threads": args.threads, "batch": args.batch, "steps": args.steps,
                               "rows": rows, "ratio_dsearch_vs_torchvision": ratio,
                               "torch": torch.__version__}, indent=2) + "\n")
    print(f"dsearch / torchvision = {ratio:.2f}×  → {out}")


if __name__ == "__main__":
    main()
