"""Pareto sorting, hypervolume, knee and fidelity filtering: specifications with hand-checked numbers."""

from __future__ import annotations

import itertools

import numpy as np
import optuna
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dsearch.analysis.pareto import (
    default_reference,
    direction_signs,
    fidelity_mask,
    hypervolume,
    hypervolume_history,
    knee_point,
    pareto_mask,
    to_minimization,
)
from dsearch.metrics import DEFAULT_OBJECTIVES as OBJECTIVES
from dsearch.metrics import MACS, MAXIMIZE, MINIMIZE, PARAMS, VAL_ACC

ACC_PARAMS = (MAXIMIZE, MINIMIZE)
ACC_PARAMS_MACS = (MAXIMIZE, MINIMIZE, MINIMIZE)


# --- brute-force references (the definitions, written out) ---------------------------------


def brute_dominates(a, b, directions) -> bool:
    no_worse = all((x >= y) if d == MAXIMIZE else (x <= y) for x, y, d in zip(a, b, directions))
    better = any((x > y) if d == MAXIMIZE else (x < y) for x, y, d in zip(a, b, directions))
    return no_worse and better


def brute_ranks(values, directions) -> list[int]:
    ranks = [-1] * len(values)
    remaining = set(range(len(values)))
    rank = 0
    while remaining:
        front = {i for i in remaining
                 if not any(brute_dominates(values[j], values[i], directions) for j in remaining)}
        for i in front:
            ranks[i] = rank
        remaining -= front
        rank += 1
    return ranks


def inclusion_exclusion_volume(points_min, reference_min) -> float:
    """Union of the boxes [p, ref] as Σ over subsets S of (-1)^(|S|+1) · vol(box at max(S))."""
    boxes = [p for p in points_min if all(x < r for x, r in zip(p, reference_min))]
    total = 0.0
    for size in range(1, len(boxes) + 1):
        for subset in itertools.combinations(boxes, size):
            corner = np.max(subset, axis=0)
            total += (-1) ** (size + 1) * float(np.prod(np.asarray(reference_min) - corner))
    return total


@st.composite
def point_sets(draw, max_points=30, max_objectives=4):
    """Points on a coarse integer grid (many ties and exact duplicates) with mixed directions."""
    m = draw(st.integers(1, max_objectives))
    n = draw(st.integers(0, max_points))
    directions = tuple(draw(st.lists(st.sampled_from((MAXIMIZE, MINIMIZE)), min_size=m, max_size=m)))
    rows = draw(st.lists(st.lists(st.integers(0, 4), min_size=m, max_size=m), min_size=n, max_size=n))
    if rows and draw(st.booleans()):
        rows.append(list(rows[draw(st.integers(0, len(rows) - 1))]))  # force a duplicate
    return np.asarray(rows, dtype=float).reshape(len(rows), m), directions


# --- non-dominated sorting -----------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(point_sets())
def test_pareto_mask_matches_brute_force_dominance(case):
    values, directions = case
    ranks = brute_ranks(values.tolist(), directions)
    assert pareto_mask(values, directions).tolist() == [r == 0 for r in ranks]


def test_accuracy_vs_params_front_by_hand():
    values = [(0.90, 100), (0.95, 200), (0.90, 150), (0.95, 200), (0.80, 50), (0.94, 300)]
    # (0.90,150) loses to (0.90,100); (0.94,300) loses to (0.95,200); the duplicates both stay.
    assert pareto_mask(values, ACC_PARAMS).tolist() == [True, True, False, True, True, False]


def test_points_equal_in_every_objective_do_not_dominate_each_other():
    values = [(0.9, 1e6, 3e8)] * 3
    assert pareto_mask(values, ACC_PARAMS_MACS).tolist() == [True, True, True]


def test_empty_point_set_has_no_front():
    assert pareto_mask(np.empty((0, 3)), ACC_PARAMS_MACS).tolist() == []
    assert knee_point(np.empty((0, 2)), ACC_PARAMS) is None


def test_maximised_columns_are_negated():
    assert to_minimization([(0.9, 5.0)], ACC_PARAMS).tolist() == [[-0.9, 5.0]]


