"""The Optuna study as the record of a search: open/create, tell trials, read trials back.

Only the driver process writes here. A trial's states: COMPLETE (trained to max_epochs, values
set), PRUNED (stopped by ASHA; last values in user attrs), FAIL (fail_reason + error attrs).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import UserError
from ..metrics import MACS, MEMORY, PARAMS, TRAIN_TIME_S, WALL_TIME_S
from .storage import (STUDY_DB, database_unreachable, db_exists, display_url, open_storage, pick_study,
                      storage_url)

if TYPE_CHECKING:
    import optuna
    import pandas as pd
    from optuna.trial import FrozenTrial

    from .schema import SearchSpace


# User attribute keys, defined once.
EPOCHS_TRAINED = "epochs_trained"
MAX_EPOCHS = "max_epochs"
CURVE = "curve"
EPOCH_TIMES = "epoch_times"        # seconds per epoch (training + validation), in step with CURVE
CONFIG = "config"
SEED = "seed"
CHECKPOINT = "checkpoint"
FAIL_REASON = "fail_reason"
ERROR = "error"
ERROR_KIND = "error_kind"          # of a FAIL(error): diverged, out_of_memory, exception, worker_died
TRACEBACK = "traceback"            # of a FAIL(error): the file holding its full traceback
REQUEUED_FROM = "requeued_from"
PROPOSED_BY = "proposed_by"      # a trial a sampler queued with its params (grid, ehvi, ...): not a seed trial
FAIL_REASONS = ("invalid", "over_budget", "not_in_table", "error", "interrupted")


SPACE_ATTR = "dsearch:space"       # study system attr: the resolved space YAML the study was created with
def stored_space_text(url: str, name: str) -> str | None:
    """The resolved space YAML stored in study `name` when it was created (None for studies made without it)."""
    storage = open_storage(url)
    text = storage.get_study_system_attrs(storage.get_study_id_from_name(name)).get(SPACE_ATTR)
    return text if isinstance(text, str) else None


def make_sampler(kind: str, seed: int | None) -> "optuna.samplers.BaseSampler":
    """The Optuna sampler named in the space (`tpe`, `nsga2`, `random`, `gp`; `grid`: random past its queued points)."""
    import optuna

    if kind == "tpe":
        # constant_liar: a running trial counts as a bad one, so concurrent trials don't all sample one spot.
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=5, constant_liar=True)
    if kind == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    if kind in ("random", "grid", "ehvi"):   # grid, ehvi: points queued in the study (ehvi.py); random past them
        return optuna.samplers.RandomSampler(seed=seed)
    if kind == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    raise UserError(f"sampler.type: unknown sampler {kind!r} (ehvi, tpe, nsga2, random, gp, grid)")


def _quiet_optuna() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)


def create_or_load(space: "SearchSpace", study_dir: Path, storage: str | None = None) -> "optuna.Study":
    """The space's study (created with its directions, metric names, seed trials and the resolved space if new).

    A database given with `storage` may hold any other studies: the one named in the space is created or
    continued (continuing is refused if the space stored in it differs beyond what may change). SQLite in the
    study directory (no `storage`) holds one study: a study.db holding another name is refused.
    """
    import optuna

    _quiet_optuna()
    url = storage_url(study_dir, storage)
    existed = db_exists(url)
    rdb = open_storage(url, writer=True)
    sampler = make_sampler(space.sampler_type, space.sampler.seed)
    names = optuna.get_all_study_names(rdb) if existed else []
    if storage is None and names and space.name not in names:
        raise UserError(f"{url} holds study {names[0]!r}, not {space.name!r}; "
                        "use another --study-dir or --storage")
    if space.name in names:
        _check_stored_space(space, url, rdb)
        return optuna.load_study(study_name=space.name, storage=rdb, sampler=sampler)
    return new_study(space, rdb, sampler)


def new_study(space: "SearchSpace", storage: Any, sampler: "optuna.samplers.BaseSampler") -> "optuna.Study":
    """A new study of the space in `storage` (an RDB or in-memory storage): its directions, metric names, the
    resolved space, the seed trials and a grid sampler's points queued."""
    import warnings

    import optuna

    from .io import dump_space
    from .sampling import grid_params, seed_params

    study = optuna.create_study(study_name=space.name, storage=storage, directions=space.directions,
                                sampler=sampler)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(space.metrics)
    study._storage.set_study_system_attr(study._study_id, SPACE_ATTR, dump_space(space))
    for params in seed_params(space):
        study.enqueue_trial(params, skip_if_exists=True)
    if space.sampler_type == "grid":      # repeats of a point are separate runs (their own training seeds)
        for params in grid_params(space):
            study.enqueue_trial(params, user_attrs={PROPOSED_BY: "grid"})
    return study


