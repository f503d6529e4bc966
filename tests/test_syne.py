"""The syne-moasha anchor: Syne Tune's own MOASHA driven as a dsearch rung rule, on synthetic streams.

Trials run one at a time (the arrival order at every rung is the trial order). The hand-made streams pin down
what Syne Tune 0.16.0's rule does with a rung: it reads the decision from the index of the rung's worst trial
(the ordering `nondominated_sort` returns, taken as scores), not from the new trial's own place; dsearch's
Rungs decide on the same streams as ASHA's rule says.
"""

import sys

import numpy as np
import pytest

syne_tune = pytest.importorskip("syne_tune")

from dsearch.metrics import MACS, PARAMS                     # noqa: E402
from dsearch.search.io import parse_space                    # noqa: E402
from dsearch.search.methods import moasha                    # noqa: E402
from dsearch.search.syne import SyneMOASHA                   # noqa: E402

from spaces import tiny_space                                # noqa: E402


def space(epochs=27, grace=1, rf=3):
    """val_acc ↑, params ↓, MACs ↓; dsearch's rungs at 1, 3, 9 (27 / 3 = 9 is the last with 9 × 3 ≤ 27)."""
    text = tiny_space(epochs=epochs, grace=grace, num=64, conc=1).replace("reduction_factor: 2",
                                                                          f"reduction_factor: {rf}")
    return parse_space(text)


def fixed(params, macs=None):
    return {PARAMS: float(params), MACS: float(params * 10 if macs is None else macs)}


def first_rung(rule, points):
    """Each (val_acc, params) reaches rung 1 in turn: the decisions."""
    return [rule.on_report(line, [acc], fixed(p)) for line, (acc, p) in enumerate(points)]


def run_stream(rule, trials, max_epochs):
    """Sequential trials (line, curve, fixed): the epoch each one stopped at (max_epochs: trained fully)."""
    ends = {}
    for line, curve, f in trials:
        ends[line] = max_epochs
        for epoch in range(1, max_epochs):          # the engine stops at max_epochs before asking the rule
            if not rule.on_report(line, curve[:epoch], f):
                ends[line] = epoch
                break
    return ends


def synthetic_trials(n, max_epochs, seed):
    rng = np.random.default_rng(seed)
    out = []
    for line in range(n):
        quality, params = rng.uniform(0.3, 0.95), rng.integers(10_000, 1_000_000)
        epochs = np.arange(1, max_epochs + 1)
        curve = quality * (1 - np.exp(-epochs / 4)) + rng.normal(0, 0.01, max_epochs)
        out.append((line, curve.tolist(), fixed(params, rng.integers(1, 100) * params)))
    return out


def test_version_and_rungs_are_syne_tunes_own():
    rule = SyneMOASHA(space(epochs=300, grace=10))
    assert syne_tune.__version__ == "0.16.0"
    # Syne Tune places rungs like Ray's ASHA, 270 included; dsearch stops at 90 (270 × 3 > 300)
    assert sorted(m for m, _ in rule.scheduler.brackets[0].rungs) == [10, 30, 90, 270]
    assert space(epochs=300, grace=10).budget.milestones == [10, 30, 90]
    assert rule.scheduler.metrics == ["val_acc", "params", "macs"] and rule.scheduler.do_minimize
    # maximised objectives are told negated: MOASHA has one do_minimize flag for every metric
    assert rule.result([0.5, 0.75], fixed(100, 2000)) == {"epoch": 2, "val_acc": -0.75, "params": 100.0,
                                                          "macs": 2000.0}


def test_some_trials_stop_at_rungs_and_some_train_fully():
    s = space()
    ends = run_stream(SyneMOASHA(s), synthetic_trials(40, 27, seed=0), 27)
    stops = [e for e in ends.values() if e < 27]
    assert 0 < len(stops) < len(ends)                             # it decides both ways
    assert set(stops) <= {1, 3, 9}                                # only at Syne Tune's rungs below max_epochs
    assert any(e == 27 for e in ends.values())


def test_the_rule_leaves_numpys_global_generator_alone():
    np.random.seed(7)
    expected = np.random.random()
    np.random.seed(7)
    run_stream(SyneMOASHA(space()), synthetic_trials(10, 27, seed=1), 27)
    assert np.random.random() == expected


def test_rebuild_decides_as_the_uninterrupted_run():
    s, trials = space(), synthetic_trials(30, 27, seed=2)
    whole = run_stream(SyneMOASHA(s), trials, 27)
    first = {line: end for line, end in whole.items() if line < 12}
    history = [(line, curve[:first[line]], f) for line, curve, f in trials[:12]]   # what the study holds
    resumed = SyneMOASHA(s)
    resumed.rebuild(history)
    assert run_stream(resumed, trials[12:], 27) == {k: v for k, v in whole.items() if k >= 12}


# --- the rank: what Syne Tune 0.16.0 does with a rung (DESIGN.md's trap) -----------------------------------------

WORSENING = [(0.9 - 0.1 * i, 100 + 10 * i) for i in range(6)]     # each arrival dominated by every earlier one


def test_syne_tune_0_16_can_stop_a_trial_that_dominates_its_whole_rung():
    s = space()
    dominator = (0.99, 10)                                          # better accuracy and smaller than all six
    syne = first_rung(SyneMOASHA(s), WORSENING + [dominator])
    ours = first_rung(moasha(s), WORSENING + [dominator])
    # the rung's worst trial arrived 6th of 7 (index 5): 5 / 7 > 1 / 3, so Syne Tune stops the new one, whoever it is
    assert syne[-1] is False, f"Syne Tune {syne_tune.__version__} no longer stops a rung's dominator: update syne.py"
    assert ours[-1] is True                                         # dsearch: a rung's dominator is never stopped
    assert syne[:6] == ours[:6] == [True] + [False] * 5             # dominated by all others: both stop it


def test_syne_tune_0_16_decides_from_where_the_worst_trial_arrived():
    s = space()
    improving = WORSENING[::-1]                                     # each arrival dominates every earlier one
    second_worst = (0.45, 145)                                      # dominated by all but the first arrival
    syne = first_rung(SyneMOASHA(s), improving + [second_worst])
    ours = first_rung(moasha(s), improving + [second_worst])
    assert syne == [True] * 7                # the worst is index 0 (0 ≤ n / 3): every trial goes on, 6th of 7 too
    assert ours[-1] is False                 # ASHA's rule: rank 6 of 7 is outside the top ⌈7 / 3⌉ = 3


def test_a_trial_dominated_by_its_whole_rung_is_stopped():
    # it is alone on the last front, so it is the last of the order: (n - 1) / n > 1 / rf whenever n ≥ 2, rf = 3
    rng = np.random.default_rng(3)
    for _ in range(20):
        rule, n = SyneMOASHA(space()), int(rng.integers(2, 12))
        points = [(rng.uniform(0.5, 0.9), rng.uniform(100, 1000)) for _ in range(n - 1)]
        worst = (min(a for a, _ in points) - 0.01, max(p for _, p in points) + 1)
        assert first_rung(rule, points + [worst])[-1] is False


def test_without_syne_tune_the_error_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "syne_tune.optimizer.schedulers.multiobjective.moasha", None)
    with pytest.raises(ImportError, match="pip install syne-tune"):
        SyneMOASHA(space())


def test_an_objective_it_is_not_told_is_refused():
    from dsearch.errors import UserError

    s = space()
    s = s.model_copy(update={"objectives": [*s.objectives, s.objectives[0].model_copy(
        update={"metric": "val_loss", "direction": "minimize"})]})
    with pytest.raises(UserError, match="val_loss"):
        SyneMOASHA(s)
