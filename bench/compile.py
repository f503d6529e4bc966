"""Does torch.compile pay for itself within a quickstart-sized trial on this CPU? (issue 13)

The quickstart's seed network (DenseNet-BC L=16 k=8 θ=0.5), 28×28×1 synthetic batches of 64, one thread (as a
quickstart trial), in the layout and precision `auto` picks here, with and without train.compile. Each fit runs 2
epochs of --steps steps plus validation on --val images; the first compiled epoch includes inductor's compile time
(the training graph, then the eval graph at the first validation). Break-even: the compile overhead ÷ the time
saved per image; a quickstart trial trains 40,000 images (10,000 × 4 epochs).
Inductor caches compiled kernels on disk (/tmp/torchinductor_$USER); the script compiles into a fresh cache folder,
as a machine's first trial does, unless --warm-cache (then later trials on the same machine, which hit the cache).
Usage: python bench/compile.py [--steps 40] [--val 500] [--warm-cache]      Writes bench/compile.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

TRIAL_IMAGES = 10_000 * 4


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--val", type=int, default=500)
    p.add_argument("--warm-cache", action="store_true", help="use inductor's usual on-disk cache")
    args = p.parse_args()
    import os
    import tempfile

    if not args.warm_cache:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="inductor-cold-")

    import torch

    from dsearch.net.config import ModelConfig
    from dsearch.training.config import DataConfig, RunConfig, TrainConfig
    from dsearch.training.data import load_data
    from dsearch.training.loop import fit

    torch.set_num_threads(1)
    rows = {}
    for compiled in (False, True):
        run = RunConfig(model=ModelConfig(variant="densenet-bc", depth=16, growth_rate=8, compression=0.5,
                                          in_channels=1),
                        data=DataConfig(name="synthetic", synthetic_image_size=28, synthetic_channels=1,
                                        synthetic_size=64 * args.steps, val_size=args.val),
                        train=TrainConfig(epochs=2, batch_size=64, device="cpu", num_threads=1, compile=compiled))
        t0 = time.perf_counter()
        result = fit(run, load_data(run.data))
        rows[compiled] = {"wall_s": time.perf_counter() - t0, "precision": result.precision["precision"],
                          "epoch_s": [h["epoch_time"] for h in result.history],
                          "images_per_s": [h["images_per_s"] for h in result.history]}
    eager, comp = rows[False], rows[True]
    overhead = comp["epoch_s"][0] - comp["epoch_s"][1]            # compiling, beyond a steady epoch
    per_image = 1 / eager["images_per_s"][1] - 1 / comp["images_per_s"][1]
    break_even = overhead / per_image if per_image > 0 else float("inf")
    print(f"{'':<10} {'precision':<22} {'epoch 1 s':>9} {'epoch 2 s':>9} {'img/s (2)':>9}")
    for name, r in (("eager", eager), ("compiled", comp)):
        print(f"{name:<10} {r['precision']:<22} {r['epoch_s'][0]:>9.1f} {r['epoch_s'][1]:>9.1f} "
              f"{r['images_per_s'][1]:>9.0f}")
    print(f"compile overhead {overhead:.0f} s ({'warm' if args.warm_cache else 'cold'} inductor cache); steady speed-up {eager['images_per_s'][1] and comp['images_per_s'][1] / eager['images_per_s'][1]:.3f}×; "
          f"break-even after {break_even:,.0f} images (a quickstart trial trains {TRIAL_IMAGES:,})")
    out = Path(__file__).with_suffix(".json")
    out.write_text(json.dumps({"torch": torch.__version__, "eager": eager, "compiled": comp,
                               "compile_overhead_s": overhead, "cache": "warm" if args.warm_cache else "cold", "break_even_images": break_even,
                               "trial_images": TRIAL_IMAGES}, indent=2) + "\n")
    print(f"→ {out}")


if __name__ == "__main__":
    main()