def _check_stored_space(space: "SearchSpace", url: str, rdb: Any) -> None:
    """Refuse to continue a study whose stored space differs in what is searched or how it's judged."""
    from .io import parse_space, refuse_different_space

    text = rdb.get_study_system_attrs(rdb.get_study_id_from_name(space.name)).get(SPACE_ATTR)
    if not isinstance(text, str):
        return      # a study made before the space was stored in it: the local space.yaml is the check
    where = f"study {space.name!r} in {display_url(url)}"
    refuse_different_space(parse_space(text, where, rules=False), space, where,
                           "use the same space, or another `name:` for a new study")


def open_study(study_dir: Path | None, storage: str | None = None, space: "SearchSpace | None" = None,
               name: str | None = None) -> "optuna.Study":
    """A study for reading: from a study directory (SQLite inside it) and/or `storage`; UserError if it isn't there.

    The study is `name` (--study) if given; else the name in the local `space` (with `storage` it must be
    there; in the study directory's SQLite, if it is there); else the only study in the database; several →
    UserError listing them. `study_dir` may be None with `storage` (no local folder needed).
    """
    import optuna

    _quiet_optuna()
    if study_dir is not None:
        study_dir = Path(study_dir)
        if not study_dir.is_dir():
            what = "is not a directory" if study_dir.exists() else "does not exist"
            raise UserError(f"study directory {study_dir} {what} (`dsearch run SPACE.yaml` creates "
                            "studies/NAME; check the path)")
    url = storage_url(study_dir, storage)
    if storage is None and not db_exists(url):
        raise UserError(f"no study at {study_dir}: expected {study_dir / STUDY_DB} "
                        "(run `dsearch run SPACE.yaml` first, or pass --storage URL)")
    rdb = open_storage(url)
    names = optuna.get_all_study_names(rdb)
    if name is None and space is not None and (storage or space.name in names):
        if space.name not in names:
            raise UserError(f"{display_url(url)} has no study {space.name!r} (the name in {study_dir}'s space); "
                            f"use --study NAME; studies: {', '.join(names) or 'none'}")
        name = space.name
    return optuna.load_study(study_name=pick_study(url, names, name), storage=rdb)


def tell_finished(study: "optuna.Study", trial: "optuna.Trial", metrics: dict[str, float],
                  epochs_trained: int, max_epochs: int, attrs: dict[str, Any]) -> str:
    """COMPLETE with values if trained to max_epochs, else PRUNED with its last values as attrs.

    A full-budget trial whose values are not finite is FAIL(error, diverged): it has no place on a front.
    """
    from optuna.trial import TrialState

    attrs = {**attrs, EPOCHS_TRAINED: epochs_trained, MAX_EPOCHS: max_epochs,
             **{f"last_{k}": v for k, v in metrics.items()}}
    values = [metrics[m] for m in study.metric_names]
    if epochs_trained >= max_epochs and not all(math.isfinite(v) for v in values):
        bad = ", ".join(f"{m} {v}" for m, v in zip(study.metric_names, values) if not math.isfinite(v))
        tell_failed(study, trial, "error", f"diverged: the full-budget trial ended with {bad}",
                    {**attrs, ERROR_KIND: "diverged"})
        return "FAIL"
    set_attrs(trial, attrs)
    if epochs_trained >= max_epochs:
        study.tell(trial, values, state=TrialState.COMPLETE)
        return "COMPLETE"
    study.tell(trial, state=TrialState.PRUNED)
    return "PRUNED"


def tell_failed(study: "optuna.Study", trial: "optuna.Trial", reason: str, error: str,
                attrs: dict[str, Any] | None = None) -> None:
    """FAIL with `fail_reason` (invalid, over_budget, error, interrupted) and the message."""
    from optuna.trial import TrialState

    assert reason in FAIL_REASONS, reason
    set_attrs(trial, {**(attrs or {}), FAIL_REASON: reason, ERROR: error})
    study.tell(trial, state=TrialState.FAIL)


