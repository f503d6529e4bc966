"""The cost-aware EHVI proposer: the closed form against Monte Carlo and by hand, the GP, and the proposer's
choices on small finite spaces in an in-memory study (what it never repeats, what it respects, where it looks)."""

import math

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState, create_trial
from scipy.stats import norm

from dsearch.analysis.pareto import hypervolume
from dsearch.net.cost import count_macs, count_params
from dsearch.search.ehvi import CostAwareProposer, default_theta, ehvi, fit_gp, supports
from dsearch.search.io import parse_space
from dsearch.search.methods import optuna_distributions
from dsearch.search.record import new_study
from dsearch.search.sampling import input_size, resolve, suggest
from dsearch.search.table import config_key

SPACE = """
name: ehvi
data: {name: fashion_mnist, augment: true, val_size: 1000, train_subset: 1200}
OBJECTIVES
budget: {max_epochs: 4, num_samples: 40, rungs: []SCHEDULER}
sampler: {type: random, seed: 0}
fixed: {model.variant: densenet-bc, train.batch_size: 64}
params:
  model.depth: {type: int, low: 10, high: DEPTH, step: 6}
  model.growth_rate: {type: int, low: 4, high: GROWTH, step: 2}
  train.lr: {type: categorical, choices: [0.05, 0.1, 0.2]}
"""


def space(objectives="", depth=22, growth=8, scheduler=""):
    text = SPACE.replace("OBJECTIVES", objectives).replace("SCHEDULER", scheduler).replace("DEPTH", str(depth)).replace("GROWTH", str(growth))
    return parse_space(text, "ehvi.yaml")


def study_of(s):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return new_study(s, optuna.storages.InMemoryStorage(), optuna.samplers.RandomSampler(seed=0))


def costs(s, params):
    run = resolve(s, params)
    return count_params(run.model), count_macs(run.model, input_size(run.data))


def ask(proposer, study, s):
    """A trial asked as the engine asks it: the proposer's trial, its params suggested (the queued ones)."""
    trial = proposer.ask(study)
    suggest(s, trial)
    return trial


def add_complete(study, s, params, acc):
    """A COMPLETE trial of these params (Optuna's form) with val_acc `acc` and its closed-form costs."""
    p, m = costs(s, params)
    study.add_trial(create_trial(params=params, distributions={k: optuna_distributions(s)[k] for k in params},
                                 values=[acc, p, m], state=TrialState.COMPLETE))


# --- the closed form ------------------------------------------------------------------------------------

def exact_hvi(a, cost, front_acc, front_cost, ref):
    """HVI of the point (a, cost) over the front, by dsearch's general hypervolume (accuracy max, costs min)."""
    directions = ["maximize"] + ["minimize"] * len(cost)
    front = np.column_stack([front_acc, front_cost])
    return hypervolume(np.vstack([front, [a, *cost]]), directions, ref) - hypervolume(front, directions, ref)


@pytest.mark.parametrize("dims", [0, 1, 2])
def test_ehvi_matches_a_monte_carlo_estimate_of_the_hypervolume_improvement(dims):
    front_acc = np.array([0.3, 0.5, 0.7, 0.8])
    front_cost = np.array([[0.1, 0.8], [0.3, 0.5], [0.6, 0.4], [0.8, 0.1]])[:, :dims]
    ref = np.array([0.0] + [1.1] * dims)
    rng = np.random.default_rng(0)
    for mu, sigma, cost in [(0.55, 0.15, [0.2, 0.45]), (0.75, 0.1, [0.5, 0.2]), (0.4, 0.3, [0.05, 0.9])]:
        cost = np.array(cost[:dims])
        draws = rng.normal(mu, sigma, 100_000)
        # HVI(a) is continuous and piecewise linear in a: exact on a fine grid, interpolated between.
        grid = np.linspace(ref[0], draws.max(), 601)
        hvi = np.array([exact_hvi(a, cost, front_acc, front_cost, ref) for a in grid])
        estimate = np.interp(np.maximum(draws, ref[0]), grid, hvi).mean()
        closed = ehvi([mu], [sigma], cost[None, :], front_acc, front_cost, ref)[0]
        assert estimate > 1e-3 and closed == pytest.approx(estimate, rel=0.02)


