"""Asynchronous successive halving on one or more objectives: where the rungs are, and who goes on.

Pure (numpy, no Ray): runner.py wraps `Rungs` in a Ray Tune scheduler. A trial that reaches a rung
records its objective vector there (val_acc at that epoch, and the objectives known from the start,
params and MACs) and goes on if its rank among the rung's vectors, itself included, is within the top
⌈n / reduction_factor⌉ (ASHA's rule, Li et al. 2018). The rank is Pareto-aware: non-dominated sorting,
then, inside a front, NSGA-II's crowding distance (or an ε-net order). With val_acc alone it is ASHA.

The state is a function of the recorded vectors only (ties are broken by trial number, not by arrival),
so rebuilding the rungs from the study's curves after a kill gives the decisions of an uninterrupted run. The
study holds every vector a decision was made on: a report that goes on is saved as it comes, and a rung's stop
is told PRUNED with its curve even while the run is being interrupted (engine.py), never queued to be judged
again.

The decision is that of `ranking.rank_order` on the rung's finite vectors (trial number as the index), without
ranking them all: each rung keeps its points' fronts up to date as they arrive (`ranking.FrontLevels`), and an
arrival's rank is the number of points on the fronts before its own plus its place inside its front, which only
its front's members decide. About O(n) numpy work per arrival, not rank_order's n × n.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from itertools import islice
from numbers import Rational

import numpy as np

from ..metrics import VAL_ACC
from ..ranking import CROWDING, TIE_BREAKS, FrontLevels, crowding_distance, direction_signs, farthest_points


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


def after_first_drop(max_epochs: int, drops: Sequence[float]) -> list[int]:
    """One rung, one epoch after the first lr drop (drops as fractions of max_epochs): the first epoch trained
    wholly at the lower lr, where a step schedule's accuracy starts to rank trials as the full budget will (before
    it, it ranks on noise). None after later drops: a trial stopped there has used most of its budget, and its
    point is lost to the front (measured with `dsearch replay`, README). Under the paper's schedule (÷10 at 50 %
    and 75 %): epoch 7 of 12, 151 of 300."""
    if not drops:
        return []
    rung = math.ceil(min(drops) * max_epochs - 1e-9) + 1
    return [rung] if 1 <= rung < max_epochs else []


def chance_floor(num_classes: int, val_images: int) -> float:
    """The val_acc at or below which a trial is no better than guessing: chance (1 / classes) plus three
    binomial standard deviations over the validation images (0.128 for 10 classes on 1,000 images)."""
    c = 1.0 / num_classes
    return c + 3.0 * math.sqrt(c * (1.0 - c) / max(val_images, 1))


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
    floor: float | None = None         # val_acc at or below it is chance level (`chance_floor`); None: no floor
    recorded: dict[int, dict[int, tuple[float, ...]]] = field(default_factory=dict)   # rung → trial → vector
    _states: dict[int, _RungState] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for r in self.rungs:
            self.recorded.setdefault(r, {})

    def vector(self, curve: Sequence[float], epoch: int, fixed: dict[str, float]) -> tuple[float, ...]:
        return tuple(float(curve[epoch - 1]) if m == VAL_ACC else float(fixed[m]) for m, _ in self.objectives)

    def goes_on(self, rung: int, trial: int) -> bool:
        """Whether `trial`, already recorded at `rung`, is within the top ⌈n / rf⌉ of the rung.

        n counts every vector at the rung; the rank is `rank_order`'s among the finite ones (front, then the
        tie break inside it, then trial number). A vector with a NaN or inf never ranks and never goes on."""
        state = self._synced(rung)
        if any(not math.isfinite(v) for v in self.recorded[rung][trial]):
            return False                       # a NaN accuracy never ranks (the trial diverged)
        if self.tie_break not in TIE_BREAKS:
            raise ValueError(f"tie_break must be one of {TIE_BREAKS}, got {self.tie_break!r}")
        keep = _keep(len(self.recorded[rung]), self.reduction_factor)
        junk = state.junk(self.floor)
        if junk is not None and junk.sum() <= len(junk) - self.reduction_factor:   # ≥ rf trials above chance
            if junk[state.where[trial]]:
                return False                   # chance level never goes on past a rung with rf better trials
            return state.ranks_within(trial, self.tie_break, keep, ~junk)
        return state.ranks_within(trial, self.tie_break, keep)

    def _synced(self, rung: int) -> _RungState:
        """The rung's ranking state, brought in step with `recorded[rung]` (the source of truth): the trials
        recorded since the last call are added; anything else changed behind its back rebuilds it."""
        recorded = self.recorded[rung]
        state = self._states.get(rung)
        if state is None or not state.mirrors(recorded, self.objectives) or len(recorded) < len(state.seen):
            state = self._states[rung] = _RungState(recorded, self.objectives)
        if len(recorded) > len(state.seen):
            new = list(islice(reversed(recorded), len(recorded) - len(state.seen)))   # dicts keep insertion order
            if any(t in state.seen for t in new):
                state = self._states[rung] = _RungState(recorded, self.objectives)
                new = list(recorded)
            state.add(new)
        if recorded != state.seen:             # an overwrite or a deletion: O(n), identical tuples compare fast
            state = self._states[rung] = _RungState(recorded, self.objectives)
            state.add(list(recorded))
        return state

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


def _keep(n: int, reduction_factor: float) -> int:
    """⌈n / rf⌉, exact: rf as the decimal it is written as (69 / 2.3 is 30; floats give 30.000000000000004)."""
    if isinstance(reduction_factor, Rational):
        return math.ceil(Fraction(n) / Fraction(reduction_factor))
    return math.ceil(Fraction(n) / Fraction(str(float(reduction_factor))))


class _RungState:
    """What one rung's decisions need from its recorded vectors, kept in step with them: the finite ones in
    minimisation form with their fronts (one objective: just the values, a front per distinct value), and
    which trial each point is."""

    def __init__(self, source: dict[int, tuple[float, ...]], objectives: list[tuple[str, str]]) -> None:
        self.source, self.objectives = source, list(objectives)
        self.signs = direction_signs([d for _, d in objectives])
        self.seen: dict[int, tuple[float, ...]] = {}     # trial → vector as recorded (finite or not)
        self.where: dict[int, int] = {}                   # trial → its point, for the finite ones
        self.ids: list[int] = []                          # point → trial
        self.single = len(objectives) == 1
        self.fronts = None if self.single else FrontLevels(len(objectives))
        self.values = np.empty(64)                        # one objective: the points' values

    def mirrors(self, source: dict, objectives: list[tuple[str, str]]) -> bool:
        return source is self.source and objectives == self.objectives

    def add(self, trials: list[int]) -> None:
        """Record these trials' vectors (finite ones as points, dominators before the points they dominate)."""
        rows = []
        for t in trials:
            vector = self.seen[t] = self.source[t]
            if all(math.isfinite(v) for v in vector):
                rows.append((t, np.asarray(vector, dtype=float) * self.signs))   # as ranking.to_minimization
        if len(rows) > 1:       # in lexicographic order no point dominates one before it: no front is raised
            keys = np.array([r for _, r in rows])
            rows = [rows[k] for k in np.lexsort(keys.T[::-1])]
        for t, row in rows:
            self.where[t] = len(self.ids)
            self.ids.append(t)
            if self.single:
                if len(self.ids) > len(self.values):
                    self.values = np.concatenate([self.values, np.empty_like(self.values)])
                self.values[len(self.ids) - 1] = row[0]
            else:
                self.fronts.add(row)

    def junk(self, floor: float | None) -> np.ndarray | None:
        """(points,) bool: the points at or below the chance floor on val_acc (None without a floor or val_acc)."""
        metrics = [m for m, _ in self.objectives]
        if floor is None or VAL_ACC not in metrics:
            return None
        j = metrics.index(VAL_ACC)
        column = self.values[:len(self.ids)] if self.single else self.fronts.points[:len(self.ids), j]
        return column * self.signs[j] <= floor        # back from minimisation form

    def ranks_within(self, trial: int, tie_break: str, keep: int, among: np.ndarray | None = None) -> bool:
        """Whether the (finite) trial's position in `rank_order` of the points (of those in `among`, when given)
        is < keep. Points left out of `among` must not dominate any point in it (chance-level ones can't
        dominate a better one), so the fronts of the points in it are theirs alone."""
        k = self.where[trial]
        # One objective: the "fronts" are the distinct values (minimisation form), ties all in one.
        levels = self.values[:len(self.ids)] if self.single else self.fronts.levels
        level = levels[k]
        inside = np.ones(len(levels), dtype=bool) if among is None else among
        before = int(np.count_nonzero((levels < level) & inside))
        if before >= keep:
            return False
        members = np.flatnonzero((levels == level) & inside)
        if before + len(members) <= keep:
            return True
        if self.single:        # equal values: by trial number
            return before + sum(1 for j in members.tolist() if self.ids[j] < trial) < keep
        members = sorted(members.tolist(), key=self.ids.__getitem__)    # rank_order's index: trial number
        points, at = self.fronts.points[members], members.index(k)
        if tie_break == CROWDING:
            within = -crowding_distance(points)
            position = int(np.count_nonzero(within < within[at]) + np.count_nonzero(within[:at] == within[at]))
            return before + position < keep
        for position, picked in enumerate(farthest_points(points)):   # stops at its place, or at keep
            if before + position >= keep:
                return False
            if picked == at:
                return True
        raise AssertionError("every point of the front has a place in its order")
