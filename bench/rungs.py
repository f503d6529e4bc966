"""Milliseconds per rung decision at one rung holding n recorded trials: the old rule (rank_order on the whole rung,
an n × n dominance matrix per arrival) against the incremental one (search/rungs.py: fronts kept up to date).

The vectors look like a search's: params log-uniform over 10^4..10^7, MACs = params × U(50, 400), val_acc rising with
log params plus noise (a real trade-off), on a 1e-4 grid (ties). A rung is filled with n trials by `rebuild`
(no decisions), one arrival brings the incremental state in step (timed apart: "first"), then `arrivals` new
trials report one after another and each decision is timed. The old rule runs up to 4,000 only.
Usage: python bench/rungs.py [--sizes 500 1000 2000 4000 10000] [--arrivals 200] [--old-max 4000]
Writes bench/results/rungs.json.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path

import numpy as np

from dsearch.metrics import MACS, MAXIMIZE, MINIMIZE, PARAMS, VAL_ACC
from dsearch.ranking import rank_order, to_minimization
from dsearch.search.rungs import Rungs

OBJECTIVES = {
    1: [(VAL_ACC, MAXIMIZE)],
    2: [(VAL_ACC, MAXIMIZE), (PARAMS, MINIMIZE)],
    3: [(VAL_ACC, MAXIMIZE), (PARAMS, MINIMIZE), (MACS, MINIMIZE)],
}
RF = 3


class OldRungs(Rungs):
    """goes_on as it was before the incremental state: rank_order on every finite vector of the rung."""

    def goes_on(self, rung: int, trial: int) -> bool:
        ids = sorted(self.recorded[rung])
        if any(not math.isfinite(v) for v in self.recorded[rung][trial]):
            return False
        finite = [i for i in ids if all(math.isfinite(x) for x in self.recorded[rung][i])]
        points = to_minimization([self.recorded[rung][i] for i in finite], [d for _, d in self.objectives])
        order = [finite[k] for k in rank_order(points, self.tie_break)]
        return order.index(trial) < math.ceil(len(ids) / self.reduction_factor)


def reports(rng: np.random.Generator, count: int) -> list[tuple[list[float], dict[str, float]]]:
    """(curve of one epoch, fixed values) per trial."""
    log_params = rng.uniform(4, 7, count)
    params = np.round(10 ** log_params)
    macs = np.round(params * rng.uniform(50, 400, count))
    acc = np.clip(np.round(0.55 + 0.1 * (log_params - 4) + rng.normal(0, 0.04, count), 4), 0, 1)
    return [([float(a)], {PARAMS: float(p), MACS: float(m)}) for a, p, m in zip(acc, params, macs)]


def measure(cls, objectives: int, tie_break: str, n: int, arrivals: int, drawn: int, seed: int = 0) -> dict:
    """Time `arrivals` decisions after n recorded trials; `drawn` ≥ arrivals reports are drawn after the n + 1
    (the same stream for every rule)."""
    rng = np.random.default_rng(seed)
    data = reports(rng, n + 1 + drawn)
    rungs = cls([1], RF, OBJECTIVES[objectives], tie_break)
    rungs.rebuild((t, curve, fixed) for t, (curve, fixed) in enumerate(data[:n]))
    t0 = time.perf_counter()
    rungs.on_report(n, *data[n])                       # the first arrival brings the state in step
    first = time.perf_counter() - t0
    times, decisions = [], []
    for t in range(n + 1, n + 1 + arrivals):
        t0 = time.perf_counter()
        decisions.append(rungs.on_report(t, *data[t]))
        times.append(time.perf_counter() - t0)
    ms = np.asarray(times) * 1e3
    levels = getattr(rungs._states.get(1), "fronts", None)
    return {"rule": "old" if cls is OldRungs else "new", "objectives": objectives, "tie_break": tie_break, "n": n,
            "arrivals": arrivals, "median_ms": float(np.median(ms)), "p90_ms": float(np.percentile(ms, 90)),
            "first_ms": first * 1e3, "kept": sum(decisions), "decisions": decisions,
            "fronts": int(levels.levels.max()) + 1 if levels is not None and len(levels) else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[500, 1000, 2000, 4000, 10000])
    ap.add_argument("--arrivals", type=int, default=200)
    ap.add_argument("--old-max", type=int, default=4000)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "rungs.json")
    args = ap.parse_args()
    cases = [(3, "crowding"), (3, "epsilon"), (2, "crowding"), (1, "crowding")]
    rows = []
    print(f"{'rule':4} {'obj':>3} {'tie break':9} {'n':>6} {'median ms':>10} {'p90 ms':>8} {'first ms':>9} "
          f"{'kept':>5} {'fronts':>6}")
    for objectives, tie_break in cases:
        for n in args.sizes:
            runs = [OldRungs] if objectives == 3 and n <= args.old_max else []
            for cls in (*runs, Rungs):
                arrivals = args.arrivals if cls is Rungs else max(10, min(args.arrivals, 40_000 // n))
                row = measure(cls, objectives, tie_break, n, arrivals, args.arrivals)
                rows.append(row)
                if cls is Rungs and runs:                    # the same stream: the same decisions
                    old = rows[-2]["decisions"]
                    row["same_as_old"] = old == row["decisions"][:len(old)]
                    assert row["same_as_old"], (objectives, tie_break, n)
                print(f"{row['rule']:4} {objectives:>3} {tie_break:9} {n:>6} {row['median_ms']:>10.3f} "
                      f"{row['p90_ms']:>8.3f} {row['first_ms']:>9.1f} {row['kept']:>5} {row['fronts'] or '':>6}",
                      flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for row in rows:
        del row["decisions"]
    args.out.write_text(json.dumps({"reduction_factor": RF, "machine": platform.platform(),
                                    "python": platform.python_version(), "rows": rows}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
