"""The successive-halving scheduler on synthetic streams: no training, decisions only.

Streams are simulated asynchronously: a few workers, trials with a hidden quality and a noisy curve, epochs of
random length; a trial stopped at a rung frees its worker for the next one.
"""

import heapq
import math

import numpy as np
import pytest

from dsearch.metrics import MACS, MAXIMIZE, MINIMIZE, PARAMS, VAL_ACC
from dsearch.ranking import crowding_distance, front_indices, rank_order, to_minimization
from dsearch.search.rungs import Rungs, describe, milestones

MO = [(VAL_ACC, MAXIMIZE), (PARAMS, MINIMIZE), (MACS, MINIMIZE)]
SO = [(VAL_ACC, MAXIMIZE)]


# --- where the rungs are -------------------------------------------------------------------------------------

@pytest.mark.parametrize("max_epochs, grace, rf, expected", [
    (300, 10, 3, [10, 30, 90]),       # cifar_bc.yaml: Ray's ASHA adds 270, where 2/3 would stop at 90% of budget
    (4, 2, 2, [2]),                   # 2 × 2 = 4 ≤ 4
    (3, 1, 2, [1]),                   # 2 × 2 > 3: no rung at 2
    (9, 1, 3, [1, 3]),
    (40, 40, 2, []),                  # grace = max_epochs: no rung, every trial trains fully
    (100, 5, 2.5, [5, 12, 31]),
])
def test_no_rung_where_rung_times_rf_exceeds_max_epochs(max_epochs, grace, rf, expected):
    rungs = milestones(max_epochs, grace, rf)
    assert rungs == expected
    assert all(r * rf <= max_epochs for r in rungs)


def test_explicit_rungs_and_the_printed_shares():
    assert milestones(300, 10, 3, [20, 100]) == [20, 100]
    assert describe([10, 30, 90], 300, 3) == ("rungs at epochs 10 (100%), 30 (33%), 90 (11%); full budget 300 "
                                              "(3.7%) of the trials that start")
    assert describe([], 40, 2) == "no rungs (every trial trains to the full budget); full budget 40 (100%) of the " \
                                  "trials that start"


# --- the rank ---------------------------------------------------------------------------------------------------

def test_non_dominated_sorting_and_crowding_on_a_hand_made_set():
    # minimisation form: a front of five on the anti-diagonal, a duplicate of its middle, one dominated point
    p = np.array([[1., 5], [2, 4], [3, 3], [4, 2], [5, 1], [3, 3], [6, 6]])
    assert front_indices(p).tolist() == [0, 0, 0, 0, 0, 0, 1]
    # extremes inf; inner points: (gap in x + gap in y) / range 4 = (2 + 2) / 4; the duplicates share one
    assert crowding_distance(p[:6]).tolist() == [math.inf, 1.0, 1.0, 1.0, math.inf, 1.0]
    assert rank_order(p).tolist() == [0, 4, 1, 2, 3, 5, 6]
    assert rank_order(p, "epsilon").tolist() == [0, 4, 2, 1, 3, 5, 6]   # farthest point first, then between


def test_mixed_directions_need_no_sign_tricks():
    raw = [[0.9, 1000], [0.8, 500], [0.7, 2000]]     # (val_acc ↑, params ↓): the third is dominated by both
    assert front_indices(to_minimization(raw, [MAXIMIZE, MINIMIZE])).tolist() == [0, 0, 1]


# --- invariants on random streams -------------------------------------------------------------------------------

def simulate(rungs: Rungs, seed: int, trials: int = 40, workers: int = 3, max_epochs: int = 9, decide=None):
    """Events (trial, epoch, curve so far, fixed, decision) of an asynchronous run driven by `decide`
    (default: `rungs`); val_acc = quality + noise, params/MACs drawn per trial."""
    rng = np.random.default_rng(seed)
    quality = rng.uniform(0.2, 0.9, trials)
    fixed = [{PARAMS: float(rng.integers(1_000, 100_000)), MACS: float(rng.integers(10**5, 10**8))}
             for _ in range(trials)]
    noise = rng.normal(0, 0.05, (trials, max_epochs))
    curves = np.round(quality[:, None] * (1 - np.exp(-np.arange(1, max_epochs + 1) / 3))[None] + noise, 2)
    decide = decide or (lambda t, curve, f: rungs.on_report(t, curve, f))
    clock, queue, started, events = 0.0, [], 0, []
    for _ in range(workers):
        heapq.heappush(queue, (rng.exponential(1.0), started, 1))
        started += 1
    while queue:
        clock, t, epoch = heapq.heappop(queue)
        curve = curves[t, :epoch].tolist()
        go = decide(t, curve, fixed[t])
        events.append((t, epoch, curve, fixed[t], go))
        if go and epoch < max_epochs:
            heapq.heappush(queue, (clock + rng.exponential(1.0), t, epoch + 1))
        elif started < trials:
            heapq.heappush(queue, (clock + rng.exponential(1.0), started, 1))
            started += 1
    return events


def rung_decisions(events, rungs):
    """(trial, rung, decision) for the events that reached a rung."""
    return [(t, e, go) for t, e, _, _, go in events if e in rungs]


