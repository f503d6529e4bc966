"""What a study says: PED-ANOVA importance over the COMPLETE full-budget trials, and the seed recipe against the
best trial of similar size, on hand-made studies whose answers are known by construction."""

from __future__ import annotations

import math

import numpy as np
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial

from dsearch.analysis.findings import compare_seeds, seed_line, seeds_json, study_says_lines
from dsearch.analysis.importance import Importance, compute_importance, importance_json, importance_lines, top_trials
from dsearch.metrics import DEFAULT_OBJECTIVES as OBJECTIVES
from dsearch.search.record import fail_interrupted, tell_failed
from studies import new_study

DISTRIBUTIONS = {
    "model.growth_rate": IntDistribution(8, 48),
    "train.lr": FloatDistribution(0.01, 0.3, log=True),
    "train.lr_schedule": CategoricalDistribution(["step", "cosine"]),
    "train.weight_decay": FloatDistribution(1e-5, 1e-3, log=True),
}
FULL = {"epochs_trained": 10, "max_epochs": 10}
MACS = 10_000_000


def val_acc_of(lr: float) -> float:
    """val_acc set by the learning rate alone: 0.95 at lr 0.05, 0.1 less per decade away from it."""
    return 0.95 - 0.1 * abs(math.log10(lr / 0.05))


def params_of(growth_rate: int) -> int:
    """The parameter count set by the growth rate alone (∝ k², as a DenseNet's)."""
    return 1000 * growth_rate**2


def draw(rng: np.random.Generator) -> dict:
    """One sample of the four hyperparameters, uniform (log-uniform for lr and weight decay)."""
    return {"model.growth_rate": int(rng.integers(8, 49)), "train.lr": float(10 ** rng.uniform(-2, math.log10(0.3))),
            "train.lr_schedule": str(rng.choice(["step", "cosine"])),
            "train.weight_decay": float(10 ** rng.uniform(-5, -3))}


def add(study, hyper: dict, state: str = "COMPLETE", values=None, attrs: dict | None = None) -> None:
    """A trial recorded as `dsearch run` does: values only when COMPLETE, last_* attrs otherwise."""
    study.add_trial(create_trial(state=TrialState[state], values=values if state == "COMPLETE" else None,
                                 params=hyper, distributions=DISTRIBUTIONS, user_attrs={**FULL, **(attrs or {})}))


def add_known(study, params: dict, macs: float = MACS) -> None:
    """A full-budget trial whose val_acc is val_acc_of(lr) and params params_of(growth_rate); the rest is noise."""
    add(study, params, values=[val_acc_of(params["train.lr"]), params_of(params["model.growth_rate"]), macs])


def known_study(n: int, seed: int = 0, macs=lambda i: MACS):
    study = new_study()
    rng = np.random.default_rng(seed)
    for i in range(n):
        add_known(study, draw(rng), macs(i))
    return study


