"""Ranking points on several objectives: dominance, non-dominated sorting, and the order within a front.

Pure numpy, shared by the scheduler (search/rungs.py) and the front reports (analysis/pareto.py). Every
function takes raw objective values (one row per point, one column per objective, in the metric's own
units) and the objectives' directions; each maximised column is negated, so that smaller is better
everywhere ("minimisation form"). No sign tricks are left to the caller.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from .metrics import MAXIMIZE, MINIMIZE

CROWDING, EPSILON = "crowding", "epsilon"     # how ties inside a front are broken
TIE_BREAKS = (CROWDING, EPSILON)


def direction_signs(directions: Sequence[Any]) -> np.ndarray:
    """+1 for each minimised objective, -1 for each maximised one.

    An item may be "maximize"/"minimize" (any case), an `Objective` (anything with a `.direction`),
    or anything with a `.name` of MAXIMIZE/MINIMIZE (Optuna's `StudyDirection`, without importing Optuna).
    """
    signs = []
    for item in directions:
        direction = getattr(item, "direction", item)
        word = str(getattr(direction, "name", direction)).lower()
        if word not in (MAXIMIZE, MINIMIZE):
            raise ValueError(f"direction must be {MAXIMIZE!r} or {MINIMIZE!r}, got {direction!r}")
        signs.append(-1.0 if word == MAXIMIZE else 1.0)
    return np.asarray(signs, dtype=float)


def to_minimization(values: Any, directions: Sequence[Any]) -> np.ndarray:
    """Values as a float (n, m) array with maximised columns negated; same units otherwise."""
    signs = direction_signs(directions)
    points = np.asarray(values, dtype=float)
    if points.ndim == 1 and points.size == 0:
        points = points.reshape(0, len(signs))
    if points.ndim != 2 or points.shape[1] != len(signs):
        raise ValueError(f"values must have shape (n, {len(signs)}), got {points.shape}")
    if not np.all(np.isfinite(points)):
        raise ValueError("values must be finite; drop failed or NaN trials first")
    return points * signs


def dominance(points: np.ndarray) -> np.ndarray:
    """(n, n) bool: [i, j] is True when point i dominates point j (minimisation form).

    Dominates = no worse in every objective and better in at least one, so equal points
    do not dominate each other. Memory O(n²).
    """
    n = len(points)
    no_worse = np.ones((n, n), dtype=bool)
    better = np.zeros((n, n), dtype=bool)
    for column in points.T:
        no_worse &= column[:, None] <= column[None, :]
        better |= column[:, None] < column[None, :]
    return no_worse & better


def front_indices(points: np.ndarray) -> np.ndarray:
    """(n,) int: the non-dominated front of each point (0 = not dominated by any; NSGA-II's sorting)."""
    dom = dominance(points)
    count = dom.sum(axis=0)                    # how many points dominate each one
    front = np.full(len(points), -1)
    level = 0
    current = np.flatnonzero(count == 0)
    while current.size:
        front[current] = level
        count = count - dom[current].sum(axis=0)
        count[front >= 0] = -1                 # done: never picked again
        current = np.flatnonzero(count == 0)
        level += 1
    return front


def _spans(points: np.ndarray) -> np.ndarray:
    span = points.max(axis=0) - points.min(axis=0)
    return np.where(span > 0, span, 1.0)


def crowding_distance(points: np.ndarray) -> np.ndarray:
    """NSGA-II's crowding distance of each point within the set given (one front): larger = more isolated.

    Per objective, the points sorted (ties by index) give each inner point the gap between its neighbours,
    over the objective's range; the extremes get inf. Summed over objectives. Identical points are one
    point here, so they tie (and the caller breaks the tie).
    """
    unique, inverse = np.unique(points, axis=0, return_inverse=True)
    if len(unique) < len(points):      # identical points share one distance: their order is left to the index
        return crowding_distance(unique)[inverse.reshape(-1)]
    n, m = points.shape
    distance = np.zeros(n)
    if n <= 2:
        return np.full(n, np.inf)
    spans = _spans(points)
    for j in range(m):
        order = np.lexsort((np.arange(n), points[:, j]))
        distance[order[0]] = distance[order[-1]] = np.inf
        gaps = (points[order[2:], j] - points[order[:-2], j]) / spans[j]
        distance[order[1:-1]] += gaps
    return distance


def farthest_point_order(points: np.ndarray) -> np.ndarray:
    """The points (one front) in ε-net order: first the best on the first objective, then each time the one
    farthest (Euclidean, over each objective's range) from all picked so far; ties by index. Position in the
    order is the rank: earlier = covers more of the front."""
    return np.fromiter(farthest_points(points), dtype=int, count=len(points))


def farthest_points(points: np.ndarray) -> Iterator[int]:
    """farthest_point_order one index at a time (a caller that needs only the start of the order stops early)."""
    n = len(points)
    if n == 0:
        return
    scaled = (points - points.min(axis=0)) / _spans(points)
    first = int(np.lexsort((np.arange(n), scaled[:, 0]))[0])
    picked = np.zeros(n, dtype=bool)
    picked[first] = True
    yield first
    nearest = np.linalg.norm(scaled - scaled[first], axis=1)
    for _ in range(n - 1):
        candidates = np.where(picked, -np.inf, nearest)
        nxt = int(np.argmax(candidates))        # argmax takes the lowest index among equals
        picked[nxt] = True
        yield nxt
        nearest = np.minimum(nearest, np.linalg.norm(scaled - scaled[nxt], axis=1))


def rank_order(points: np.ndarray, tie_break: str = CROWDING) -> np.ndarray:
    """Indices of `points` (minimisation form) best first: by front, then inside a front by the tie break
    (crowding: most isolated first; epsilon: farthest-point order), then by index. Deterministic."""
    if tie_break not in TIE_BREAKS:
        raise ValueError(f"tie_break must be one of {TIE_BREAKS}, got {tie_break!r}")
    n = len(points)
    front = front_indices(points)
    within = np.zeros(n)
    for level in np.unique(front):
        members = np.flatnonzero(front == level)
        if tie_break == CROWDING:
            within[members] = -crowding_distance(points[members])
        else:
            within[members[farthest_point_order(points[members])]] = np.arange(len(members))
    return np.lexsort((np.arange(n), within, front))


class FrontLevels:
    """The non-dominated front of each point of a growing set (minimisation form), kept exact point by point.

    After any sequence of `add`s, `levels` equals `front_indices(points)`: a point's level is 0 when no point
    dominates it, else 1 + the highest level among those that do. Adding x gives it that level from its
    dominators; the points x dominates may rise, and by one level at most (Li et al. 2016, ENLU): those on x's
    level that x dominates, then those on the next level dominated by one that rose, and so on until none rises.
    One `add` costs two vectorised comparisons with every point, plus the cascade (among the points x dominates).
    """

    def __init__(self, n_objectives: int) -> None:
        self._cols = np.empty((n_objectives, 64))          # one row per objective: column-wise comparisons
        self._levels = np.empty(64, dtype=np.int64)
        self._n = 0

    def __len__(self) -> int:
        return self._n

    @property
    def points(self) -> np.ndarray:
        """(n, m) view of the points, in the order added."""
        return self._cols[:, :self._n].T

    @property
    def levels(self) -> np.ndarray:
        """(n,) view of each point's front, in the order added."""
        return self._levels[:self._n]

    def add(self, point: Any) -> int:
        """Add one point (length m, minimisation form, finite); returns its front. Its index is len(self) - 1."""
        x = np.asarray(point, dtype=float)
        if x.shape != (len(self._cols),):
            raise ValueError(f"point must have shape ({len(self._cols)},), got {x.shape}")
        n, cols, levels = self._n, self._cols[:, :self._n], self._levels[:self._n]
        no_worse, no_better = _no_worse_no_better(cols, x)
        dominators = no_worse & ~no_better                 # no worse everywhere, not equal everywhere
        level = int(levels[dominators].max()) + 1 if dominators.any() else 0
        below = np.flatnonzero(no_better & ~no_worse)      # the points x dominates: all on level ≥ its own
        if below.size:
            self._cascade(below, level)
        if n == self._cols.shape[1]:
            self._cols = np.concatenate([self._cols, np.empty_like(self._cols)], axis=1)
            self._levels = np.concatenate([self._levels, np.empty_like(self._levels)])
        self._cols[:, n] = x
        self._levels[n] = level
        self._n = n + 1
        return level

    def _cascade(self, below: np.ndarray, level: int) -> None:
        """Raise by one the fronts that x (on `level`, dominating `below`) pushes down, level after level."""
        old = self._levels[below]
        order = np.argsort(old, kind="stable")
        below, old = below[order], old[order]
        moved = below[np.searchsorted(old, level, "left"):np.searchsorted(old, level, "right")]
        while moved.size:
            nxt = below[np.searchsorted(old, level + 1, "left"):np.searchsorted(old, level + 1, "right")]
            self._levels[moved] += 1
            if not nxt.size:
                break
            hit = np.zeros(nxt.size, dtype=bool)
            step = max(1, (1 << 22) // nxt.size)            # bounded memory: chunks of the risen points
            for start in range(0, moved.size, step):
                chunk = self._cols[:, moved[start:start + step]]
                no_worse, no_better = _no_worse_no_better(self._cols[:, nxt][:, None, :], chunk[:, :, None])
                hit |= (no_better & ~no_worse).any(axis=0)  # nxt[j] is dominated by some risen point
            moved, level = nxt[hit], level + 1


def _no_worse_no_better(cols: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per point of `cols` (objectives first), whether it is ≤ x in every objective, and ≥ x in every one."""
    no_worse, no_better = cols[0] <= x[0], cols[0] >= x[0]
    for j in range(1, len(cols)):
        no_worse &= cols[j] <= x[j]
        no_better &= cols[j] >= x[j]
    return no_worse, no_better