def test_without_costs_ehvi_is_the_expected_improvement_over_the_best_accuracy():
    mu, sigma = np.array([0.5, 0.8, 0.95]), np.array([0.1, 0.05, 0.2])
    z = (mu - 0.9) / sigma
    expected = (mu - 0.9) * norm.cdf(z) + sigma * norm.pdf(z)
    got = ehvi(mu, sigma, np.zeros((3, 0)), [0.6, 0.9, 0.7], np.zeros((3, 0)), [0.0])
    assert got == pytest.approx(expected, rel=1e-9)


def test_a_candidate_dominated_in_cost_by_a_far_better_point_gains_nothing():
    got = ehvi([0.3], [1e-3], [[0.5, 0.6]], [0.9], [[0.4, 0.5]], [0.0, 1.1, 1.1])
    assert got[0] < 1e-12


def test_with_sigma_near_zero_ehvi_is_the_exact_improvement_computed_by_hand():
    # Front: one point, accuracy 0.8 at costs (0.5, 0.5); reference (0, 1, 1).
    # (a) a = 0.6 at (0.2, 0.7): the front point dominates every level up to 0.6; the box [0.2, 1] × [0.7, 1]
    #     (0.24) less its part [0.5, 1] × [0.7, 1] (0.15) leaves 0.09, over 0.6 of accuracy: 0.054.
    # (b) a = 0.9 at (0.6, 0.6): the box [0.6, 1]² (0.16) is dominated up to 0.8, free above: 0.16 × 0.1 = 0.016.
    got = ehvi([0.6, 0.9], [1e-9, 1e-9], [[0.2, 0.7], [0.6, 0.6]], [0.8], [[0.5, 0.5]], [0.0, 1.0, 1.0])
    assert got == pytest.approx([0.054, 0.016], abs=1e-9)


# --- the Gaussian process -------------------------------------------------------------------------------

def test_the_gp_interpolates_noise_free_points_and_is_unsure_far_from_them():
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 1, (12, 2))
    y = np.sin(3 * x[:, 0]) + x[:, 1] ** 2
    y = (y - y.mean()) / y.std()
    gp = fit_gp(x, y, [default_theta(2)])
    mu, sd = gp.predict(x)
    assert mu == pytest.approx(y, abs=0.02) and sd.max() < 0.05
    far_mu, far_sd = gp.predict(np.array([[4.0, 4.0]]))
    assert far_sd[0] > 0.5 and far_sd[0] > 10 * sd.max()


# --- the proposer ---------------------------------------------------------------------------------------

def toy_acc(s, params):
    """A made-up val_acc: deeper and wider is better, lr 0.1 best."""
    return 0.6 + 0.02 * params["model.depth"] / 6 + 0.01 * params["model.growth_rate"] - abs(params["train.lr"] - 0.1)


def test_asks_never_repeat_a_configuration_while_unseen_ones_remain():
    s = space()                                                   # 3 depths × 3 growths × 3 lrs = 27
    study = study_of(s)
    proposer = CostAwareProposer(s, seed=0)
    seen = []
    for _ in range(27):
        trial = ask(proposer, study, s)
        seen.append(config_key(trial.params))
        study.tell(trial, [toy_acc(s, trial.params), *costs(s, trial.params)])
    assert len(set(seen)) == 27
    again = ask(proposer, study, s)                                   # every configuration taken: repeats allowed
    assert config_key(again.params) in seen


def test_the_same_seed_and_history_give_the_same_proposal():
    s = space()
    study = study_of(s)
    for depth, growth, lr in [(10, 4, 0.05), (22, 8, 0.2), (16, 6, 0.1), (10, 8, 0.1), (22, 4, 0.05)]:
        params = {"model.depth": depth, "model.growth_rate": growth, "train.lr": lr}
        add_complete(study, s, params, toy_acc(s, params))
    trials = study.get_trials(deepcopy=False)
    first = [CostAwareProposer(s, seed=7).choose(trials) for _ in range(2)]
    assert first[0] == first[1]
    a, b = CostAwareProposer(s, seed=7), CostAwareProposer(s, seed=7)
    assert [a.choose(trials) for _ in range(3)] == [b.choose(trials) for _ in range(3)]