def add_crazy_partials(study, n: int, seed: int = 1) -> None:
    """Trials that must not count: PRUNED with wild last values, FAIL (rejected, error), COMPLETE short of
    the budget. Their val_acc is set by the weight decay, their params by the learning rate and their MACs
    vary: entered, they would change every objective's answer."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        p = draw(rng)
        wild = {"last_val_acc": 0.5 - 0.1 * math.log10(p["train.weight_decay"]),
                "last_params": 1e7 * p["train.lr"], "last_macs": float(i)}
        add(study, p, "PRUNED", attrs={**wild, "epochs_trained": 3})
        add(study, p, "FAIL", attrs={"fail_reason": ("invalid", "over_budget", "error")[i % 3],
                                     "params": wild["last_params"]})
    add(study, draw(rng), values=[0.99, 1, 1], attrs={"epochs_trained": 3})  # COMPLETE, but 3 of 10 epochs


# --- importance -------------------------------------------------------------------------------

def test_top_trials_are_at_least_five_and_a_tenth_of_the_study():
    assert [top_trials(n) for n in (10, 12, 49, 50, 51, 100, 333)] == [5, 5, 5, 5, 6, 10, 34]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_hyperparameter_that_sets_an_objective_has_the_largest_importance(seed):
    importance = compute_importance(known_study(20, seed), OBJECTIVES)
    assert (importance.trials, importance.top) == (20, 5)
    val_acc, params, macs = importance.objectives
    assert val_acc.shares[0][0] == "train.lr" and val_acc.shares[0][1] > 0.5
    assert params.shares[0][0] == "model.growth_rate" and params.shares[0][1] > 0.5
    for o in (val_acc, params):
        assert sum(v for _, v in o.shares) == pytest.approx(1.0)
        assert sorted(k for k, _ in o.shares) == sorted(DISTRIBUTIONS)
        assert [v for _, v in o.shares] == sorted((v for _, v in o.shares), reverse=True)
    assert macs == Importance("macs", "minimize", (), constant=True)


def test_importance_is_deterministic():
    assert compute_importance(known_study(15), OBJECTIVES) == compute_importance(known_study(15), OBJECTIVES)


def test_pruned_failed_rejected_and_short_trials_do_not_enter():
    clean = compute_importance(known_study(12), OBJECTIVES)
    noisy = known_study(12)
    add_crazy_partials(noisy, 40)
    assert compute_importance(noisy, OBJECTIVES) == clean
    assert clean.trials == 12


def test_fewer_than_ten_complete_trials_is_the_na_line():
    study = known_study(9)
    add_crazy_partials(study, 10)   # 41 trials, 9 of them COMPLETE at the full budget
    importance = compute_importance(study, OBJECTIVES)
    assert (importance.trials, importance.objectives, importance.available) == (9, (), False)
    assert importance_lines(importance) == ["importance: n/a (needs ≥ 10 COMPLETE trials, this study has 9)"]
    assert importance_json(importance) == {"method": "PED-ANOVA", "trials": 9, "needs": 10, "top_trials": None,
                                           "objectives": None}


def test_lines_and_json_name_every_hyperparameter_and_the_constant_objective():
    importance = compute_importance(known_study(12), OBJECTIVES)
    lines = importance_lines(importance)
    assert lines[0] == ("importance (PED-ANOVA over 12 COMPLETE full-budget trials: how the top 5 of each "
                        "objective differ from all; shares sum to 1):")
    val_acc = importance.objectives[0]
    assert lines[1] == "  val_acc: " + ", ".join(f"{k} {v:.2f}" for k, v in val_acc.shares)
    assert lines[1].startswith("  val_acc: train.lr ") and lines[2].startswith("  params: model.growth_rate ")
    assert lines[3] == "  macs: constant (the same in all 12 trials)"
    summary = importance_json(importance)
    assert summary["trials"] == 12 and summary["top_trials"] == 5 and summary["objectives"]["macs"] == "constant"
    assert summary["objectives"]["val_acc"] == dict(val_acc.shares)


def test_only_the_chosen_objectives_are_measured():
    importance = compute_importance(known_study(12), OBJECTIVES[:2])
    assert [o.metric for o in importance.objectives] == ["val_acc", "params"]


# --- the seed recipe against the best trial at similar params --------------------------------------

SEED = {"model.growth_rate": 12, "train.lr": 0.1, "train.lr_schedule": "step", "train.weight_decay": 1e-4}


def add_seed(study, state: str = "COMPLETE", values=(0.91, 100_000, MACS), **attrs):
    """The space's seed trial, as create_or_load enqueues it and the searcher asks and tells it."""
    study.enqueue_trial(SEED)
    trial = study.ask(DISTRIBUTIONS)
    for key, value in {**FULL, **attrs}.items():
        trial.set_user_attr(key, value)
    if state == "FAIL":
        tell_failed(study, trial, attrs.get("fail_reason", "error"), "rejected before training")
    elif state == "RUNNING":
        return trial
    else:
        study.tell(trial, list(values) if state == "COMPLETE" else None, state=TrialState[state])
    return trial


def add_neighbours(study) -> None:
    """Trial 1 is the best within ±10 % of the seed's 100,000 params; 3 is better but 50 % larger; 4 and 5
    are close in size but not full-budget."""
    add(study, {**SEED, "train.lr": 0.042, "train.lr_schedule": "cosine"}, values=[0.93, 104_000, MACS])
    add(study, {**SEED, "model.growth_rate": 13, "train.lr": 0.05}, values=[0.925, 109_000, MACS])
    add(study, {**SEED, "model.growth_rate": 16}, values=[0.96, 150_000, MACS])
    add(study, {**SEED, "train.lr": 0.2}, "PRUNED", attrs={"last_val_acc": 0.99, "last_params": 100_000,
                                                           "epochs_trained": 3})
    add(study, {**SEED, "train.lr": 0.3}, "FAIL", attrs={"fail_reason": "over_budget", "params": 101_000})


def test_seed_against_the_best_full_budget_trial_within_ten_percent_of_its_params():
    study = new_study()
    add_seed(study)
    add_neighbours(study)
    (comparison,) = compare_seeds(study)
    assert (comparison.seed.number, comparison.match.number) == (0, 1)
    assert comparison.window == pytest.approx((90_000, 110_000))
    assert seed_line(comparison) == (
        "seed trial 0: val_acc 0.9100 at epoch 10 (100,000 params); best full-budget trial within ±10% of its "
        "params: trial 1, val_acc 0.9300 at epoch 10 (104,000 params), +0.0200; it differs in train.lr 0.1 → "
        "0.042, train.lr_schedule step → cosine")
    (entry,) = seeds_json(compare_seeds(study))
    assert entry["params"] == 100_000 and entry["best_similar"]["trial"] == 1
    assert entry["best_similar"]["val_acc_difference"] == pytest.approx(0.02)
    assert entry["best_similar"]["changed"] == {"train.lr": [0.1, 0.042], "train.lr_schedule": ["step", "cosine"]}


def test_a_seed_better_than_its_neighbours_shows_a_negative_difference():
    study = new_study()
    add_seed(study, values=(0.95, 100_000, MACS))
    add(study, {**SEED, "model.growth_rate": 13, "train.lr": 0.05}, values=[0.925, 109_000, MACS])
    assert seed_line(compare_seeds(study)[0]).endswith(
        "trial 1, val_acc 0.9250 at epoch 10 (109,000 params), -0.0250; it differs in model.growth_rate 12 → 13, "
        "train.lr 0.1 → 0.05")