def set_attrs(trial: "optuna.Trial", attrs: dict[str, Any]) -> None:
    """Set user attributes on a running trial (JSON-able values)."""
    for key, value in attrs.items():
        trial.set_user_attr(key, value)


# FAIL reasons of samples refused before training (priced, free; not_in_table: a replay's table lacks it).
REJECTED = ("invalid", "over_budget", "not_in_table")


def counted_trials(study: "optuna.Study") -> int:
    """Trials that use up num_samples: those that trained or are training, not WAITING ones, not interrupted
    FAILs (queued again), not samples rejected before training (invalid, over_budget: pricing is free)."""
    from optuna.trial import TrialState

    n = 0
    for t in study.get_trials(deepcopy=False):
        if t.state == TrialState.WAITING:
            continue
        if t.state == TrialState.FAIL and t.user_attrs.get(FAIL_REASON) in ("interrupted", *REJECTED):
            continue
        n += 1
    return n


def rejected_trials(study: "optuna.Study") -> dict[str, int]:
    """How many samples were rejected before training, by reason (invalid, over_budget)."""
    counts = dict.fromkeys(REJECTED, 0)
    for t in study.get_trials(deepcopy=False):
        reason = t.user_attrs.get(FAIL_REASON)
        if reason in counts:
            counts[reason] += 1
    return counts


def fail_interrupted(study: "optuna.Study") -> list[int]:
    """RUNNING trials left by a stopped or killed driver → FAIL(interrupted), their params queued again, once.

    The queued copy is written before the FAIL: a driver stopped between the two (a second Ctrl-C, a kill)
    leaves the trial RUNNING with its copy queued, and the next call only marks it FAIL. Once the study's
    database stopped answering in this run (storage.DatabaseUnreachable), nothing is tried: the next run does it.
    """
    from optuna.trial import TrialState

    if database_unreachable(study) is not None:
        return []
    trials = study.get_trials(deepcopy=False)
    queued = {t.user_attrs.get(REQUEUED_FROM) for t in trials}
    numbers = []
    for t in trials:
        if t.state != TrialState.RUNNING:
            continue
        if t.number not in queued:
            study.enqueue_trial(t.params, user_attrs={REQUEUED_FROM: t.number})
        _fail_orphan(study, t, "the driver stopped while this trial ran; its parameters were queued again")
        numbers.append(t.number)
    return numbers


def _fail_orphan(study: "optuna.Study", frozen: "FrozenTrial", error: str) -> None:
    """FAIL(interrupted) a RUNNING trial that no live `optuna.Trial` object holds any more.

    Optuna's public API sets user attributes only through the `Trial` that ask() returned, which
    died with the driver; this is the one place that reaches for the storage and the trial id.
    """
    from optuna.trial import TrialState

    for key, value in {FAIL_REASON: "interrupted", ERROR: error}.items():
        study._storage.set_trial_user_attr(frozen._trial_id, key, value)
    study.tell(frozen.number, state=TrialState.FAIL)


def lineages(trials: "list[FrozenTrial]") -> dict[int, int]:
    """Trial number → the number of the first trial of its line (a requeued trial continues its `requeued_from`)."""
    parent = {t.number: t.user_attrs.get(REQUEUED_FROM) for t in trials}
    root: dict[int, int] = {}
    for n in parent:
        first, seen = n, set()
        while parent.get(first) is not None and first not in seen:
            seen.add(first)
            first = parent[first]
        root[n] = first
    return root


def line_index(trials: "list[FrozenTrial]", number: int) -> int:
    """How many lines of trials began before trial `number`: a new trial's seed. Its trial number would do until a
    run is interrupted; the copies queued then take numbers too, and every later trial would train with other
    draws than in a search never stopped."""
    return sum(1 for t in trials if t.number < number and t.user_attrs.get(REQUEUED_FROM) is None)