def test_directions_accept_objectives_and_optuna_study_directions():
    maximize, minimize = optuna.study.StudyDirection.MAXIMIZE, optuna.study.StudyDirection.MINIMIZE
    assert direction_signs(OBJECTIVES).tolist() == [-1.0, 1.0, 1.0]
    assert direction_signs((maximize, minimize, "MINIMIZE")).tolist() == [-1.0, 1.0, 1.0]


def test_unknown_direction_and_nan_values_are_rejected():
    with pytest.raises(ValueError, match="direction"):
        pareto_mask([(1.0,)], ("max",))
    with pytest.raises(ValueError, match="finite"):
        pareto_mask([(np.nan, 1.0)], ACC_PARAMS)


# --- hypervolume ---------------------------------------------------------------------------


def test_default_reference_is_zero_accuracy_and_110_percent_of_the_largest_costs():
    values = [(0.90, 1_000_000, 300_000_000), (0.95, 2_000_000, 500_000_000)]
    assert default_reference(values, OBJECTIVES).tolist() == pytest.approx([0.0, 2_200_000, 550_000_000])


def test_hypervolume_2d_staircase_is_6():
    # Boxes [1,4]x[3,4] (3) + [2,4]x[2,3] (2) + [3,4]x[1,2] (1).
    assert hypervolume([(1, 3), (2, 2), (3, 1)], (MINIMIZE, MINIMIZE), (4, 4)) == 6.0


def test_hypervolume_2d_accuracy_vs_params_is_1_85():
    # Negated: (-0.9, 1) and (-0.95, 2) under (0, 3): 0.9·2 + 0.95·1 − 0.9·1.
    assert hypervolume([(0.90, 1.0), (0.95, 2.0)], ACC_PARAMS, (0.0, 3.0)) == pytest.approx(1.85)


def test_hypervolume_3d_unit_cube_and_three_slabs():
    assert hypervolume([(1, 1, 1)], (MINIMIZE,) * 3, (2, 2, 2)) == 1.0
    # Three 2x2x1 slabs: 12 − 3 pairwise overlaps of 2 + the common unit cube = 7 (= 8 − 1).
    slabs = [(0, 0, 1), (0, 1, 0), (1, 0, 0)]
    assert hypervolume(slabs, (MINIMIZE,) * 3, (2, 2, 2)) == 7.0


def test_hypervolume_3d_accuracy_params_macs_by_hand():
    values = [(0.9, 1.0, 3.0), (0.8, 0.5, 1.0)]
    # Negated: (-0.9, 1, 3), (-0.8, 0.5, 1) under (0, 2, 4): 0.9·1·1 + 0.8·1.5·3 − 0.8·1·1 = 3.7.
    assert hypervolume(values, ACC_PARAMS_MACS, (0.0, 2.0, 4.0)) == pytest.approx(3.7)


def test_points_beyond_the_reference_add_no_volume():
    values = [(0.9, 1.0), (0.95, 5.0)]  # the second costs more than the reference allows
    assert hypervolume(values, ACC_PARAMS, (0.0, 3.0)) == pytest.approx(0.9 * 2.0)


def test_hypervolume_without_a_reference_uses_0_and_1_1_times_the_largest_cost():
    values = [(0.90, 1_000_000, 300_000_000), (0.95, 2_000_000, 500_000_000)]
    assert default_reference(values, OBJECTIVES).tolist() == pytest.approx([0.0, 2.2e6, 5.5e8])
    # Two boxes up to (0, 2.2e6, 5.5e8) less their overlap:
    # 0.90·1.2e6·2.5e8 + 0.95·0.2e6·0.5e8 − 0.90·0.2e6·0.5e8 = 2.7e14 + 9.5e12 − 9.0e12 = 2.705e14.
    assert hypervolume(values, OBJECTIVES) == pytest.approx(2.705e14)
    assert hypervolume(np.empty((0, 3)), OBJECTIVES) == 0.0


@settings(max_examples=200, deadline=None)
@given(point_sets(max_points=7, max_objectives=3))
def test_hypervolume_matches_inclusion_exclusion(case):
    values, directions = case
    reference = np.where(np.asarray(directions) == MAXIMIZE, -1.0, 5.0)
    expected = inclusion_exclusion_volume(to_minimization(values, directions),
                                          to_minimization([reference], directions)[0])
    assert hypervolume(values, directions, reference) == pytest.approx(expected, abs=1e-9)


