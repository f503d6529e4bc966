"""The Optuna study as the record of a search: open/create, tell trials, read trials back.

Only the driver process writes here. A trial's states: COMPLETE (trained to max_epochs, values
set), PRUNED (stopped by ASHA; last values in user attrs), FAIL (fail_reason + error attrs).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import UserError

if TYPE_CHECKING:
    import optuna
    import pandas as pd

    from .space import SearchSpace

STUDY_DB = "study.db"
SPACE_FILE = "space.yaml"
LOCK_FILE = "run.lock"

# User attribute keys, defined once.
EPOCHS_TRAINED = "epochs_trained"
MAX_EPOCHS = "max_epochs"
CURVE = "curve"
CONFIG = "config"
SEED = "seed"
CHECKPOINT = "checkpoint"
WALL_TIME_S = "wall_time_s"
TRAIN_TIME_S = "train_time_s"
IMAGES_PER_S = "images_per_s"
PEAK_MEMORY_BYTES = "peak_memory_bytes"
FAIL_REASON = "fail_reason"
ERROR = "error"
REQUEUED_FROM = "requeued_from"
FAIL_REASONS = ("invalid", "over_budget", "error", "interrupted")


def storage_url(study_dir: Path, storage: str | None = None) -> str:
    """The given RDB URL, or SQLite in the study directory."""
    return storage or f"sqlite:///{(Path(study_dir) / STUDY_DB).resolve()}"


def make_sampler(kind: str, seed: int | None) -> "optuna.samplers.BaseSampler":
    """The Optuna sampler named in the space (`tpe`, `nsga2`, `random`, `gp`)."""
    import optuna

    if kind == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=5)
    if kind == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if kind == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    raise UserError(f"sampler.type: unknown sampler {kind!r} (tpe, nsga2, random, gp)")


def _quiet_optuna() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)


def create_or_load(space: "SearchSpace", study_dir: Path, storage: str | None = None) -> "optuna.Study":
    """The space's study (created with its directions, metric names and seed trials if new)."""
    import optuna

    from .sampling import seed_params

    _quiet_optuna()
    url = storage_url(study_dir, storage)
    sampler = make_sampler(space.sampler.type, space.sampler.seed)
    names = optuna.get_all_study_names(url) if _db_exists(url) else []
    if names and space.name not in names:
        raise UserError(f"{url} holds study {names[0]!r}, not {space.name!r}; "
                        "use another --study-dir or --storage")
    study = optuna.create_study(study_name=space.name, storage=url, directions=space.directions,
                                sampler=sampler, load_if_exists=True)
    if not names:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(space.metrics)
        for params in seed_params(space):
            study.enqueue_trial(params, skip_if_exists=True)
    return study


def _db_exists(url: str) -> bool:
    if url.startswith("sqlite:///"):
        return Path(url[len("sqlite:///"):]).exists()
    return True


def load(study_dir: Path | None, storage: str | None = None, name: str | None = None) -> "optuna.Study":
    """An existing study, read-only use; a missing one is a UserError."""
    import optuna

    _quiet_optuna()
    url = storage_url(study_dir, storage) if study_dir is not None or storage else None
    if url is None or not _db_exists(url):
        raise UserError(f"no study at {study_dir}: expected {Path(study_dir or '.') / STUDY_DB} "
                        "(run `dsearch run SPACE.yaml` first, or pass --storage URL)")
    names = optuna.get_all_study_names(url)
    if not names:
        raise UserError(f"{url} holds no study (was `dsearch run` interrupted before its first trial?)")
    if name is None:
        name = names[0]
    elif name not in names:
        raise UserError(f"{url} has no study {name!r} (it has: {', '.join(names)})")
    return optuna.load_study(study_name=name, storage=url)


def set_attrs(study: "optuna.Study", trial_id: int, attrs: dict[str, Any]) -> None:
    """Set user attributes on a trial by id (JSON-able values)."""
    for key, value in attrs.items():
        study._storage.set_trial_user_attr(trial_id, key, value)


