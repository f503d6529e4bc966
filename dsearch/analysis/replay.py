"""What replayed searches say: the hypervolume of each method's front against simulated time, as a share of
the table's own optimum, over many seeds, with paired tests against the default method.

Data first (numpy, scipy; `summarize` returns a JSON-able dict), rendering second (`build_figure`).
The optimum is the front of every tabulated run at the full budget (100%). Hypervolumes are normalised
as in `dsearch pareto` (params and MACs on a log scale, each objective min-max over the table's full-
budget runs, reference at the worst corner), so a share compares across methods and seeds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..metrics import Objective
from ..ranking import dominance, to_minimization
from .pareto import normalization_bounds, normalized_hypervolume

LEVELS = (0.9, 0.95)                      # time to these shares of the optimum
BUDGETS = (0.10, 0.25, 0.50, 1.00)        # shares of the time full-budget random search needs for num_samples
FINAL = "final"


MARGIN = 0.1      # the reference corner lies this share of each range beyond the table's worst value


class Scale:
    """The table's normalisation (each objective over its full-budget runs, the reference corner 10 % of the
    range beyond the worst, so that the front's extremes add volume too) and its optimum's hypervolume."""

    def __init__(self, optimum_rows: np.ndarray, objectives: Sequence[Objective]) -> None:
        self.objectives = list(objectives)
        lo, hi = normalization_bounds(optimum_rows, self.objectives)
        self.bounds = np.stack([lo, hi + MARGIN * np.where(hi > lo, hi - lo, 1.0)])
        self.optimum = self.volume(optimum_rows)

    def volume(self, rows: Any) -> float:
        """Normalised hypervolume of these raw objective rows (non-finite rows dropped)."""
        rows = np.asarray(rows, dtype=float).reshape(-1, len(self.objectives))
        rows = rows[np.all(np.isfinite(rows), axis=1)]
        return normalized_hypervolume(rows, self.objectives, self.bounds) if len(rows) else 0.0


def front_rows(trials: Sequence[Any], front: str) -> list[Any]:
    """The trials a method's user reads the front from: full-budget (COMPLETE) ones, or with `front` "last"
    every trained trial's last report (partial-budget points included)."""
    states = ("COMPLETE",) if front == "full" else ("COMPLETE", "PRUNED")
    return [t for t in trials if t.state in states and t.values is not None and t.end is not None]


def share_history(trials: Sequence[Any], front: str, scale: Scale) -> tuple[np.ndarray, np.ndarray]:
    """(times, shares): the share of the optimum reached at each trial end (a step function, non-decreasing)."""
    rows = sorted(front_rows(trials, front), key=lambda t: (t.end, t.number))
    times, shares = [0.0], [0.0]
    kept: list[tuple[float, ...]] = []
    share = 0.0
    for t in rows:
        if all(math.isfinite(v) for v in t.values):
            point = to_minimization([t.values], scale.objectives)[0]
            mine = to_minimization(kept, scale.objectives) if kept else np.empty((0, len(point)))
            if not np.any(np.all(mine <= point, axis=1)):          # a weakly dominated point adds nothing
                kept = [k for k, m in zip(kept, mine) if not np.all(point <= m)] + [t.values]
                share = scale.volume(kept) / scale.optimum
        times.append(t.end)
        shares.append(share)
    return np.asarray(times), np.asarray(shares)


def share_at(history: tuple[np.ndarray, np.ndarray], t: float) -> float:
    times, shares = history
    return float(shares[np.searchsorted(times, t, side="right") - 1])


def time_to(history: tuple[np.ndarray, np.ndarray], level: float) -> float | None:
    times, shares = history
    hit = np.flatnonzero(shares >= level - 1e-12)
    return float(times[hit[0]]) if hit.size else None


def final_front(trials: Sequence[Any], front: str, objectives: Sequence[Objective]) -> list[Any]:
    rows = front_rows(trials, front)
    if not rows:
        return []
    points = to_minimization([t.values for t in rows], objectives)
    return [t for t, dominated in zip(rows, dominance(points).any(axis=0)) if not dominated]


def wilcoxon(x: Sequence[float | None], y: Sequence[float | None], missing: float) -> float | None:
    """Two-sided paired Wilcoxon signed-rank p-value of x against y (seed by seed); `missing` stands in for a
    None (a level never reached). 1.0 when every pair is equal; None with fewer than 2 pairs."""
    from scipy.stats import wilcoxon as test

    a = np.array([missing if v is None else v for v in x], dtype=float)
    b = np.array([missing if v is None else v for v in y], dtype=float)
    if len(a) < 2 or len(a) != len(b):
        return None
    if np.all(a == b):
        return 1.0
    return float(test(a, b, zero_method="zsplit").pvalue)


def _median(values: Sequence[float | None]) -> float | None:
    """Median over seeds; a None (never reached) counts as +inf, so the median is None if half never reach."""
    v = sorted(math.inf if x is None else x for x in values)
    if not v:
        return None
    m = float(np.median(v))
    return None if math.isinf(m) else m


def _pct(b: float) -> str:
    return f"{b:.0%}"


def share_histories(runs: dict[str, list[Any]], fronts: dict[str, str],
                    scale: Scale) -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
    """`share_history` of every replayed search, per method in seed order (computed once, read by `summarize`
    and `bands`)."""
    return {name: [share_history(r.trials, fronts[name], scale) for r in seeds] for name, seeds in runs.items()}


