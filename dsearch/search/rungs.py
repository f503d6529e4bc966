"""Asynchronous successive halving on one or more objectives: where the rungs are, and who goes on.

Pure (numpy, no Ray): runner.py wraps `Rungs` in a Ray Tune scheduler. A trial that reaches a rung
records its objective vector there (val_acc at that epoch, and the objectives known from the start,
params and MACs) and goes on if its rank among the rung's vectors, itself included, is within the top
⌈n / reduction_factor⌉ (ASHA's rule, Li et al. 2018). The rank is Pareto-aware: non-dominated sorting,
then, inside a front, NSGA-II's crowding distance (or an ε-net order). With val_acc alone it is ASHA.

The state is a function of the recorded vectors only (ties are broken by trial number, not by arrival),
so rebuilding the rungs from the study's curves after a kill gives the decisions of an uninterrupted run.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from ..metrics import VAL_ACC
from ..ranking import CROWDING, rank_order, to_minimization


def milestones(max_epochs: int, grace_period: int, reduction_factor: float,
               explicit: Sequence[int] | None = None) -> list[int]:
    """The rung epochs: grace·rf^k, with no rung where rung × rf > max_epochs (a trial stopped there would
    have used most of its budget); or the explicit list as given (validated by the space)."""
    if explicit is not None:
        return sorted(int(r) for r in explicit)
    out, rung = [], float(grace_period)
    while rung * reduction_factor <= max_epochs + 1e-9:
        out.append(int(round(rung)))
        rung *= reduction_factor
    return out


def reach_shares(rungs: Sequence[int], reduction_factor: float) -> list[float]:
    """Expected share of the trials that reach each rung, then the full budget: 1, 1/rf, 1/rf², …"""
    return [reduction_factor ** -k for k in range(len(rungs) + 1)]


def describe(rungs: Sequence[int], max_epochs: int, reduction_factor: float) -> str:
    """'rungs at epochs 10 (100%), 30 (33%), 90 (11%); full budget 300 (3.7%) of the trials'."""
    shares = reach_shares(rungs, reduction_factor)
    parts = [f"{r} ({_pct(s)})" for r, s in zip(rungs, shares)]
    head = f"rungs at epochs {', '.join(parts)}" if rungs else "no rungs (every trial trains to the full budget)"
    return f"{head}; full budget {max_epochs} ({_pct(shares[-1])}) of the trials that start"


def _pct(share: float) -> str:
    return f"{share:.0%}" if share >= 0.1 else f"{share:.1%}"


@dataclass
class Rungs:
    """Recorded vectors per rung, and the decision for each new one.

    `objectives` are (metric, direction) pairs; val_acc is read from the trial's curve at the rung's
    epoch, every other metric from the trial's fixed values (params, MACs).
    """

    rungs: list[int]
    reduction_factor: float
    objectives: list[tuple[str, str]]
    tie_break: str = CROWDING
    recorded: dict[int, dict[int, tuple[float, ...]]] = field(default_factory=dict)   # rung → trial → vector

    def __post_init__(self) -> None:
        for r in self.rungs:
            self.recorded.setdefault(r, {})

    def vector(self, curve: Sequence[float], epoch: int, fixed: dict[str, float]) -> tuple[float, ...]:
        return tuple(float(curve[epoch - 1]) if m == VAL_ACC else float(fixed[m]) for m, _ in self.objectives)

    def goes_on(self, rung: int, trial: int) -> bool:
        """Whether `trial`, already recorded at `rung`, is within the top ⌈n / rf⌉ of the rung."""
        ids = sorted(self.recorded[rung])
        values = [self.recorded[rung][i] for i in ids]
        if any(not math.isfinite(v) for v in self.recorded[rung][trial]):
            return False                       # a NaN accuracy never ranks (the trial diverged)
        finite = [i for i, v in zip(ids, values) if all(math.isfinite(x) for x in v)]
        points = to_minimization([self.recorded[rung][i] for i in finite], [d for _, d in self.objectives])
        order = [finite[k] for k in rank_order(points, self.tie_break)]
        keep = math.ceil(len(ids) / self.reduction_factor)
        return order.index(trial) < keep

    def on_report(self, trial: int, curve: Sequence[float], fixed: dict[str, float]) -> bool:
        """A trial reported epoch len(curve): record it at each rung it reached and has not been recorded at,
        lowest first; False (stop) as soon as one says so."""
        for rung in self.rungs:
            if rung > len(curve) or trial in self.recorded[rung]:
                continue
            self.recorded[rung][trial] = self.vector(curve, rung, fixed)
            if not self.goes_on(rung, trial):
                return False
        return True

    def rebuild(self, trials: Iterable[tuple[int, Sequence[float], dict[str, float]]]) -> None:
        """Record (trial, curve, fixed values) of trials that ran before, at every rung their curves reached."""
        for trial, curve, fixed in trials:
            for rung in self.rungs:
                if rung <= len(curve) and curve[rung - 1] is not None:
                    self.recorded[rung].setdefault(trial, self.vector(curve, rung, fixed))