def test_no_trial_at_similar_params():
    study = new_study()
    add_seed(study)
    add(study, {**SEED, "model.growth_rate": 16}, values=[0.96, 150_000, MACS])
    add(study, {**SEED, "model.growth_rate": 8}, values=[0.80, 89_999, MACS])
    (comparison,) = compare_seeds(study)
    assert comparison.match is None
    assert seed_line(comparison) == ("seed trial 0: val_acc 0.9100 at epoch 10 (100,000 params); no other "
                                     "full-budget trial within ±10% of its params (90,000–110,000)")


@pytest.mark.parametrize("state, attrs, text", [
    ("PRUNED", {"epochs_trained": 3, "last_val_acc": 0.61, "last_params": 100_000},
     "seed trial 0: PRUNED after 3 of 10 epochs (val_acc 0.6100 there) — not COMPLETE at the full budget, "
     "nothing to compare"),
    ("FAIL", {"fail_reason": "over_budget"},
     "seed trial 0: FAIL (over_budget) — not COMPLETE at the full budget, nothing to compare"),
    ("RUNNING", {"epochs_trained": 4},
     "seed trial 0: RUNNING after 4 of 10 epochs — not COMPLETE at the full budget, nothing to compare"),
])
def test_a_seed_that_is_not_complete_says_so(state, attrs, text):
    study = new_study()
    add_seed(study, state, **attrs)
    add_neighbours(study)
    (comparison,) = compare_seeds(study)
    assert (comparison.full_budget, comparison.match) == (False, None)
    assert seed_line(comparison) == text


def test_an_interrupted_seed_is_followed_to_its_requeued_trial():
    study = new_study()
    add_seed(study, "RUNNING")
    assert fail_interrupted(study) == [0]        # the driver died: trial 0 FAIL(interrupted), params queued again
    trial = study.ask(DISTRIBUTIONS)
    for key, value in FULL.items():
        trial.set_user_attr(key, value)
    study.tell(trial, [0.91, 100_000, MACS])
    add(study, {**SEED, "train.lr": 0.042, "train.lr_schedule": "cosine"}, values=[0.93, 104_000, MACS])
    (comparison,) = compare_seeds(study)
    assert (comparison.seed.number, comparison.seed.state, comparison.match.number) == (1, "COMPLETE", 2)


def test_several_seeds_give_one_line_each_and_none_says_so():
    study = new_study()
    add_seed(study)
    study.enqueue_trial({**SEED, "model.growth_rate": 24})
    trial = study.ask(DISTRIBUTIONS)
    for key, value in FULL.items():
        trial.set_user_attr(key, value)
    study.tell(trial, [0.94, 400_000, MACS])
    add_neighbours(study)
    lines = study_says_lines(compare_seeds(study), compute_importance(study, OBJECTIVES))
    assert lines[0] == "what the study says:"
    assert lines[1].startswith("  seed trial 0: val_acc 0.9100 at epoch 10 (100,000 params); best full-budget "
                               "trial within ±10% of its params: trial 2,")
    assert lines[2] == ("  seed trial 1: val_acc 0.9400 at epoch 10 (400,000 params); no other full-budget trial "
                        "within ±10% of its params (360,000–440,000)")
    assert lines[3] == "  importance: n/a (needs ≥ 10 COMPLETE trials, this study has 5)"
    assert len(lines) == 4
    assert study_says_lines((), compute_importance(new_study(), OBJECTIVES)) == [
        "what the study says:", "  no seed trial (a space's seed_trials are queued first)",
        "  importance: n/a (needs ≥ 10 COMPLETE trials, this study has 0)"]


def test_what_the_study_says_names_the_top_three_per_objective():
    study = known_study(12)
    importance = compute_importance(study, OBJECTIVES)
    lines = study_says_lines(compare_seeds(study), importance)
    val_acc, params, _ = importance.objectives
    assert lines[2] == "  what matters for val_acc: " + ", ".join(f"{k} {v:.2f}" for k, v in val_acc.shares[:3])
    assert lines[3] == "  what matters for params: " + ", ".join(f"{k} {v:.2f}" for k, v in params.shares[:3])
    assert lines[4] == "  macs: constant over the COMPLETE trials"


def test_trials_a_sampler_queued_are_not_seed_trials():
    """EHVI and a grid queue their picks with enqueue_trial, as seed trials are queued; their `proposed_by`
    keeps them out of the seed comparison (a quickstart under EHVI once listed every pick as a seed)."""
    from dsearch.search.record import PROPOSED_BY

    study = new_study()
    add_seed(study)
    for who in ("ehvi", "grid"):
        study.enqueue_trial({**SEED, "model.growth_rate": 24}, user_attrs={PROPOSED_BY: who})
        trial = study.ask(DISTRIBUTIONS)
        for key, value in FULL.items():
            trial.set_user_attr(key, value)
        study.tell(trial, [0.94, 400_000, MACS])
    assert [c.seed.number for c in compare_seeds(study)] == [0]
