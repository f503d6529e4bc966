"""The search driver's own time per trial (ask, pricing, rung decision, tell, the study's writes) on a synthetic
learning-curve table of up to 10,000 trials with 64 simulated workers, the study in SQLite: nothing trains.

The table is a parametric family of curves over a finite space of 22,464 configurations (depth, growth rate,
compression, lr): final val_acc rises with log params and falls away from lr 0.1, plus noise; the curve climbs to
it over the epochs; an epoch takes time proportional to MACs. The search is random sampling (Optuna's TPE costs
grow with the study and are the sampler's, not the driver's) under dsearch's moasha rungs on val_acc, params and
MACs (9 epochs, grace 1, rf 3: rungs 1 and 3).

`new`: today's engine (incremental fronts, counts kept by the engine). `old`: the engine with the rules it
replaced, swapped in for the `--window` trials before each mark: the whole rung ranked per arrival (an n × n dominance
matrix, bench/rungs.py's OldRungs) and the study's trials read back at every ask (record.counted_trials).
Usage: python bench/driver.py [--trials 10000] [--marks 1000 5000 10000] [--workers 64]
Writes bench/results/driver.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from rungs import OldRungs  # noqa: E402

from dsearch.net.cost import count_macs, count_params  # noqa: E402
from dsearch.search import record as st  # noqa: E402
from dsearch.search.io import parse_space  # noqa: E402
from dsearch.search.methods import METHODS  # noqa: E402
from dsearch.search.replay import replay  # noqa: E402
from dsearch.search.rungs import Rungs  # noqa: E402
from dsearch.search.storage import open_storage  # noqa: E402
from dsearch.search.sampling import grid_params, input_size, resolve  # noqa: E402
from dsearch.search.table import Run, Table, config_key  # noqa: E402

SPACE = """
name: driver
data: {name: cifar10}
budget: {max_epochs: 9, num_samples: NUM, grace_period: 1, reduction_factor: 3, max_concurrent_trials: 64}
sampler: {type: random, seed: 0}
fixed: {model.variant: densenet-bc}
params:
  model.depth: {type: int, low: 10, high: 40, step: 6}
  model.growth_rate: {type: int, low: 4, high: 55}
  model.compression: {type: float, low: 0.3, high: 0.8, step: 0.1}
  train.lr: {type: categorical, choices: [0.0125, 0.025, 0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 12.8, 25.6]}
"""


def synthetic_table(space, seed: int = 0) -> Table:
    rng = np.random.default_rng(seed)
    table = Table(space.model_copy(update={"sampler": space.sampler.model_copy(update={"type": "grid"})}))
    epochs = np.arange(1, space.budget.max_epochs + 1)
    for i, p in enumerate(grid_params(table.space)):
        run = resolve(space, p)
        params, macs = count_params(run.model), count_macs(run.model, input_size(run.data))
        final = np.clip(0.55 + 0.06 * np.log10(params) - 0.05 * abs(np.log2(p["train.lr"] / 0.1))
                        + rng.normal(0, 0.02), 0.1, 0.99)
        curve = final * (1 - 0.6 * np.exp(-epochs / 2.5)) + rng.normal(0, 0.01, len(epochs))
        times = np.full(len(epochs), macs / 2e7) * rng.uniform(0.9, 1.1)
        table.runs[config_key(p)] = [Run(i, tuple(map(float, curve)), tuple(map(float, times)), params, macs)]
    return table


class OldCounts:
    """Swapped in (as the engine's class) for a window: counts read back from the study at every ask."""

    def ask(self):
        self.counted = st.counted_trials(self.study)
        return type(self).__mro__[2].ask(self)


def run(mode: str, table: Table, space, workers: int, marks: list[int], window: int) -> dict:
    from dsearch.search.engine import Engine

    legacy_engine = type("LegacyEngine", (OldCounts, Engine), {})
    times: list[tuple[int, float]] = []
    windows = [(m - window, m) for m in marks]

    def on_ask(engine, seconds):
        n = engine.counted
        times.append((n, seconds))
        if mode != "old":
            return
        inside = any(a <= n < b for a, b in windows)
        engine.__class__ = legacy_engine if inside else Engine
        engine.rule.__class__ = OldRungs if inside else Rungs

    with tempfile.TemporaryDirectory() as tmp:
        storage = open_storage(f"sqlite:///{tmp}/driver.db", writer=True)
        t0 = time.perf_counter()
        result = replay(table, space, METHODS["space"], 0, workers, storage=storage, on_ask=on_ask)
        wall = time.perf_counter() - t0
    n_of = np.array([n for n, _ in times])
    s_of = np.array([s for _, s in times])
    out = {"mode": mode, "trials": len(result.trials), "wall_s": wall, "per_trial_ms": {}}
    for a, b in windows:
        i, j = np.searchsorted(n_of, a), np.searchsorted(n_of, b) - 1
        if j > i:
            out["per_trial_ms"][str(b)] = 1000 * (s_of[j] - s_of[i]) / (n_of[j] - n_of[i])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=10_000)
    ap.add_argument("--marks", type=int, nargs="+", default=[1000, 5000, 10_000])
    ap.add_argument("--workers", type=int, default=64)
    ap.add_argument("--modes", nargs="+", default=["new", "old"])
    ap.add_argument("--window", type=int, default=200, help="trials before each mark that are timed")
    args = ap.parse_args()
    space = parse_space(SPACE.replace("NUM", str(args.trials)), "driver.yaml")
    table = synthetic_table(space)
    print(f"synthetic table: {table.describe()}; {args.trials} trials, {args.workers} workers, SQLite")
    results = [run(mode, table, space, args.workers, args.marks, args.window) for mode in args.modes]
    print(f"{'mode':6s} " + " ".join(f"{'ms/trial at ' + str(m):>18s}" for m in args.marks) + f" {'wall s':>8s}")
    for r in results:
        print(f"{r['mode']:6s} " + " ".join(f"{r['per_trial_ms'].get(str(m), float('nan')):18.1f}"
                                           for m in args.marks) + f" {r['wall_s']:8.0f}")
    out = Path(__file__).resolve().parent / "results" / "driver.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"machine": platform.processor() or platform.machine(), "workers": args.workers,
                               "window": args.window, "results": results}, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
