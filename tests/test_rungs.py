"""The successive-halving scheduler on synthetic streams: no training, decisions only.

Streams are simulated asynchronously: a few workers, trials with a hidden quality and a noisy curve, epochs of
random length; a trial stopped at a rung frees its worker for the next one.
"""

import heapq
import math
from fractions import Fraction

import numpy as np
import pytest

from dsearch.metrics import MACS, MAXIMIZE, MINIMIZE, PARAMS, VAL_ACC
from dsearch.ranking import crowding_distance, front_indices, rank_order, to_minimization
from dsearch.search.rungs import Rungs, after_first_drop, chance_floor, describe, milestones

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


@pytest.mark.parametrize("floor", [None, 0.5])
@pytest.mark.parametrize("tie_break", ["crowding", "epsilon"])
def test_a_trial_that_dominates_its_rung_is_never_stopped_and_one_dominated_by_all_is(tie_break, floor):
    rng = np.random.default_rng(0)
    for _ in range(300):
        r = Rungs([2], 3, MO, tie_break, floor)
        n = int(rng.integers(1, 12))
        for i in range(n):
            r.recorded[2][i] = (float(rng.uniform(0.3, 0.8)), float(rng.uniform(2e3, 9e4)), float(rng.uniform(1e5, 9e7)))
        best, worst = n, n + 1
        assert r.on_report(best, [0.0, 0.95], {PARAMS: 1e3, MACS: 1e4})          # dominates every vector
        # Dominated by all: last of the rung, and ⌈n / rf⌉ < n for any n ≥ 2, so stopped (even before n > rf).
        assert r.on_report(worst, [0.0, 0.1], {PARAMS: 1e6, MACS: 1e9}) is False
        assert len(r.recorded[2]) == n + 2


@pytest.mark.parametrize("floor", [None, 0.128])
@pytest.mark.parametrize("rf", [2, 3, 4])
def test_the_promoted_share_tends_to_one_over_rf(rf, floor):
    rng = np.random.default_rng(rf)
    r = Rungs([1], rf, MO, floor=floor)
    decisions = [r.on_report(i, [float(rng.uniform())], {PARAMS: float(rng.uniform(1e3, 1e5)),
                                                          MACS: float(rng.uniform(1e5, 1e8))}) for i in range(1000)]
    assert abs(np.mean(decisions) - 1 / rf) < 0.03, np.mean(decisions)


@pytest.mark.parametrize("rf", [2, 3])
def test_a_chance_level_trial_never_goes_on_once_rf_trials_are_better_than_chance(rf):
    """The cheapest net at 10 % on 10 classes is on the rung's first front (nothing has fewer params or MACs), so
    the floorless rule always promotes it; with the floor it stops as soon as rf trials are above 12.8 %."""
    floor = chance_floor(10, 1000)
    assert floor == pytest.approx(0.1 + 3 * math.sqrt(0.09 / 1000)) and 0.128 < floor < 0.129
    cheap, big = {PARAMS: 1e3, MACS: 1e5}, {PARAMS: 1e5, MACS: 1e7}
    for with_floor in (None, floor):
        r = Rungs([1], rf, MO, floor=with_floor)
        assert r.on_report(0, [0.10], cheap)          # alone at its rung: nothing is better than chance yet
        for i in range(1, 2 * rf + 1):                # 2·rf nets above chance, all as big: one front each
            r.on_report(i, [0.5 + 0.01 * i], big)
        # n = 2·rf + 2, ⌈n / rf⌉ = 3: the best big net and the cheap one share the first front.
        assert r.on_report(100, [0.10], cheap) is (with_floor is None)
        assert r.on_report(101, [floor + 0.002], cheap)                 # just above chance: cheapest, goes on
    assert chance_floor(100, 5000) == pytest.approx(0.01 + 3 * math.sqrt(0.0099 / 5000))


def test_one_rung_one_epoch_after_the_first_lr_drop():
    assert after_first_drop(12, (0.5, 0.75)) == [7]            # lr ÷ 10 after epoch 6: epoch 7 is wholly at 0.01
    assert after_first_drop(300, (0.5, 0.75)) == [151]
    assert after_first_drop(90, (1 / 3, 2 / 3)) == [31]
    assert after_first_drop(4, (0.25, 0.75)) == [2]
    assert after_first_drop(10, (0.45,)) == [6]                # a drop inside epoch 5: epoch 6 is the first wholly after
    assert after_first_drop(4, (0.8,)) == [] and after_first_drop(12, ()) == []    # no epoch left after it