def test_a_params_constraint_is_respected():
    limit = 20_000
    s = space(objectives=f"constraints: {{max_params: {limit}}}")
    within = {(d, g) for d in (10, 16, 22) for g in (4, 6, 8)
              if costs(s, {"model.depth": d, "model.growth_rate": g, "train.lr": 0.1})[0] <= limit}
    assert 0 < len(within) < 9
    study = study_of(s)
    proposer = CostAwareProposer(s, seed=1)
    asked = []
    for _ in range(3 * len(within)):
        trial = ask(proposer, study, s)
        asked.append(trial.params)
        study.tell(trial, [toy_acc(s, trial.params), *costs(s, trial.params)])
    assert {(p["model.depth"], p["model.growth_rate"]) for p in asked} == within
    assert len({config_key(p) for p in asked}) == len(asked)      # each feasible configuration once


def test_after_the_initial_design_it_looks_at_the_ends_of_the_front_not_inside_it():
    # Depths 10..40 (1..6 layers per block), growth 4, three lrs; val_acc = 0.6 + 0.05 × layers per block,
    # whatever the lr, so the costs and the accuracy of a configuration follow from its depth alone.
    # Observed: depths 16, 22, 28 at lr 0.05 and 0.2 (two equal values per depth: lr makes no difference).
    # Left: lr 0.1 at those depths, and depths 10, 34, 40 at any lr. An inside candidate has exactly the cost
    # of two observed points and, lr having shown no effect, a posterior close to their accuracy: it can add
    # volume only if it beats that accuracy, which the GP gives little chance (σ ≪ the gap 0.05 to the next
    # depth). Depth 10 is cheaper than everything observed (any accuracy above the reference adds the slice
    # between its costs and depth 16's), depths 34 and 40 are costlier but unexplored (σ large), so EHVI is
    # largest at an end.
    s = space(depth=40, growth=4)
    study = study_of(s)
    acc = lambda depth: 0.6 + 0.05 * (depth - 4) / 6
    for depth in (16, 22, 28):
        for lr in (0.05, 0.2):
            add_complete(study, s, {"model.depth": depth, "model.growth_rate": 4, "train.lr": lr}, acc(depth))
    proposer = CostAwareProposer(s, seed=0)
    assert proposer.n_init <= 6                                   # past the initial design
    choice = proposer.choose(study.get_trials(deepcopy=False))
    assert choice["model.depth"] in (10, 34, 40)


def test_supports_one_trained_objective_with_any_costs():
    both = "objectives: [{metric: val_acc, direction: maximize}, {metric: val_loss, direction: minimize}]"
    alone = "objectives: [{metric: val_acc, direction: maximize}]"
    asha = ", scheduler: asha"                                    # moasha can't rank on val_loss
    assert supports(space(objectives=both, scheduler=asha)) == "two trained objectives"
    assert supports(space()) is None                              # val_acc, params, macs
    assert supports(space(objectives=alone)) is None
    with pytest.raises(Exception, match="two trained objectives"):
        CostAwareProposer(space(objectives=both, scheduler=asha), seed=0)


def test_a_space_ehvi_cannot_search_defaults_to_tpe_and_naming_ehvi_is_refused_before_any_trial():
    """One definition (SearchSpace.ehvi_refusal) serves the proposer, the default sampler and the space's rules:
    maximised params get TPE by default, and `type: ehvi` is a one-line space error, not a failure at the run."""
    from dsearch.errors import UserError

    maxp = "objectives: [{metric: val_acc, direction: maximize}, {metric: params, direction: maximize}]"
    s = space(objectives=maxp)
    assert supports(s) == "params is maximised (costs are minimised)"
    assert s.model_copy(update={"sampler": s.sampler.model_copy(update={"type": None})}).sampler_type == "tpe"
    text = SPACE.replace("OBJECTIVES", maxp).replace("SCHEDULER", "").replace("DEPTH", "22").replace("GROWTH", "8")
    with pytest.raises(UserError, match=r"sampler.type: ehvi .* this space has params is maximised"):
        parse_space(text.replace("type: random", "type: ehvi"), "ehvi.yaml")