def tell_finished(study: "optuna.Study", trial_number: int, trial_id: int, metrics: dict[str, float],
                  epochs_trained: int, max_epochs: int, attrs: dict[str, Any]) -> str:
    """COMPLETE with values if trained to max_epochs, else PRUNED with its last values as attrs."""
    from optuna.trial import TrialState

    attrs = {**attrs, EPOCHS_TRAINED: epochs_trained, MAX_EPOCHS: max_epochs,
             **{f"last_{k}": v for k, v in metrics.items()}}
    set_attrs(study, trial_id, attrs)
    values = [metrics[m] for m in study.metric_names]
    if epochs_trained >= max_epochs and all(math.isfinite(v) for v in values):
        study.tell(trial_number, values, state=TrialState.COMPLETE)
        return "COMPLETE"
    study.tell(trial_number, state=TrialState.PRUNED)
    return "PRUNED"


def tell_failed(study: "optuna.Study", trial_number: int, trial_id: int, reason: str, error: str,
                attrs: dict[str, Any] | None = None) -> None:
    """FAIL with `fail_reason` (invalid, over_budget, error, interrupted) and the message."""
    from optuna.trial import TrialState

    assert reason in FAIL_REASONS, reason
    set_attrs(study, trial_id, {**(attrs or {}), FAIL_REASON: reason, ERROR: error})
    study.tell(trial_number, state=TrialState.FAIL)


def counted_trials(study: "optuna.Study") -> int:
    """Trials that use up num_samples: all but WAITING ones and interrupted FAILs."""
    from optuna.trial import TrialState

    n = 0
    for t in study.get_trials(deepcopy=False):
        if t.state == TrialState.WAITING:
            continue
        if t.state == TrialState.FAIL and t.user_attrs.get(FAIL_REASON) == "interrupted":
            continue
        n += 1
    return n


def fail_interrupted(study: "optuna.Study") -> list[int]:
    """RUNNING trials left by a killed driver → FAIL(interrupted), their params enqueued again."""
    from optuna.trial import TrialState

    numbers = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        tell_failed(study, t.number, t._trial_id, "interrupted",
                    "the driver stopped while this trial ran; its parameters were queued again")
        study.enqueue_trial(t.params, user_attrs={REQUEUED_FROM: t.number})
        numbers.append(t.number)
    return numbers


def trials_frame(study: "optuna.Study") -> "pd.DataFrame":
    """One row per trial: trial, state, objectives (COMPLETE: values; PRUNED: last values),
    epochs_trained, max_epochs, curve, fail_reason, and the searched params (dotted keys)."""
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


def trial_config(study: "optuna.Study", number: int) -> dict:
    """The resolved run config (JSON) a trial was trained with."""
    trials = [t for t in study.get_trials(deepcopy=False) if t.number == number]
    if not trials:
        raise UserError(f"--trial {number}: no such trial (trials 0..{len(study.trials) - 1})")
    raw = trials[0].user_attrs.get(CONFIG)
    if raw is None:
        raise UserError(f"trial {number} has no resolved config (state {trials[0].state.name}, "
                        f"{trials[0].user_attrs.get(FAIL_REASON, 'never started')})")
    return json.loads(raw) if isinstance(raw, str) else raw


class StudyLock:
    """`run.lock` in the study directory while a run holds it; a stale lock (dead pid) is taken over."""

    def __init__(self, study_dir: Path) -> None:
        self.path = Path(study_dir) / LOCK_FILE

    def holder(self) -> int | None:
        """The pid of a live process holding the lock, else None."""
        try:
            pid = int(self.path.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            return pid
        return pid

    def acquire(self) -> None:
        pid = self.holder()
        if pid is not None and pid != os.getpid():
            raise UserError(f"{self.path.parent} is in use by a running `dsearch run` (pid {pid}); "
                            f"wait for it, or stop it (kill {pid})")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(f"{os.getpid()}\n")
        os.replace(tmp, self.path)

    def release(self) -> None:
        if self.holder() == os.getpid():
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> "StudyLock":
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()

