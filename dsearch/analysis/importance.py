"""Which hyperparameters matter for each objective: Optuna's PED-ANOVA over the COMPLETE full-budget trials.

Importance is Optuna's PED-ANOVA over the COMPLETE full-budget trials only (PRUNED, FAIL, rejected and
RUNNING trials never enter), one objective at a time. This is the one module of analysis/ that runs
Optuna's importance evaluator; the figure (search_figures.py), the summary (report.py) and "what the study
says" (findings.py, which also takes its full-budget trials from here) read the plain NamedTuples made here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from ..metrics import Objective
from ..search.record import EPOCHS_TRAINED, MAX_EPOCHS

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial

MIN_TRIALS = 10        # COMPLETE full-budget trials importance needs
# PED-ANOVA compares the parameter distribution of the top trials with that of all trials. Optuna's own
# note asks for at least 5 trials above the target quantile; its default 0.1 gives 1 of 10, a Parzen estimate
# of one point, which is noise. So the top is max(5, ⌈10 %⌉) of the trials: 5 of 10 (the better half of a
# small study), one in ten from 50 trials on.
TOP_TRIALS = 5
TOP_ONE_IN = 10
METHOD = "PED-ANOVA"


class Importance(NamedTuple):
    """One objective: (hyperparameter, share) pairs summing to 1, largest first.

    constant: the objective has one value over the trials (no importance to measure); shares empty and
    constant False: no hyperparameter's distribution differs between the top trials and all of them.
    """

    metric: str
    direction: str
    shares: tuple[tuple[str, float], ...]
    constant: bool = False


class StudyImportance(NamedTuple):
    """Importance per objective over `trials` COMPLETE full-budget trials; objectives empty below MIN_TRIALS."""

    trials: int
    top: int
    objectives: tuple[Importance, ...]

    @property
    def available(self) -> bool:
        return self.trials >= MIN_TRIALS


# --- reading the study --------------------------------------------------------------------------

def metric_names(study: "optuna.Study") -> list[str]:
    """The study's objective names (objective_0, … for a study made without metric names)."""
    return list(study.metric_names or [f"objective_{i}" for i in range(len(study.directions))])


def is_full_budget(trial: "FrozenTrial") -> bool:
    """COMPLETE, with finite values, trained to max_epochs (a COMPLETE trial lacking the attrs counts, as in
    report.prepare_frame: study.tell_finished makes COMPLETE only at the full budget)."""
    if trial.state.name != "COMPLETE" or trial.values is None:
        return False
    if not all(math.isfinite(v) for v in trial.values):
        return False
    epochs, budget = trial.user_attrs.get(EPOCHS_TRAINED), trial.user_attrs.get(MAX_EPOCHS)
    return epochs is None or budget is None or epochs >= budget


def full_budget_trials(study: "optuna.Study") -> list["FrozenTrial"]:
    """The COMPLETE full-budget trials, by number: what importance and the seed comparison are built from."""
    return [t for t in study.get_trials(deepcopy=False) if is_full_budget(t)]


# --- importance ---------------------------------------------------------------------------------

def top_trials(n: int) -> int:
    """How many of n trials PED-ANOVA takes as the top: max(TOP_TRIALS, ⌈n / TOP_ONE_IN⌉)."""
    return max(TOP_TRIALS, -(-n // TOP_ONE_IN))


def compute_importance(study: "optuna.Study", objectives: Sequence[Objective]) -> StudyImportance:
    """PED-ANOVA importance of each searched hyperparameter for each objective, over the COMPLETE
    full-budget trials (an in-memory copy of the study holding only them); shares sum to 1 per objective.

    Deterministic: PED-ANOVA has no randomness (Parzen estimators on a fixed grid).
    """
    import warnings

    import optuna
    from optuna.importance import PedAnovaImportanceEvaluator

    names = metric_names(study)
    trials = full_budget_trials(study)
    if len(trials) < MIN_TRIALS:
        return StudyImportance(len(trials), 0, ())
    top = top_trials(len(trials))
    # (top − ½) / n: Optuna keeps the ⌈q·n⌉ best, and ⌈(top − ½)⌉ = top whatever the float rounding.
    evaluator = PedAnovaImportanceEvaluator(target_quantile=(top - 0.5) / len(trials))
    copy = optuna.create_study(directions=study.directions)
    copy.add_trials(trials)
    keys = sorted({k for t in trials for k in t.distributions})
    out = []
    for o in objectives:
        # A study objective's value, or a cost recorded as a user attribute (params, MACs, memory as an axis).
        i = names.index(o.metric) if o.metric in names else None
        value = (lambda t, i=i: t.values[i]) if i is not None else (lambda t, m=o.metric: float(t.user_attrs[m]))
        values = [value(t) for t in trials]
        if max(values) == min(values):
            out.append(Importance(o.metric, o.direction, (), constant=True))
            continue
        sign = -1.0 if o.direction == "maximize" else 1.0  # PED-ANOVA takes lower as better
        with warnings.catch_warnings():
            # It warns that it minimises `target` (we negate maximised ones) and about sparse regimes of
            # conditional parameters (they are scored on the trials that have them).
            warnings.simplefilter("ignore")
            raw = evaluator.evaluate(copy, params=keys, target=lambda t, v=value, s=sign: s * v(t))
        total = sum(raw.values())
        shares = sorted(((k, v / total) for k, v in raw.items()), key=lambda kv: (-kv[1], kv[0])) \
            if total > 0 else []
        out.append(Importance(o.metric, o.direction, tuple(shares)))
    return StudyImportance(len(trials), top, tuple(out))


# --- text and JSON ------------------------------------------------------------------------------

def na_line(importance: StudyImportance) -> str:
    return f"importance: n/a (needs ≥ {MIN_TRIALS} COMPLETE trials, this study has {importance.trials})"


def top_shares(importance: Importance, limit: int | None = None) -> str:
    if importance.constant:
        return "constant"
    if not importance.shares:
        return "n/a (no hyperparameter sets the top trials apart)"
    return ", ".join(f"{k} {v:.2f}" for k, v in importance.shares[:limit])


def importance_lines(importance: StudyImportance) -> list[str]:
    """Every hyperparameter's share per objective, or the n/a line."""
    if not importance.available:
        return [na_line(importance)]
    head = (f"importance ({METHOD} over {importance.trials} COMPLETE full-budget trials: how the top "
            f"{importance.top} of each objective differ from all; shares sum to 1):")
    same = f"constant (the same in all {importance.trials} trials)"
    return [head, *(f"  {o.metric}: {same if o.constant else top_shares(o)}" for o in importance.objectives)]


def importance_json(importance: StudyImportance) -> dict[str, Any]:
    """Importance for --json: method, trial counts, and per objective its shares or "constant" (None below
    MIN_TRIALS)."""
    objectives = None
    if importance.available:
        objectives = {o.metric: "constant" if o.constant else dict(o.shares) for o in importance.objectives}
    return {"method": METHOD, "trials": importance.trials, "needs": MIN_TRIALS,
            "top_trials": importance.top or None, "objectives": objectives}