def test_hypervolume_history_by_hand():
    values = [(2, 2), (3, 3), (1, 3), (2, 2), (3, 1)]  # both minimised, reference (4, 4)
    # (2,2): 4; (3,3) dominated: 4; (1,3): +1; duplicate (2,2): 5; (3,1): +1.
    history = hypervolume_history(values, (MINIMIZE, MINIMIZE), (4, 4))
    assert history.tolist() == [4.0, 4.0, 5.0, 5.0, 6.0]


@settings(max_examples=100, deadline=None)
@given(point_sets(max_points=20, max_objectives=3))
def test_hypervolume_history_is_non_decreasing_and_ends_at_the_total(case):
    values, directions = case
    reference = np.where(np.asarray(directions) == MAXIMIZE, -1.0, 5.0)
    history = hypervolume_history(values, directions, reference)
    assert np.all(np.diff(history) >= 0)
    if len(values):
        assert history[-1] == pytest.approx(hypervolume(values, directions, reference))


# --- knee and fidelity ---------------------------------------------------------------------


def test_knee_is_the_front_point_nearest_the_normalised_ideal():
    # Front normalised: (1, 0), (0.4, 1/7), (0, 1); dominated (0.85, 3) is ignored.
    values = [(0.90, 1.0), (0.93, 2.0), (0.95, 8.0), (0.85, 3.0)]
    assert knee_point(values, ACC_PARAMS) == 1


def test_knee_tie_goes_to_the_lowest_index():
    assert knee_point([(0.9, 1.0), (0.95, 2.0)], ACC_PARAMS) == 0


def test_fidelity_keeps_full_budget_complete_trials_unless_partial_is_asked_for():
    states = ["COMPLETE", "PRUNED", "COMPLETE", "FAIL", "RUNNING"]
    epochs = [300, 2, 150, 0, 10]
    assert fidelity_mask(states).tolist() == [True, False, True, False, False]
    assert fidelity_mask(states, epochs, 300).tolist() == [True, False, False, False, False]
    assert fidelity_mask(states, include_partial=True).tolist() == [True, True, True, False, False]


# --- agreement with Optuna -----------------------------------------------------------------


def _optuna_study(rows, pruned=()):
    """A 3-objective study whose trial i reports rows[i] (PRUNED if i in pruned)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(directions=[MAXIMIZE, MINIMIZE, MINIMIZE])
    for i, row in enumerate(rows):
        study.enqueue_trial({"i": i, **dict(zip((VAL_ACC, PARAMS, MACS), row))})

    def objective(trial):
        i = trial.suggest_int("i", 0, len(rows))
        values = tuple(trial.suggest_float(name, 0.0, 1e12) for name in (VAL_ACC, PARAMS, MACS))
        if i in pruned:
            raise optuna.TrialPruned()
        return values

    study.optimize(objective, n_trials=len(rows))
    return study


def test_front_matches_optuna_best_trials_by_hand():
    rows = [(0.93, 1e6, 3e8), (0.95, 7e6, 1.8e9), (0.93, 1e6, 3e8), (0.92, 2e6, 4e8),
            (0.96, 2.7e7, 6.9e9), (0.99, 1e5, 1e7)]
    study = _optuna_study(rows, pruned={5})
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    mask = pareto_mask([t.values for t in complete], study.directions)
    assert sorted(t.number for t in study.best_trials) == [0, 1, 2, 4]
    assert [t.number for t, on in zip(complete, mask) if on] == [0, 1, 2, 4]


def test_front_matches_optuna_best_trials_on_random_points():
    rng = np.random.default_rng(0)
    rows = np.column_stack([rng.integers(80, 96, 60) / 100, rng.integers(1, 20, 60) * 1e5,
                            rng.integers(1, 20, 60) * 1e7])
    rows = np.vstack([rows, rows[:5]])  # exact duplicates
    study = _optuna_study([tuple(r) for r in rows])
    mask = pareto_mask([t.values for t in study.trials], study.directions)
    assert sorted(t.number for t in study.best_trials) == np.flatnonzero(mask).tolist()