def rung_history(study: "optuna.Study") -> list[tuple[int, list[float], dict[str, float]]]:
    """(line, curve, {params, macs}) of every trial that trained: what the scheduler's rungs are rebuilt from.

    A requeued trial and the one it continues are one line; the longest curve of a line is taken.
    """
    trials = study.get_trials(deepcopy=False)
    root = lineages(trials)
    best: dict[int, tuple[int, list[float], dict[str, float]]] = {}
    for t in trials:
        curve = t.user_attrs.get(CURVE)
        if not curve or PARAMS not in t.user_attrs:
            continue
        line = root[t.number]
        if line not in best or len(curve) > len(best[line][1]):
            best[line] = (line, list(curve), {m: t.user_attrs[m] for m in (PARAMS, MACS, MEMORY) if m in t.user_attrs})
    return [best[k] for k in sorted(best)]


def trials_frame(study: "optuna.Study") -> "pd.DataFrame":
    """One row per trial: trial, state, objectives (COMPLETE: values; PRUNED: last values), params, MACs and
    memory where recorded, epochs_trained, max_epochs, curve, fail_reason, and the searched params (dotted keys)."""
    import pandas as pd

    names = study.metric_names or [f"objective_{i}" for i in range(len(study.directions))]
    rows = []
    for t in study.get_trials(deepcopy=False):
        row: dict[str, Any] = {"trial": t.number, "state": t.state.name}
        for i, name in enumerate(names):
            if t.values is not None:
                row[name] = t.values[i]
            else:
                row[name] = t.user_attrs.get(f"last_{name}", t.user_attrs.get(name, math.nan))
        for cost in (PARAMS, MACS, MEMORY):     # closed-form costs priced before training, objectives or not
            if cost not in row and cost in t.user_attrs:
                row[cost] = t.user_attrs[cost]
        row[EPOCHS_TRAINED] = t.user_attrs.get(EPOCHS_TRAINED, 0)
        row[MAX_EPOCHS] = t.user_attrs.get(MAX_EPOCHS)
        row[CURVE] = list(t.user_attrs.get(CURVE, []))
        row[FAIL_REASON] = t.user_attrs.get(FAIL_REASON)
        row[CHECKPOINT] = t.user_attrs.get(CHECKPOINT)
        row.update(t.params)
        rows.append(row)
    frame = pd.DataFrame(rows)
    if frame.empty:
        frame = pd.DataFrame(columns=["trial", "state", *names, EPOCHS_TRAINED, MAX_EPOCHS, CURVE])
    return frame


def find_trial(study: "optuna.Study", number: int) -> "FrozenTrial":
    """The trial with this number; UserError naming the valid range if there is none."""
    trials = study.get_trials(deepcopy=False)
    for t in trials:
        if t.number == number:
            return t
    span = f"trials 0..{len(trials) - 1}" if trials else "it has no trials"
    raise UserError(f"--trial {number}: no such trial in study {study.study_name!r} ({span})")


def trial_config(trial: "FrozenTrial") -> dict:
    """The resolved run config (JSON) a trial was trained with."""
    raw = trial.user_attrs.get(CONFIG)
    if raw is None:
        raise UserError(f"trial {trial.number} has no resolved config (state {trial.state.name}, "
                        f"{trial.user_attrs.get(FAIL_REASON, 'never started')})")
    return json.loads(raw) if isinstance(raw, str) else raw


def summarize(study: "optuna.Study", wall: float) -> dict[str, Any]:
    """Counts by state (FAIL by reason), best full-budget val_acc, and the dsearch+Ray share of trial time."""
    from optuna.trial import TrialState

    counts: dict[str, int] = {}
    best = None
    wall_sum = train_sum = 0.0
    for t in study.get_trials(deepcopy=False):
        key = t.state.name
        if t.state == TrialState.FAIL:
            key = f"FAIL({t.user_attrs.get(FAIL_REASON, '?')})"
        counts[key] = counts.get(key, 0) + 1
        curve = [a for a in t.user_attrs.get(CURVE, []) if a is not None]
        if t.state == TrialState.COMPLETE and curve:
            best = max(best or 0.0, curve[-1])
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED):
            wall_sum += t.user_attrs.get(WALL_TIME_S, 0.0)
            train_sum += t.user_attrs.get(TRAIN_TIME_S, 0.0)
    overhead = 1 - train_sum / wall_sum if wall_sum > 0 else None
    return {"study": study.study_name, "wall_time_s": wall, "trials": counts, "best_val_acc": best,
            "overhead_share": overhead}