@pytest.mark.parametrize("tie_break", ["crowding", "epsilon"])
def test_a_trial_that_dominates_its_rung_is_never_stopped_and_one_dominated_by_all_is(tie_break):
    rng = np.random.default_rng(0)
    for _ in range(300):
        r = Rungs([2], 3, MO, tie_break)
        n = int(rng.integers(1, 12))
        for i in range(n):
            r.recorded[2][i] = (float(rng.uniform(0.3, 0.8)), float(rng.uniform(2e3, 9e4)), float(rng.uniform(1e5, 9e7)))
        best, worst = n, n + 1
        assert r.on_report(best, [0.0, 0.95], {PARAMS: 1e3, MACS: 1e4})          # dominates every vector
        # Dominated by all: last of the rung, and ⌈n / rf⌉ < n for any n ≥ 2, so stopped (even before n > rf).
        assert r.on_report(worst, [0.0, 0.1], {PARAMS: 1e6, MACS: 1e9}) is False
        assert len(r.recorded[2]) == n + 2


@pytest.mark.parametrize("rf", [2, 3, 4])
def test_the_promoted_share_tends_to_one_over_rf(rf):
    rng = np.random.default_rng(rf)
    r = Rungs([1], rf, MO)
    decisions = [r.on_report(i, [float(rng.uniform())], {PARAMS: float(rng.uniform(1e3, 1e5)),
                                                          MACS: float(rng.uniform(1e5, 1e8))}) for i in range(1000)]
    assert abs(np.mean(decisions) - 1 / rf) < 0.03, np.mean(decisions)


def test_decisions_are_deterministic_for_a_given_stream():
    a = simulate(Rungs([1, 3], 3, MO), seed=5)
    b = simulate(Rungs([1, 3], 3, MO), seed=5)
    assert [e[4] for e in a] == [e[4] for e in b] and len(a) > 60
    assert not all(e[4] for e in a)


def test_a_resumed_search_rebuilt_from_the_curves_decides_as_an_uninterrupted_one():
    for seed in range(20):
        events = simulate(Rungs([1, 3], 3, MO), seed=seed)
        cut = len(events) // 2
        # What the study holds at the kill: each trial's curve as far as it reported (its last event's curve).
        curves = {t: (curve, fixed) for t, _, curve, fixed, _ in events[:cut]}
        resumed = Rungs([1, 3], 3, MO)
        resumed.rebuild((t, curve, fixed) for t, (curve, fixed) in sorted(curves.items()))
        after = [resumed.on_report(t, curve, fixed) for t, _, curve, fixed, _ in events[cut:]]
        assert after == [e[4] for e in events[cut:]], seed


# --- one objective: Ray's ASHAScheduler -----------------------------------------------------------------------

class _Trial:
    def __init__(self, trial_id: str) -> None:
        self.trial_id = trial_id


def test_with_val_acc_alone_it_decides_as_rays_asha_except_where_ray_interpolates(capsys):
    """Ray's ASHA stops an arrival below the interpolated (1 - 1/rf) quantile of the values already at the
    rung; ASHA as published (and this scheduler) keeps it if it is in the top ⌈n / rf⌉ of the rung, itself
    included. Both are replayed on the same 400 streams; every decision is checked against its rule, and
    the two differ exactly where the rules do."""
    from ray.tune.schedulers import ASHAScheduler, TrialScheduler

    total = differ = 0
    for seed in range(400):
        rf = (2, 3, 4)[seed % 3]
        ray = ASHAScheduler(time_attr="epoch", metric=VAL_ACC, mode="max", max_t=rf * rf, grace_period=1,
                            reduction_factor=rf)
        ours = Rungs(milestones(rf * rf, 1, rf), rf, SO)
        assert ours.rungs == [1, rf]               # Ray's rungs 1, rf, rf² less the one at max_t
        trials = {}

        def by_ray(t, curve, fixed):
            if t not in trials:
                trials[t] = _Trial(str(t))
                ray.on_trial_add(None, trials[t])
            return ray.on_trial_result(None, trials[t], {"epoch": len(curve), VAL_ACC: curve[-1]}) \
                == TrialScheduler.CONTINUE

        seen: dict[int, dict[int, float]] = {r: {} for r in ours.rungs}
        for t, epoch, curve, fixed, ray_go in simulate(ours, seed, trials=12, max_epochs=rf * rf, decide=by_ray):
            our_go = ours.on_report(t, curve, fixed)
            if epoch not in seen:
                assert ray_go == (epoch < rf * rf) and our_go    # between rungs both continue; Ray stops at max_t
                continue
            x, others = curve[-1], seen[epoch]
            ray_rule = not others or x >= np.nanpercentile(list(others.values()), (1 - 1 / rf) * 100)
            ranked = sorted([*others, t], key=lambda i: (-({**others, t: x}[i]), i))
            rank_rule = ranked.index(t) < math.ceil((len(others) + 1) / rf)
            assert (ray_go, our_go) == (ray_rule, rank_rule), (seed, epoch, x, others)
            seen[epoch][t] = x
            total += 1
            differ += ray_go != our_go
    print(f"\n{total} rung decisions, {differ} ({differ / total:.1%}) differ from Ray's ASHA")
    assert total > 4_000 and 0 < differ / total < 0.25
