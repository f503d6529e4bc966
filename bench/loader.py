"""Images/s of dsearch's on-device loader vs torchvision DataLoader + PIL transforms, same CIFAR-format data.

Both do the paper's augmentation (4-px zero padding, random 32×32 crop, horizontal flip) and normalise.
The data is generated in CIFAR-10's python-pickle format (10 batches files' worth of random images).
Usage: python bench/loader.py [--images 20000] [--threads 2] [--epochs 2]
Writes bench/loader.json.
"""

from __future__ import annotations

import argparse
import json
import pickle
import tempfile
import time
from pathlib import Path

import numpy as np


def write_cifar(root: Path, n: int) -> Path:
    """n random training images as data_batch_1..5 plus a small test_batch, in cifar-10-batches-py."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(1, 7):
        m = n // 5 if i < 6 else 1000
        d = {"data": rng.integers(0, 256, (m, 3072), dtype=np.uint8), "labels": (np.arange(m) % 10).tolist()}
        with open(folder / (f"data_batch_{i}" if i < 6 else "test_batch"), "wb") as f:
            pickle.dump(d, f, protocol=2)
    return root


def _cifar10_class():
    from torchvision.datasets import CIFAR10

    class Unchecked(CIFAR10):
        """torchvision's CIFAR10 reader without the md5 check (the files are generated here)."""

        def _check_integrity(self) -> bool:
            return True

        def _load_meta(self) -> None:
            self.classes = [str(i) for i in range(10)]
            self.class_to_idx = {c: i for i, c in enumerate(self.classes)}

    return Unchecked


def time_epochs(batches, epochs: int) -> float:
    """Images/s over `epochs` passes of batches(epoch); the first pass is a warm-up and not counted."""
    for _ in batches(-1):
        pass
    n, t0 = 0, time.perf_counter()
    for e in range(epochs):
        for x, _ in batches(e):
            n += len(x)
    return n / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=20000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch", type=int, default=64)
    args = p.parse_args()

    import torch
    import torchvision.transforms as T
    from torch.utils.data import DataLoader

    from dsearch.training.config import DataConfig
    from dsearch.training.data import load_data

    torch.set_num_threads(args.threads)
    _Cifar10 = _cifar10_class()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = write_cifar(Path(tmp), args.images)
        data = load_data(DataConfig(name="cifar10", root=root, val_size=1000))
        ours = time_epochs(lambda e: data.train_batches(args.batch, epoch=e), args.epochs)
        rows.append({"loader": "dsearch (uint8 tensor, batched crop/flip by indexing)", "workers": 0,
                     "images_per_s": ours})
        tf = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
                        T.Normalize(data.mean, data.std)])
        ds = _Cifar10(str(root), train=True, transform=tf)
        for workers in (0, args.threads):
            loader = DataLoader(ds, batch_size=args.batch, shuffle=True, num_workers=workers,
                                persistent_workers=workers > 0)
            rate = time_epochs(lambda e: loader, args.epochs)
            rows.append({"loader": "torchvision DataLoader + PIL transforms", "workers": workers,
                         "images_per_s": rate})
    best_tv = max(r["images_per_s"] for r in rows[1:])
    print(f"{'loader':<56} {'workers':>7} {'images/s':>10} {'ratio':>7}")
    for r in rows:
        r["ratio_vs_best_torchvision"] = r["images_per_s"] / best_tv
        print(f"{r['loader']:<56} {r['workers']:>7} {r['images_per_s']:>10.0f} {r['ratio_vs_best_torchvision']:>6.1f}×")
    result = {"threads": args.threads, "batch": args.batch, "images": args.images, "rows": rows,
              "ratio": ours / best_tv, "torch": torch.__version__}
    out = Path(__file__).with_suffix(".json")
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"dsearch / best torchvision = {ours / best_tv:.1f}×  → {out}")


if __name__ == "__main__":
    main()
