"""A study read as a learning-curve table: for each configuration, the runs recorded for it (val_acc and
seconds per epoch), so that the replay executor can train a sampled configuration by looking it up.

Any dsearch study is a table: its trials that trained (COMPLETE, PRUNED) give one run each, as far as
their curves go. A study whose trials all trained to the full budget (`budget.rungs: []`) is a complete
table. Trials recorded before per-epoch times were kept replay with their mean epoch time (train time over
epochs), and the table says how many did. A configuration is the trial's searched params without the
training seed; one recorded several times (other seeds) keeps its runs in trial order.
"""

from __future__ import annotations

import gzip
import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import UserError
from ..metrics import MACS, PARAMS, TRAIN_TIME_S
from . import record as st
from .storage import STUDY_DB

if TYPE_CHECKING:
    import optuna

    from .schema import SearchSpace

SEED_KEY = "train.seed"
COMPRESSED_DB = STUDY_DB + ".gz"      # a committed table: the study's SQLite file, gzipped


@dataclass(frozen=True)
class Run:
    """One recorded training of a configuration: val_acc and seconds per epoch, its trial and closed-form costs."""

    trial: int
    curve: tuple[float, ...]
    times: tuple[float, ...]
    params: int
    macs: int


@dataclass
class Table:
    """Runs by configuration key, with the space the table was recorded in."""

    space: "SearchSpace"
    runs: dict[str, list[Run]] = field(default_factory=dict)
    mean_times: int = 0                  # runs whose epoch times are their mean (recorded before epoch times)
    skipped: int = 0                     # trained trials without a curve, left out

    @property
    def max_epochs(self) -> int:
        return self.space.budget.max_epochs

    def lookup(self, params: dict[str, Any]) -> list[Run]:
        """The runs of the configuration with these params (Optuna's form; a training seed is ignored)."""
        return self.runs.get(config_key(params), [])

    def draw(self, params: dict[str, Any], seed: int, occurrence: int) -> Run | None:
        """The run a replay trains for its `occurrence`-th sample (0, 1, …) of this configuration under replay
        seed `seed`: runs in trial order, rotated by the seed, so seed 0 replays a study's own runs in order."""
        runs = self.lookup(params)
        return runs[(seed + occurrence) % len(runs)] if runs else None

    def full(self, epochs: int | None = None) -> list[Run]:
        """Every run trained to `epochs` (default: the table's full budget)."""
        epochs = epochs or self.max_epochs
        return [r for runs in self.runs.values() for r in runs if len(r.curve) >= epochs]

    def describe(self) -> str:
        n = sum(len(r) for r in self.runs.values())
        line = (f"{len(self.runs)} configurations, {n} runs, {len(self.full())} at the full budget of "
                f"{self.max_epochs} epochs")
        if self.mean_times:
            line += (f"; {self.mean_times} runs recorded no per-epoch times and replay with their mean epoch "
                     "time (train time / epochs)")
        if self.skipped:
            line += f"; {self.skipped} trained trials recorded no curve and are left out"
        return line


def _canonical(value: Any) -> Any:
    if isinstance(value, float):
        return float(f"{value:.10g}")          # 0.30000000000000004 and 0.3 are one configuration
    return value


def config_key(params: dict[str, Any]) -> str:
    """A configuration's key: its searched params, sorted, floats to 10 significant digits, no training seed."""
    return json.dumps({k: _canonical(v) for k, v in sorted(params.items()) if k != SEED_KEY}, sort_keys=True)


def run_of(trial: "optuna.trial.FrozenTrial") -> tuple[Run | None, bool]:
    """A trained trial as a run (None without a curve or costs), and whether its times are a mean."""
    a = trial.user_attrs
    curve = [c for c in a.get(st.CURVE) or []]
    if not curve or any(c is None for c in curve) or PARAMS not in a:
        return None, False
    times = a.get(st.EPOCH_TIMES)
    mean = not times or len(times) < len(curve) or any(t is None for t in times[:len(curve)])
    if mean:
        per = float(a.get(TRAIN_TIME_S) or 0.0) / len(curve) or 1.0
        times = [per] * len(curve)
    return Run(trial.number, tuple(float(c) for c in curve), tuple(float(t) for t in times[:len(curve)]),
               int(a[PARAMS]), int(a[MACS])), mean


def table_of(study: "optuna.Study", space: "SearchSpace") -> Table:
    """The study's trained trials (COMPLETE, PRUNED) as a table, in trial order."""
    from optuna.trial import TrialState

    table = Table(space)
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
        run, mean = run_of(t)
        if run is None:
            table.skipped += 1
            continue
        table.mean_times += mean
        table.runs.setdefault(config_key(t.params), []).append(run)
    if not table.runs:
        raise UserError(f"study {study.study_name!r} has no trained trial with a recorded curve: nothing to "
                        "replay (a table needs trials that trained)")
    return table


def open_table_db(study_dir: Path) -> Path:
    """The folder to open as a study: `study_dir` itself, or a temporary copy with its study.db.gz unpacked
    (a committed table). The copy lives as long as the process."""
    study_dir = Path(study_dir)
    if (study_dir / STUDY_DB).exists() or not (study_dir / COMPRESSED_DB).exists():
        return study_dir
    tmp = Path(tempfile.mkdtemp(prefix="dsearch-table-"))
    for f in study_dir.iterdir():
        if f.is_file() and f.name != COMPRESSED_DB:
            shutil.copy2(f, tmp / f.name)
    with gzip.open(study_dir / COMPRESSED_DB, "rb") as src, open(tmp / STUDY_DB, "wb") as dst:
        shutil.copyfileobj(src, dst)
    import atexit

    atexit.register(shutil.rmtree, tmp, True)
    return tmp


def optimum_points(table: Table, space: "SearchSpace") -> np.ndarray:
    """Raw objective rows (in `space`'s objective order) of every run at the space's full budget: the table's own
    optimum for a replay of that space is their front."""
    from ..metrics import VAL_ACC

    epochs = space.budget.max_epochs
    rows = []
    for r in table.full(epochs):
        values = {VAL_ACC: r.curve[epochs - 1], PARAMS: r.params, MACS: r.macs}
        rows.append([values[o.metric] for o in space.objectives])
    return np.asarray(rows, dtype=float).reshape(-1, len(space.objectives))