def test_decisions_are_deterministic_for_a_given_stream():
    a = simulate(Rungs([1, 3], 3, MO), seed=5)
    b = simulate(Rungs([1, 3], 3, MO), seed=5)
    assert [e[4] for e in a] == [e[4] for e in b] and len(a) > 60
    assert not all(e[4] for e in a)


def engine_on_a_fresh_study(interrupted=lambda: False):
    """The search engine on an in-memory study of the tiny space (9 epochs, rungs at 1 and 3, rf 3, three
    objectives, a seeded sampler: the same trials in the same order on every fresh study). The study keeps a copy
    of each attribute as it was written, as a database does (Optuna's in-memory storage keeps the object)."""
    import json

    import optuna

    from dsearch.search import record as st
    from dsearch.search.engine import Engine
    from dsearch.search.io import parse_space
    from spaces import tiny_space

    class Stored(optuna.storages.InMemoryStorage):
        def set_trial_user_attr(self, trial_id, key, value):
            super().set_trial_user_attr(trial_id, key, json.loads(json.dumps(value)))

    space = parse_space(tiny_space(epochs=9, num=40, conc=3))
    study = st.new_study(space, Stored(), st.make_sampler("random", space.sampler.seed))
    return Engine(space, study, rule=Rungs([1, 3], 3, MO), interrupted=interrupted)


def hand_over(engine, key: int, curve: list[float], proposals: dict) -> tuple[int, dict, bool]:
    """One report (the curve so far) of the trial a stream calls `key` to the engine, as Ray Tune hands it over:
    the trial asked at its first report; `decide`, then `observe` if it goes on, `complete` with the report if
    it stops. Returns the study's trial number, the report and the decision."""
    if key not in proposals:
        proposals[key] = engine.ask()
    p = proposals[key]
    number, result = p["trial"], {"epoch": len(curve), VAL_ACC: curve[-1], PARAMS: p[PARAMS], MACS: p[MACS]}
    goes_on = engine.decide(number, result)
    engine.observe(number, result) if goes_on else engine.complete(number, result)
    return number, result, goes_on