def summarize(runs: dict[str, list[Any]], histories: dict[str, list[Any]], fronts: dict[str, str], scale: Scale,
              default: str, time_base: float, median_acc: float, max_epochs: int) -> dict[str, Any]:
    """Per method: per-seed lists (final share, share at each budget, time to 90/95 %, epochs, partial-budget
    points on the front, epochs spent on junk, rejected share, driver ms per trial), their medians, and paired
    Wilcoxon p-values against `default` (same seeds) at each budget and at the end."""
    budgets = {_pct(b): b * time_base for b in BUDGETS}
    methods: dict[str, Any] = {}
    for name, seeds in runs.items():
        m: dict[str, Any] = {"final_hypervolume": [], "hypervolume_at": {k: [] for k in budgets},
                             "time_to_90": [], "time_to_95": [], "epochs": [], "partial_on_front": [],
                             "junk_epochs": [], "rejected_share": [], "end_s": [], "driver_ms_per_trial": []}
        for r, h in zip(seeds, histories[name]):
            m["final_hypervolume"].append(float(h[1][-1]))
            for k, t in budgets.items():
                m["hypervolume_at"][k].append(share_at(h, t))
            m["time_to_90"].append(time_to(h, 0.90))
            m["time_to_95"].append(time_to(h, 0.95))
            trained = [t for t in r.trials if t.state in ("COMPLETE", "PRUNED")]
            m["epochs"].append(sum(t.epochs for t in trained))
            m["partial_on_front"].append(sum(t.epochs < max_epochs for t in final_front(r.trials, fronts[name],
                                                                                       scale.objectives)))
            m["junk_epochs"].append(sum(t.epochs for t in trained
                                        if t.final_acc is not None and t.final_acc < median_acc))
            rejected = sum(t.reason == "not_in_table" for t in r.trials)
            m["rejected_share"].append(rejected / max(len(r.trials), 1))
            m["end_s"].append(r.end)
            m["driver_ms_per_trial"].append(1000 * r.driver_s / max(len(r.trials), 1))
        m["median"] = {"final_hypervolume": _median(m["final_hypervolume"]),
                       **{f"hypervolume_at_{k}": _median(v) for k, v in m["hypervolume_at"].items()},
                       "time_to_90": _median(m["time_to_90"]), "time_to_95": _median(m["time_to_95"]),
                       "epochs": _median(m["epochs"]), "partial_on_front": _median(m["partial_on_front"]),
                       "junk_epochs": _median(m["junk_epochs"]), "rejected_share": _median(m["rejected_share"]),
                       "driver_ms_per_trial": _median(m["driver_ms_per_trial"])}
        methods[name] = m
    horizon = max(max(r.end for r in seeds) for seeds in runs.values()) if runs else 0.0
    if default in methods:
        d = methods[default]
        for name, m in methods.items():
            p = {k: wilcoxon(m["hypervolume_at"][k], d["hypervolume_at"][k], 0.0) for k in budgets}
            p[FINAL] = wilcoxon(m["final_hypervolume"], d["final_hypervolume"], 0.0)
            p["time_to_95"] = wilcoxon(m["time_to_95"], d["time_to_95"], 2 * horizon)
            p["junk_epochs"] = wilcoxon(m["junk_epochs"], d["junk_epochs"], 0.0)
            m["p_value_vs_default"] = p
    return {"optimum_hypervolume": scale.optimum, "default": default, "budgets_s": budgets,
            "time_base_s": time_base, "median_final_acc": median_acc, "methods": methods,
            "driver_ms_per_trial": {n: m["median"]["driver_ms_per_trial"] for n, m in methods.items()}}


def bands(runs: dict[str, list[Any]], histories: dict[str, list[Any]],
          points: int = 200) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """A time grid and, per method, the (3, len(grid)) 25th / 50th / 75th percentiles of the share over seeds."""
    horizon = max((r.end for seeds in runs.values() for r in seeds), default=1.0) or 1.0
    grid = np.linspace(0.0, horizon, points)
    out = {}
    for name, seeds in histories.items():
        curves = [[share_at(h, t) for t in grid] for h in seeds]
        out[name] = np.percentile(np.asarray(curves), [25, 50, 75], axis=0)
    return grid, out


FIGURE_ID = "replay-hypervolume"


def write_html(fig: Any, path: Any) -> None:
    """The figure as a self-contained page (plotly.js embedded: it opens offline), its div `FIGURE_ID`."""
    fig.write_html(str(path), include_plotlyjs=True, full_html=True, div_id=FIGURE_ID, default_height="640px")


def build_figure(grid: np.ndarray, curves: dict[str, np.ndarray], default: str, title: str) -> Any:
    """Hypervolume share against simulated time: one median line and one interquartile band per method."""
    import plotly.graph_objects as go
    from plotly.colors import qualitative

    fig = go.Figure()
    hours = grid / 3600 if grid[-1] > 7200 else grid
    unit = "hours" if grid[-1] > 7200 else "seconds"
    for i, (name, q) in enumerate(curves.items()):
        color = qualitative.Plotly[i % len(qualitative.Plotly)]
        fig.add_trace(go.Scatter(x=np.concatenate([hours, hours[::-1]]), y=100 * np.concatenate([q[2], q[0][::-1]]),
                                 fill="toself", fillcolor=color, opacity=0.15, line={"width": 0},
                                 hoverinfo="skip", showlegend=False, legendgroup=name))
        fig.add_trace(go.Scatter(x=hours, y=100 * q[1], mode="lines", name=name + (" (default)" if name == default
                                                                                  else ""),
                                 line={"color": color, "width": 3 if name == default else 1.5},
                                 legendgroup=name))
    fig.update_layout(title=title, template="plotly_white", xaxis_title=f"simulated time ({unit})",
                      yaxis_title="hypervolume, % of the table's optimum", yaxis_range=[0, 102],
                      hovermode="x unified")
    return fig
