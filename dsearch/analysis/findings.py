"""What the study says: each seed trial against the best full-budget trial of similar size, and the verdict.

The seed comparison puts each seed trial (enqueued from the space's `seed_trials`, e.g. the paper's recipe)
beside the best full-budget trial within ±SIMILAR_PARAMS of its parameter count, and names the
hyperparameters that differ. `study_says_lines` is `dsearch pareto`'s short verdict: those comparisons and
the top hyperparameters per objective from importance.py (PED-ANOVA). The summary (report.py) and the JSON
(outputs.py) read the plain NamedTuples made here.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from ..metrics import PARAMS, VAL_ACC
from ..search.record import CURVE, EPOCHS_TRAINED, FAIL_REASON, MAX_EPOCHS, PROPOSED_BY, REQUEUED_FROM, lineages
from .importance import StudyImportance, top_shares, full_budget_trials, is_full_budget, metric_names, na_line

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial

SIMILAR_PARAMS = 0.10  # a trial is "at similar params" to a seed within ±10 % of the seed's parameter count
TOP_SHOWN = 3          # hyperparameters per objective in "what the study says"
ENQUEUED = "fixed_params"  # Optuna's trial system attr: the params given to study.enqueue_trial


class TrialSummary(NamedTuple):
    """A trial as the seed comparison reads it: val_acc (fraction) after `epochs` of `max_epochs`, its
    trainable parameter count, and its searched hyperparameters (dotted keys, Optuna's form)."""

    number: int
    state: str
    val_acc: float | None
    epochs: int | None
    max_epochs: int | None
    param_count: float | None
    hyperparameters: dict[str, Any]
    fail_reason: str | None = None


class SeedComparison(NamedTuple):
    """A seed trial (the latest of its line, requeues included) and the best other full-budget trial whose
    parameter count is within `window` (±SIMILAR_PARAMS of the seed's); match None when there is none or
    the seed has no full-budget result."""

    seed: TrialSummary
    full_budget: bool
    window: tuple[float, float] | None
    match: TrialSummary | None


# --- reading a trial ----------------------------------------------------------------------------

def _metric(trial: "FrozenTrial", names: Sequence[str], name: str) -> float | None:
    """A metric of a trial: its value if an objective, else the user attr (last_NAME, NAME), else None."""
    if trial.values is not None and name in names:
        return float(trial.values[list(names).index(name)])
    for key in (f"last_{name}", name):
        value = trial.user_attrs.get(key)
        if isinstance(value, numbers.Real) and not isinstance(value, bool):
            return float(value)
    if name == VAL_ACC and trial.user_attrs.get(CURVE):
        return float(trial.user_attrs[CURVE][-1])
    return None


def summarize_trial(trial: "FrozenTrial", names: Sequence[str]) -> TrialSummary:
    """The trial's val_acc, epochs, parameter count and hyperparameters."""
    epochs = trial.user_attrs.get(EPOCHS_TRAINED)
    if epochs is None and trial.user_attrs.get(CURVE):
        epochs = len(trial.user_attrs[CURVE])
    budget = trial.user_attrs.get(MAX_EPOCHS)
    return TrialSummary(
        number=trial.number, state=trial.state.name, val_acc=_metric(trial, names, VAL_ACC),
        epochs=None if epochs is None else int(epochs), max_epochs=None if budget is None else int(budget),
        param_count=_metric(trial, names, PARAMS), hyperparameters=dict(trial.params),
        fail_reason=trial.user_attrs.get(FAIL_REASON),
    )


# --- the seed recipe against the best trial of similar size ----------------------------------------

def seed_trials(study: "optuna.Study") -> list["FrozenTrial"]:
    """The latest trial of each seed line: a seed is a trial enqueued with fixed params that is neither a requeue
    of an interrupted trial nor a sampler's own proposal (`proposed_by`: a grid point, an EHVI pick)."""
    trials = study.get_trials(deepcopy=False)
    roots = [t.number for t in trials if ENQUEUED in t.system_attrs and t.user_attrs.get(REQUEUED_FROM) is None
             and PROPOSED_BY not in t.user_attrs]
    root = lineages(trials)
    by_number = {t.number: t for t in trials}
    return [by_number[max(n for n, r in root.items() if r == seed)] for seed in roots]


def compare_seeds(study: "optuna.Study", similar: float = SIMILAR_PARAMS) -> tuple[SeedComparison, ...]:
    """Each seed trial against the best (highest val_acc) other full-budget trial within ±`similar` of its
    parameter count; the seed's own line (requeues) doesn't count."""
    names = metric_names(study)
    trials = study.get_trials(deepcopy=False)
    root = lineages(trials)
    full = [summarize_trial(t, names) for t in full_budget_trials(study)]
    out = []
    for trial in seed_trials(study):
        seed = summarize_trial(trial, names)
        if not is_full_budget(trial) or seed.val_acc is None or seed.param_count is None:
            out.append(SeedComparison(seed, is_full_budget(trial), None, None))
            continue
        low, high = seed.param_count * (1 - similar), seed.param_count * (1 + similar)
        near = [s for s in full if root[s.number] != root[seed.number] and s.val_acc is not None
                and s.param_count is not None and low <= s.param_count <= high]
        match = max(near, key=lambda s: (s.val_acc, -s.number)) if near else None
        out.append(SeedComparison(seed, True, (low, high), match))
    return tuple(out)


# --- text and JSON ------------------------------------------------------------------------------

def format_hyperparameter(value: Any) -> str:
    """A hyperparameter value in a sentence: floats to 4 significant digits, "–" when not set (inactive)."""
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def changes(before: dict[str, Any], after: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(key, before, after) for each hyperparameter that differs, by key; a missing key is None."""
    return [(k, before.get(k), after.get(k)) for k in sorted({*before, *after}) if before.get(k) != after.get(k)]


def _count(value: float) -> str:
    return f"{round(value):,}"


def _at(summary: TrialSummary) -> str:
    epoch = f" at epoch {summary.epochs}" if summary.epochs is not None else ""
    return f"val_acc {summary.val_acc:.4f}{epoch}"


def seed_line(comparison: SeedComparison, similar: float = SIMILAR_PARAMS) -> str:
    """One line: the seed's val_acc and size, the best trial at similar params, the difference and what changed."""
    seed, match = comparison.seed, comparison.match
    head = f"seed trial {seed.number}"
    if not comparison.full_budget:
        if seed.state == "FAIL":
            state = f"FAIL ({seed.fail_reason or 'unknown'})"
        elif seed.epochs is not None and seed.max_epochs is not None:
            acc = f" (val_acc {seed.val_acc:.4f} there)" if seed.val_acc is not None else ""
            state = f"{seed.state} after {seed.epochs} of {seed.max_epochs} epochs{acc}"
        else:
            state = seed.state
        return f"{head}: {state} — not COMPLETE at the full budget, nothing to compare"
    within = f"±{similar:.0%} of its params"
    if seed.val_acc is None or seed.param_count is None:
        missing = "val_acc" if seed.val_acc is None else "parameter count"
        return f"{head}: COMPLETE, but its {missing} is not recorded: nothing to compare"
    mine = f"{head}: {_at(seed)} ({_count(seed.param_count)} params)"
    if match is None:
        low, high = comparison.window
        return f"{mine}; no other full-budget trial within {within} ({_count(low)}–{_count(high)})"
    diff = [f"{k} {format_hyperparameter(a)} → {format_hyperparameter(b)}"
            for k, a, b in changes(seed.hyperparameters, match.hyperparameters)]
    what = f"it differs in {', '.join(diff)}" if diff else "same hyperparameters"
    return (f"{mine}; best full-budget trial within {within}: trial {match.number}, {_at(match)} "
            f"({_count(match.param_count)} params), {match.val_acc - seed.val_acc:+.4f}; {what}")


def study_says_lines(seeds: Sequence[SeedComparison], importance: StudyImportance) -> list[str]:
    """The short verdict: each seed trial against the best trial at similar params, and the top
    hyperparameters per objective (or the n/a line)."""
    lines = ["what the study says:"]
    lines += [f"  {seed_line(c)}" for c in seeds] or ["  no seed trial (a space's seed_trials are queued first)"]
    if not importance.available:
        return lines + [f"  {na_line(importance)}"]
    for o in importance.objectives:
        if o.constant:
            lines.append(f"  {o.metric}: constant over the COMPLETE trials")
        else:
            lines.append(f"  what matters for {o.metric}: {top_shares(o, TOP_SHOWN)}")
    return lines


def seeds_json(seeds: Sequence[SeedComparison]) -> list[dict[str, Any]]:
    """The seed comparisons for --json."""
    def trial(s: TrialSummary) -> dict[str, Any]:
        count = s.param_count
        return {"trial": s.number, "state": s.state, "val_acc": s.val_acc, "epochs_trained": s.epochs,
                "params": int(count) if count is not None and count.is_integer() else count,
                "hyperparameters": s.hyperparameters}

    out = []
    for c in seeds:
        entry = {**trial(c.seed), "full_budget": c.full_budget, "similar_params": None, "best_similar": None}
        if c.window is not None:
            entry["similar_params"] = [round(c.window[0], 6), round(c.window[1], 6)]
        if c.match is not None:
            entry["best_similar"] = {**trial(c.match), "val_acc_difference": c.match.val_acc - c.seed.val_acc,
                                     "changed": {k: [a, b] for k, a, b in changes(c.seed.hyperparameters,
                                                                                  c.match.hyperparameters)}}
        out.append(entry)
    return out