def test_a_resumed_search_rebuilt_from_what_the_study_stores_decides_as_an_uninterrupted_one():
    """Ctrl-C in the middle of a run: the reports that reach the driver while it stops (a rung's STOP among them)
    go to the engine as Tune hands them over, then Tune stops the trials still training and the run requeues
    them. The rungs a resumed run rebuilds from that study equal those of the same run not interrupted, a trial
    a rung stopped is PRUNED with its rung epoch (never queued again, never judged again), and only the trials
    that were going on are queued again."""
    from optuna.trial import TrialState

    from dsearch.search import record as st
    from dsearch.search.engine import Engine

    rung_stops_while_stopping = 0
    for seed in range(6):
        # The uninterrupted run: its stream of reports (stream's trial key, study trial number, curve, decision).
        whole, proposals = engine_on_a_fresh_study(), {}
        stream = []

        def decide(key, curve, _):
            number, _, goes_on = hand_over(whole, key, curve, proposals)
            stream.append((key, number, list(curve), goes_on))
            return goes_on

        simulate(None, seed, decide=decide)
        # The same run on its own study, Ctrl-C just before a report that rung 3 stops, a third of the way in or later.
        stopping = [False]
        cut = engine_on_a_fresh_study(interrupted=lambda: stopping[0])
        asked, last, ended, reference = {}, {}, set(), Rungs([1, 3], 3, MO)

        def replay(reports):
            for key, number, curve, goes_on in reports:
                n, last[number], decided = hand_over(cut, key, curve, asked)
                fixed = {PARAMS: last[n][PARAMS], MACS: last[n][MACS]}
                assert n == number and decided == goes_on == (reference.on_report(n, curve, fixed) and len(curve) < 9)
                if not goes_on:
                    ended.add(n)

        half = next(i for i, (_, _, curve, goes_on) in enumerate(stream)
                    if i >= len(stream) // 3 and len(curve) == 3 and not goes_on)
        replay(stream[:half])
        stopping[0] = True
        training = {p["trial"] for p in asked.values()} - ended
        in_flight = []                       # the next report of each trial still training, as they arrive
        for report in stream[half:]:
            if report[1] in training and report[1] not in {r[1] for r in in_flight}:
                in_flight.append(report)
        in_flight = in_flight[:3]
        replay(in_flight)
        rung_stops_while_stopping += sum(not goes_on and len(curve) < 9 for _, _, curve, goes_on in in_flight)
        going_on = sorted(training - ended)
        for n in going_on:                   # Tune stops what still trains, with its last report
            cut.complete(n, last[n])
        st.fail_interrupted(cut.study)
        resumed = Engine(cut.space, cut.study, rule=Rungs([1, 3], 3, MO))
        assert resumed.rule.recorded == reference.recorded, seed
        trials = cut.study.trials
        assert sorted(t.user_attrs["requeued_from"] for t in trials if t.state == TrialState.WAITING) == \
            going_on, seed
        for _, n, curve, goes_on in stream[:half] + in_flight:
            if not goes_on and len(curve) < 9:
                assert trials[n].state == TrialState.PRUNED and trials[n].user_attrs["curve"] == curve, (seed, n)
    assert rung_stops_while_stopping >= 6, rung_stops_while_stopping   # the case that matters, in every run


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


# --- the incremental rank decides as rank_order on the whole rung -----------------------------------------------

def reference_goes_on(recorded: dict, trial: int, objectives, tie_break: str, rf: float,
                      floor: float | None = None) -> bool:
    """The O(n²) rule as goes_on had it: rank_order on every finite vector of the rung (trial number as the index);
    only ⌈n / rf⌉ is exact now (rf as its decimal). With a floor, once ≥ rf finite vectors have val_acc above
    it, a vector at or below it stops and the others rank among themselves."""
    ids = sorted(recorded)
    if any(not math.isfinite(v) for v in recorded[trial]):
        return False
    finite = [i for i in ids if all(math.isfinite(x) for x in recorded[i])]
    if floor is not None and VAL_ACC in [m for m, _ in objectives]:
        j = [m for m, _ in objectives].index(VAL_ACC)
        above = [i for i in finite if recorded[i][j] > floor]
        if len(above) >= rf:
            if trial not in above:
                return False
            finite = above
    points = to_minimization([recorded[i] for i in finite], [d for _, d in objectives])
    order = [finite[k] for k in rank_order(points, tie_break)]
    return order.index(trial) < math.ceil(Fraction(len(ids)) / Fraction(str(rf)))


class ReferenceRungs(Rungs):
    def goes_on(self, rung: int, trial: int) -> bool:
        return reference_goes_on(self.recorded[rung], trial, self.objectives, self.tie_break, self.reduction_factor,
                                 self.floor)


MO2 = [(VAL_ACC, MAXIMIZE), (PARAMS, MINIMIZE)]


def tricky_report(rng: np.random.Generator, pool: list) -> tuple[list[float], dict[str, float]]:
    """A curve and fixed values with the ties a search makes: val_acc on a coarse grid (31 values), repeated
    architectures (identical params and MACs), the same MACs at other params, repeated whole vectors, NaN and inf."""
    u = rng.uniform()
    if u < 0.1 and pool:
        curve, fixed = pool[int(rng.integers(len(pool)))]           # a duplicate of an earlier report
        return list(curve), dict(fixed)
    params = float(rng.choice([1e4, 2e4, 5e4, 1e5])) if u < 0.4 else float(rng.integers(1_000, 200_000))
    macs = float(rng.choice([1e6, 5e6])) if u > 0.85 else params * float(rng.integers(50, 400))
    acc = [int(rng.integers(15, 46)) / 50 for _ in range(3)]        # 0.30, 0.32, …, 0.90
    if rng.uniform() < 0.04:
        acc[int(rng.integers(3))] = float(rng.choice([np.nan, np.inf, -np.inf]))
    if rng.uniform() < 0.01:
        params = math.inf
    pool.append((acc, {PARAMS: params, MACS: macs}))
    return acc, {PARAMS: params, MACS: macs}


@pytest.mark.parametrize("floor", [None, 0.5], ids=["no-floor", "floor"])
@pytest.mark.parametrize("objectives", [SO, MO2, MO], ids=["1obj", "2obj", "3obj"])
@pytest.mark.parametrize("tie_break", ["crowding", "epsilon"])
def test_incremental_decisions_equal_rank_order_on_the_whole_rung(objectives, tie_break, floor):
    rf = (2, 3, 2.3)[(2 * len(objectives) + (tie_break == "epsilon")) % 3]    # each rf with two objective sets
    rng = np.random.default_rng([len(objectives), tie_break == "epsilon"])
    ours = Rungs([1], rf, objectives, tie_break, floor)
    ref, pool = ReferenceRungs([1], rf, objectives, tie_break, floor), []
    decisions = []
    for t in rng.permutation(600)[:250].tolist():                       # trial numbers arrive out of order
        curve, fixed = tricky_report(rng, pool)
        decisions.append(ref.on_report(t, curve, fixed))
        assert ours.on_report(t, curve, fixed) == decisions[-1], (t, len(ours.recorded[1]))
    assert ours.recorded == ref.recorded
    assert 0 < sum(decisions) < len(decisions)


@pytest.mark.parametrize("objectives, rf, tie_break, floor",
                         [(SO, 2.3, "crowding", None), (MO2, 2, "epsilon", 0.6), (MO, 3, "crowding", 0.5)],
                         ids=["1obj", "2obj-floor", "3obj-floor"])
def test_rebuild_direct_writes_and_reports_interleaved_decide_as_rank_order(objectives, rf, tie_break, floor):
    """recorded is the source of truth: rebuild(), and writes to recorded behind the scheduler's back (new
    trials, overwritten vectors, deleted ones), between reports; every decision and any goes_on as rank_order."""
    rng = np.random.default_rng(len(objectives))
    ours, pool = Rungs([1, 2], rf, objectives, tie_break, floor), []
    ref = ReferenceRungs([1, 2], rf, objectives, tie_break, floor)
    trials = iter(rng.permutation(2000).tolist())
    for step in range(120):
        u = rng.uniform()
        if u < 0.1:
            batch = [(next(trials), *tricky_report(rng, pool)) for _ in range(int(rng.integers(1, 25)))]
            ours.rebuild(batch)
            ref.rebuild(batch)
        elif u < 0.16 and ours.recorded[1]:
            t = int(rng.choice(list(ours.recorded[1])))
            if rng.uniform() < 0.5:
                del ours.recorded[1][t], ref.recorded[1][t]
            else:
                curve, fixed = tricky_report(rng, pool)
                ours.recorded[1][t] = ref.recorded[1][t] = ours.vector(curve, 1, fixed)
        elif u < 0.2:
            t, (curve, fixed) = next(trials), tricky_report(rng, pool)
            ours.recorded[2][t] = ref.recorded[2][t] = ours.vector(curve, 2, fixed)
        else:
            t, (curve, fixed) = next(trials), tricky_report(rng, pool)
            curve = curve[:int(rng.integers(1, 4))]
            assert ours.on_report(t, curve, fixed) == ref.on_report(t, curve, fixed), step
        rung = 1 + step % 2
        if ours.recorded[rung]:
            t = int(rng.choice(list(ours.recorded[rung])))            # any recorded trial, not only an arrival
            assert ours.goes_on(rung, t) == ref.goes_on(rung, t), (step, rung, t)
    assert ours.recorded == ref.recorded and len(ours.recorded[1]) > 100


def test_the_number_kept_is_the_exact_ceiling_of_n_over_rf():
    # 69 / 2.3 is 30 exactly; in floating point it is 30.000000000000004, whose ceiling kept 31.
    assert 69 / 2.3 > 30
    r = Rungs([1], 2.3, SO)
    r.recorded[1].update({t: (1.0 - t / 100,) for t in range(69)})     # trial t is t-th best
    assert [r.goes_on(1, t) for t in (29, 30)] == [True, False]
    r = Rungs([1], 2, SO)
    r.recorded[1].update({t: (1.0 - t / 100,) for t in range(9)})
    assert [r.goes_on(1, t) for t in (4, 5)] == [True, False]          # ⌈9 / 2⌉ = 5
