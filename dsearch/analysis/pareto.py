"""Pareto fronts: non-dominated sorting, hypervolume, knee point, fidelity filtering.

Pure numpy (no Optuna, no Ray). Every function takes raw objective values (one row per
point, one column per objective, in the metric's own units) and the objectives'
directions; internally each maximised column is negated so that smaller is better
everywhere ("minimisation form"). Values must be finite: drop FAIL / NaN rows first.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..metrics import MACS, MEMORY, PARAMS
from ..ranking import direction_signs, dominance, to_minimization

# Trial states as Optuna names them (TrialState.X.name).
COMPLETE = "COMPLETE"
PRUNED = "PRUNED"

LOG_SCALED = (PARAMS, MACS, MEMORY)      # normalised on a log scale: they span decades

# Default reference point: a minimised metric's is this factor times its largest value.
REFERENCE_MARGIN = 1.1


def _reference_min(reference: Any, directions: Sequence[Any]) -> np.ndarray:
    """A raw reference point in minimisation form."""
    return to_minimization(np.asarray(reference, dtype=float).reshape(1, -1), directions)[0]


def pareto_mask(values: Any, directions: Sequence[Any]) -> np.ndarray:
    """(n,) bool: True for the non-dominated points; duplicates of a front point are all True."""
    points = to_minimization(values, directions)
    return ~dominance(points).any(axis=0)


def default_reference(values: Any, objectives: Sequence[Any]) -> np.ndarray:
    """Reference point in raw units: 0 for a maximised metric, 1.1 × the largest value for a minimised one.

    0 suits maximised metrics that are non-negative fractions (val_acc); the minimised
    ones get 10% headroom so that the cheapest-but-worst and best-but-costliest points
    still add volume. Raises ValueError for an empty set of points.
    """
    signs = direction_signs(objectives)
    points = to_minimization(values, objectives) * signs  # validated, raw units
    if len(points) == 0:
        raise ValueError("default reference needs at least one point")
    largest = points.max(axis=0)
    return np.where(signs < 0, 0.0, largest + (REFERENCE_MARGIN - 1.0) * np.abs(largest))


def _area(points: np.ndarray, reference: np.ndarray) -> float:
    """Exact 2-D hypervolume of points that all lie strictly below the reference."""
    ordered = points[np.lexsort((points[:, 1], points[:, 0]))]
    best_before = np.minimum.accumulate(np.concatenate(([reference[1]], ordered[:-1, 1])))
    heights = np.clip(best_before - ordered[:, 1], 0.0, None)
    return float(np.sum((reference[0] - ordered[:, 0]) * heights))


def _volume(points: np.ndarray, reference: np.ndarray) -> float:
    """Exact hypervolume (minimisation form) by slicing along the last objective.

    O(n^(m-1) log n): exact and fast for m = 2 and 3, usable for small fronts beyond.
    """
    points = points[np.all(points < reference, axis=1)]
    if len(points) == 0:
        return 0.0
    if points.shape[1] == 1:
        return float(reference[0] - points[:, 0].min())
    if points.shape[1] == 2:
        return _area(points, reference)
    points = points[np.argsort(points[:, -1], kind="stable")]
    last = points[:, -1]
    uppers = np.append(last[1:], reference[-1])
    total = 0.0
    for i in np.flatnonzero(uppers > last):
        total += (uppers[i] - last[i]) * _volume(points[: i + 1, :-1], reference[:-1])
    return total


def hypervolume(values: Any, directions: Sequence[Any], reference: Any = None) -> float:
    """Volume dominated by the points and bounded by the reference; units = product of the objectives' units.

    reference is in raw units (None: `default_reference` of these points). Points no
    better than the reference in some objective add nothing.
    """
    points = to_minimization(values, directions)
    if len(points) == 0:
        return 0.0
    if reference is None:
        reference = default_reference(values, directions)
    ref = _reference_min(reference, directions)
    return _volume(points[~dominance(points).any(axis=0)], ref)


def normalization_bounds(values: Any, objectives: Sequence[Any]) -> np.ndarray:
    """(2, m) lower and upper bounds of each objective over these points, in the normalised space's units
    (minimisation form; log10 for params and MACs, which span decades). Pass the same bounds to compare
    several sets of points (several studies, several methods)."""
    points = _log_scaled(to_minimization(values, objectives), objectives)
    if len(points) == 0:
        raise ValueError("normalisation bounds need at least one point")
    return np.stack([points.min(axis=0), points.max(axis=0)])


def normalized_hypervolume(values: Any, objectives: Sequence[Any], bounds: Any = None) -> float:
    """The hypervolume as a share (0..1) of the box between the best and worst value of each objective.

    Objectives are put in minimisation form, params and MACs log10-scaled, then min-max normalised with
    `bounds` (default: these points' own, `normalization_bounds`); the reference point is the worst corner
    (1, …, 1). Unitless, so it compares across studies normalised with the same bounds.
    """
    points = _log_scaled(to_minimization(values, objectives), objectives)
    if len(points) == 0:
        return 0.0
    lo, hi = np.asarray(bounds if bounds is not None else normalization_bounds(values, objectives), dtype=float)
    scaled = (points - lo) / np.where(hi > lo, hi - lo, 1.0)
    return _volume(scaled[~dominance(scaled).any(axis=0)], np.ones(scaled.shape[1]))


def _log_scaled(points: np.ndarray, objectives: Sequence[Any]) -> np.ndarray:
    """log10 of the columns of metrics that span decades (params, MACs; positive, minimised)."""
    out = points.copy()
    for j, o in enumerate(objectives):
        if getattr(o, "metric", None) in LOG_SCALED:
            out[:, j] = np.log10(np.maximum(out[:, j], 1e-12))
    return out


def hypervolume_history(values: Any, directions: Sequence[Any], reference: Any) -> np.ndarray:
    """(n,) float: hypervolume of points[: i + 1] for each i (rows in trial order); non-decreasing.

    reference is in raw units and fixed for the whole history.
    """
    points = to_minimization(values, directions)
    ref = _reference_min(reference, directions)
    history = np.zeros(len(points))
    front = np.empty((0, points.shape[1]))
    volume = 0.0
    for i, point in enumerate(points):
        # A point weakly dominated by the running front cannot change the volume.
        if np.all(point < ref) and not np.any(np.all(front <= point, axis=1)):
            front = np.vstack([front[~np.all(point <= front, axis=1)], point])
            volume = _volume(front, ref)
        history[i] = volume
    return history


def knee_point(values: Any, directions: Sequence[Any]) -> int | None:
    """Index of the front point closest (Euclidean) to the ideal point after min-max normalising the front.

    Each objective is scaled to [0, 1] over the front (0 = best), so units cancel; a
    constant objective counts 0 for everyone. Ties go to the lowest index; None if empty.
    """
    points = to_minimization(values, directions)
    if len(points) == 0:
        return None
    on_front = np.flatnonzero(~dominance(points).any(axis=0))
    front = points[on_front]
    low = front.min(axis=0)
    span = front.max(axis=0) - low
    span[span == 0] = 1.0
    distances = np.linalg.norm((front - low) / span, axis=1)
    return int(on_front[np.argmin(distances)])


def fidelity_mask(
    states: Any,
    epochs_trained: Any = None,
    max_epochs: Any = None,
    include_partial: bool = False,
) -> np.ndarray:
    """(n,) bool: the trials a front may be built from.

    By default the full-budget ones: state COMPLETE and, when both are given,
    epochs_trained ≥ max_epochs (epochs; max_epochs a scalar or one per trial). With
    include_partial, PRUNED trials (stopped early by ASHA) count too.
    """
    states = np.asarray(states, dtype=object).astype(str)
    if include_partial:
        return np.isin(states, (COMPLETE, PRUNED))
    mask = states == COMPLETE
    if epochs_trained is not None and max_epochs is not None:
        mask &= np.asarray(epochs_trained, dtype=float) >= np.asarray(max_epochs, dtype=float)
    return mask
