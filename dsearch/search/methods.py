"""Search methods by name: a sampler (or proposer) and a rung rule, for the engine to run on any executor.

A new rung rule or sampler is one function here and one entry in METHODS; `dsearch replay` then compares
it with every other method and the anchors. dsearch's own methods use its TPE (multivariate, constant
liar) and its rungs; the anchors are what users get when they wire the libraries by hand, each driven
through the library's own classes:

- `optuna-tpe`, `optuna-nsga2`, `optuna-gp`: multi-objective Optuna with its default sampler settings and no pruning
  (Optuna can't prune a multi-objective study), every trial to the full budget;
- `ray-asha-optunasearch`: Ray Tune's ASHAScheduler on val_acc with Ray's OptunaSearch (single-objective
  TPE on val_acc, told each trial's last report); the user's front is each trial's last report, partial-
  budget points included;
- `syne-moasha`: Syne Tune's multi-objective ASHA, where the package is installed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from ..metrics import EPOCH, MAXIMIZE, VAL_ACC
from ..ranking import CROWDING, EPSILON
from .engine import Proposer, RungRule, StudySampler, space_proposer, space_rungs
from . import record as st
from .record import make_sampler
from .rungs import Rungs

if TYPE_CHECKING:
    import optuna

    from .schema import SearchSpace

FULL, LAST = "full", "last"      # the front a user sees: full-budget trials, or every trial's last report


@dataclass(frozen=True)
class Method:
    """How one search method asks and prunes; `front` is what its user reads the front from."""

    name: str
    about: str
    sampler: Callable[["SearchSpace", int | None], "optuna.samplers.BaseSampler"]
    rule: Callable[["SearchSpace"], RungRule]
    proposer: Callable[["SearchSpace", int | None], Proposer] | None = None
    front: str = FULL
    by_default: bool = True      # in `dsearch replay`'s default set (False: slow, asked for by name)

    def make_proposer(self, space: "SearchSpace", seed: int | None) -> Proposer:
        return self.proposer(space, seed) if self.proposer is not None else StudySampler()


# --- rung rules -------------------------------------------------------------------------------------------

def pareto_rungs(space: "SearchSpace", at: list[int], tie_break: str, floor: float | None) -> Rungs:
    """Pareto-aware rungs on every objective at these epochs (with the chance floor, or none)."""
    return Rungs(at, space.budget.reduction_factor, [(o.metric, o.direction) for o in space.objectives], tie_break,
                 floor)


def moasha(space: "SearchSpace", tie_break: str = CROWDING) -> Rungs:
    """The Pareto-aware rungs of dsearch ≤ 0.1 on every objective: at grace · rf^k, no chance floor."""
    return pareto_rungs(space, space.budget.milestones, tie_break, None)


def asha(space: "SearchSpace") -> Rungs:
    """Rungs on val_acc alone (ASHA's rule: the top ⌈n / rf⌉) at grace · rf^k."""
    b = space.budget
    return Rungs(b.milestones, b.reduction_factor, [(VAL_ACC, MAXIMIZE)])


def floor_rungs(space: "SearchSpace") -> Rungs:
    """Pareto-aware rungs at grace · rf^k with the chance floor: the rule alone, without the placement."""
    return pareto_rungs(space, space.budget.milestones, space.budget.tie_break, space.chance_floor)


def signal_rungs(space: "SearchSpace") -> Rungs:
    """dsearch's rungs: one epoch after the first lr drop (`SearchSpace.milestones`), Pareto-aware, with the
    chance floor."""
    return pareto_rungs(space, space.milestones, space.budget.tie_break, space.chance_floor)


def no_rungs(space: "SearchSpace") -> Rungs:
    """Every trial trains to the full budget."""
    return Rungs([], space.budget.reduction_factor, [(VAL_ACC, MAXIMIZE)])


class _RayTrial:
    def __init__(self, trial_id: str) -> None:
        self.trial_id = trial_id


class RayASHA:
    """Ray Tune's own ASHAScheduler on val_acc, as a rung rule (its rungs at grace · rf^k below max_t)."""

    def __init__(self, space: "SearchSpace") -> None:
        from ray.tune.schedulers import ASHAScheduler, TrialScheduler

        b = space.budget
        grace = b.milestones[0] if b.milestones else b.max_epochs
        self.asha = ASHAScheduler(time_attr=EPOCH, metric=VAL_ACC, mode="max", max_t=b.max_epochs,
                                  grace_period=grace, reduction_factor=b.reduction_factor)
        self.go = TrialScheduler.CONTINUE
        self.trials: dict[int, _RayTrial] = {}

    def on_report(self, line: int, curve: list[float], fixed: dict[str, float]) -> bool:
        trial = self.trials.get(line)
        if trial is None:
            trial = self.trials[line] = _RayTrial(str(line))
            self.asha.on_trial_add(None, trial)
        return self.asha.on_trial_result(None, trial, {EPOCH: len(curve), VAL_ACC: curve[-1]}) == self.go

    def rebuild(self, trials: Any) -> None:
        for line, curve, fixed in trials:
            for epoch in range(1, len(curve) + 1):
                self.on_report(line, list(curve[:epoch]), fixed)


# --- proposers ----------------------------------------------------------------------------------------------

def optuna_distributions(space: "SearchSpace") -> dict:
    """The space's parameters as Optuna distributions (the same ranges, steps and log scales dsearch asks)."""
    import optuna.distributions as od

    from .sampling import encode_choice

    out = {}
    for key, p in space.params.items():
        if p.type == "int":
            out[key] = od.IntDistribution(p.low, p.high, step=p.step, log=p.log)
        elif p.type == "float":
            out[key] = od.FloatDistribution(p.low, p.high, step=p.step, log=p.log)
        else:
            out[key] = od.CategoricalDistribution([encode_choice(c) for c in p.choices])
    return out


class OptunaSearchProposer:
    """Ray Tune's OptunaSearch (single-objective TPE on val_acc, Optuna's defaults) proposes each trial; it is
    told each trial's last val_acc when the trial ends, a trial ASHA stopped included, as Tune tells it."""

    def __init__(self, space: "SearchSpace", seed: int | None) -> None:
        import optuna
        from ray.tune.search.optuna import OptunaSearch

        self.search = OptunaSearch(space=optuna_distributions(space), metric=VAL_ACC, mode="max",
                                   sampler=optuna.samplers.TPESampler(seed=seed))
        self.ids: dict[int, str] = {}

    def ask(self, study: "optuna.Study") -> "optuna.Trial":
        trial_id = f"t{len(self.ids)}"
        config = self.search.suggest(trial_id)
        study.enqueue_trial(config, user_attrs={st.PROPOSED_BY: "ray-optunasearch"})
        trial = study.ask()
        self.ids[trial.number] = trial_id
        return trial

    def told(self, number: int, state: str, metrics: dict[str, float]) -> None:
        trial_id = self.ids.get(number)
        if trial_id is None:
            return
        if state == "FAIL":
            self.search.on_trial_complete(trial_id, None, error=True)
        else:
            self.search.on_trial_complete(trial_id, {VAL_ACC: metrics[VAL_ACC]})


# --- samplers -----------------------------------------------------------------------------------------------

def dsearch_tpe(space: "SearchSpace", seed: int | None) -> "optuna.samplers.BaseSampler":
    return make_sampler("tpe", seed)


def random_sampler(space: "SearchSpace", seed: int | None) -> "optuna.samplers.BaseSampler":
    return make_sampler("random", seed)


def optuna_tpe(space: "SearchSpace", seed: int | None) -> "optuna.samplers.BaseSampler":
    import optuna

    return optuna.samplers.TPESampler(seed=seed)


def optuna_nsga2(space: "SearchSpace", seed: int | None) -> "optuna.samplers.BaseSampler":
    import optuna

    return optuna.samplers.NSGAIISampler(seed=seed)


def optuna_gp(space: "SearchSpace", seed: int | None) -> "optuna.samplers.BaseSampler":
    import optuna

    return optuna.samplers.GPSampler(seed=seed)


def _syne_moasha(space: "SearchSpace") -> RungRule:
    from .syne import SyneMOASHA

    return SyneMOASHA(space)


def space_sampler(space: "SearchSpace", seed: int | None) -> "optuna.samplers.BaseSampler":
    """The sampler the space names (a grid's points are not queued in a replay: random past them)."""
    return make_sampler(space.sampler_type, seed)


def ehvi_proposer(space: "SearchSpace", seed: int | None) -> Proposer:
    from .ehvi import CostAwareProposer

    return CostAwareProposer(space, seed)


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("space", "the space as written: its sampler and its scheduler (a study replayed on itself)",
           space_sampler, space_rungs, space_proposer),
    Method("dsearch", "EHVI on a GP of val_acc with exact params/MACs + a Pareto rung after the first lr drop, "
           "chance floor", random_sampler, signal_rungs, ehvi_proposer),
    Method("ehvi", "EHVI (GP on val_acc, exact params/MACs), every trial to the full budget", random_sampler,
           no_rungs, ehvi_proposer),
    Method("tpe-signal", "dsearch TPE + a Pareto rung after the first lr drop, chance floor", dsearch_tpe,
           signal_rungs),
    Method("moasha-floor", "dsearch TPE + Pareto rungs at grace · rf^k, chance floor", dsearch_tpe, floor_rungs),
    Method("moasha", "dsearch ≤ 0.1's default: TPE + Pareto-aware rungs (crowding) at grace · rf^k",
           dsearch_tpe, moasha),
    Method("moasha-epsilon", "dsearch TPE + Pareto-aware rungs (ε-net) at grace · rf^k", dsearch_tpe,
           lambda s: moasha(s, EPSILON)),
    Method("asha", "dsearch TPE + rungs on val_acc at grace · rf^k", dsearch_tpe, asha),
    Method("random", "random search, every trial to the full budget", random_sampler, no_rungs),
    Method("random-moasha", "random search + Pareto-aware rungs", random_sampler, moasha),
    Method("random-asha", "random search + rungs on val_acc", random_sampler, asha),
    Method("optuna-tpe", "Optuna's multi-objective TPE (defaults), no pruning", optuna_tpe, no_rungs),
    Method("optuna-nsga2", "Optuna's NSGA-II (defaults), no pruning", optuna_nsga2, no_rungs),
    Method("optuna-gp", "Optuna's GPSampler (defaults: a GP per objective, log EHVI), no pruning; about 1 s of "
           "driver time per trial, so only by name", optuna_gp, no_rungs, by_default=False),
    Method("ray-asha-optunasearch", "Ray Tune's ASHAScheduler + OptunaSearch on val_acc, by hand",
           random_sampler, RayASHA, OptunaSearchProposer, LAST),
    Method("syne-moasha", "Syne Tune's MOASHA (0.16) + random search, by hand (pip install 'dsearch[bench]')",
           random_sampler, _syne_moasha),
)}
TIME_BASE = "random"      # full-budget random search: the budgets are shares of its time for num_samples


def default_method(space: "SearchSpace") -> str:
    """The method `dsearch run` uses with dsearch's defaults for this space's objectives: `dsearch` where EHVI
    applies (two or more objectives, one trained), else the space's own sampler and rungs."""
    return "dsearch" if space.sampler_type == "ehvi" and space.scheduler == "moasha" else "space"


def unknown_methods(names: list[str]) -> list[str]:
    return [n for n in names if n not in METHODS]


def available() -> list[str]:
    """The methods whose libraries are installed (syne-moasha needs the optional syne-tune)."""
    import importlib.util

    return [n for n in METHODS if n != "syne-moasha" or importlib.util.find_spec("syne_tune") is not None]