def test_pruned_trials_count_with_the_typical_gain_to_come_and_errors_at_the_worst_value():
    s = space()
    study = study_of(s)
    dists = optuna_distributions(s)
    base = {"model.growth_rate": 4, "train.lr": 0.1}
    for depth, curve in [(10, [0.5, 0.6, 0.7, 0.8]), (16, [0.6, 0.7, 0.75, 0.9])]:
        params = {"model.depth": depth, **base}
        study.add_trial(create_trial(params=params, distributions={k: dists[k] for k in params},
                                     values=[curve[-1], *costs(s, params)], state=TrialState.COMPLETE,
                                     user_attrs={"curve": curve}))
    pruned = {"model.depth": 22, **base}
    study.add_trial(create_trial(params=pruned, distributions={k: dists[k] for k in pruned},
                                 state=TrialState.PRUNED, user_attrs={"curve": [0.55, 0.6]}))
    failed = {"model.depth": 22, "model.growth_rate": 6, "train.lr": 0.1}
    for reason in ("error", "over_budget"):
        study.add_trial(create_trial(params=failed, distributions={k: dists[k] for k in failed},
                                     state=TrialState.FAIL, user_attrs={"fail_reason": reason}))
    h = CostAwareProposer(s, seed=0)._history(study.get_trials(deepcopy=False))
    # The pruned trial stopped at epoch 2: median gain from epoch 2 to the end is median(0.2, 0.2) = 0.2.
    assert h.values == pytest.approx([0.8, 0.9, 0.8, 0.8])
    assert h.on_front == [True, True, True, False] and len(h.tried) == 5
    assert not math.isnan(sum(h.values))


def test_memory_as_a_cost_objective_and_a_constraint():
    # val_acc ↑ and memory ↓ (a training step's predicted peak), under max_memory: the proposer prices memory
    # exactly, models it as a log-cost feature, and asks only for what fits (each feasible configuration once).
    from dsearch.search.pricing import price

    memory = lambda s, p: price(s, resolve(s, p)).memory                      # noqa: E731
    base = "objectives: [{metric: val_acc, direction: maximize}, {metric: memory, direction: minimize}]"
    probe = space(objectives=base)
    needs = sorted(memory(probe, {"model.depth": d, "model.growth_rate": g, "train.lr": 0.1})
                   for d in (10, 16, 22) for g in (4, 6, 8))
    limit = needs[4]
    s = space(objectives=base + f"\nconstraints: {{max_memory: {limit}}}")
    assert s.metrics == ["val_acc", "memory"] and supports(s) is None and s.sampler_type == "random"
    proposer = CostAwareProposer(s, seed=1)
    assert proposer.cost_metrics == ["params", "macs", "memory"] and proposer.costs == [2]
    within = {(d, g) for d in (10, 16, 22) for g in (4, 6, 8)
              if memory(s, {"model.depth": d, "model.growth_rate": g, "train.lr": 0.1}) <= limit}
    assert 4 <= len(within) < 9
    study = new_study(s, optuna.storages.InMemoryStorage(), optuna.samplers.RandomSampler(seed=0))
    asked = []
    for _ in range(3 * len(within)):
        trial = ask(proposer, study, s)
        asked.append(trial.params)
        study.tell(trial, [toy_acc(s, trial.params), memory(s, trial.params)])
    assert {(p["model.depth"], p["model.growth_rate"]) for p in asked} == within
    assert len({config_key(p) for p in asked}) == len(asked)
    # Three costs (params, MACs and memory) are more than its hypervolume handles: TPE by default.
    four = ("objectives: [{metric: val_acc, direction: maximize}, {metric: params, direction: minimize}, "
            "{metric: macs, direction: minimize}, {metric: memory, direction: minimize}]")
    assert supports(space(objectives=four)) == "three costs (params, macs, memory); it takes at most two"
    text = SPACE.replace("OBJECTIVES", four).replace("SCHEDULER", "").replace("DEPTH", "22").replace("GROWTH", "8")
    assert parse_space(text.replace("type: random, ", ""), "four.yaml").sampler_type == "tpe"
