"""Ranking points on several objectives: dominance, non-dominated sorting, and the order within a front.

Pure numpy, shared by the scheduler (search/rungs.py) and the front reports (analysis/pareto.py). Every
function takes raw objective values (one row per point, one column per objective, in the metric's own
units) and the objectives' directions; each maximised column is negated, so that smaller is better
everywhere ("minimisation form"). No sign tricks are left to the caller.
"""

from __future__ import annotations

from collections.abc import Sequence
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
    n = len(points)
    if n == 0:
        return np.zeros(0, dtype=int)
    scaled = (points - points.min(axis=0)) / _spans(points)
    first = int(np.lexsort((np.arange(n), scaled[:, 0]))[0])
    order, picked = [first], np.zeros(n, dtype=bool)
    picked[first] = True
    nearest = np.linalg.norm(scaled - scaled[first], axis=1)
    for _ in range(n - 1):
        candidates = np.where(picked, -np.inf, nearest)
        nxt = int(np.argmax(candidates))        # argmax takes the lowest index among equals
        order.append(nxt)
        picked[nxt] = True
        nearest = np.minimum(nearest, np.linalg.norm(scaled - scaled[nxt], axis=1))
    return np.asarray(order)


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
