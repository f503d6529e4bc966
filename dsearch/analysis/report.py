"""A study's full-budget front as a report: the table and the summary lines.

The front, hypervolume and knee come from pareto.py / plots.py, hyperparameter importance from
importance.py and the seed comparison ("what the study says") from findings.py; this module reads the
trials, checks the options that choose objectives and the reference point, measures how well each rung's
val_acc ranks the full-budget trials (Spearman), and prints the front and its summary. outputs.py writes
the report as CSV, JSON and HTML and saves the dashboard figures.
`dsearch pareto` (cli/pareto.py) checks everything before it writes anything.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from ..errors import UserError
from ..metrics import MACS, MEMORY, PARAMS, VAL_ACC, Objective
from ..search.io import SPACE_FILE
from ..search.record import CURVE, EPOCHS_TRAINED, FAIL_REASON, MAX_EPOCHS, trials_frame
from .pareto import COMPLETE, LOG_SCALED, PRUNED, default_reference, hypervolume, normalized_hypervolume

if TYPE_CHECKING:
    import optuna
    import pandas as pd
    from rich.console import Console
    from rich.table import Table

    from .findings import SeedComparison
    from .importance import StudyImportance
    from .plots import PlotData
    from ..search.schema import SearchSpace

STATE_ORDER = ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")
COUNT_METRICS = (PARAMS, MACS, MEMORY)  # whole numbers: written without ".0"
_ARROWS = {"maximize": "↑", "minimize": "↓"}
_NAMES = {MACS: "MACs"}  # how the summary lines name a metric in prose
MIN_RUNG_TRIALS = 5      # full-budget trials a rung's Spearman correlation needs
WEAK_RUNG = 0.5          # a rung whose Spearman correlation is below this is called weakly informative


class Reference(NamedTuple):
    """A hypervolume reference point in the objectives' raw units, and where it came from."""

    values: tuple[float, ...]
    source: str


class RungCorrelation(NamedTuple):
    """How well val_acc at a rung's epoch ranks the full-budget trials as their final val_acc does.

    trials, rung_val_acc and final_val_acc: the COMPLETE trials whose curve reaches final_epoch (max_epochs),
    by trial number. spearman: None (n/a) with fewer than MIN_RUNG_TRIALS of them, or when either side is
    constant.
    """

    epoch: int
    final_epoch: int
    trials: tuple[int, ...]
    rung_val_acc: tuple[float, ...]
    final_val_acc: tuple[float, ...]
    spearman: float | None


class Report(NamedTuple):
    """What `dsearch pareto` prints and writes; front rows are in CSV column order, sorted by params.

    hypervolume is the raw one (product of the objectives' units, against `reference`);
    normalized_hypervolume its share (0..1) of the box between the usable trials' best and worst values
    (pareto.normalized_hypervolume; None with fewer than 2 usable trials). rungs: one per rung epoch below
    max_epochs, empty when the study has no stored space. importance: per objective over the COMPLETE
    full-budget trials (importance.compute_importance); seeds: each seed trial against the best full-budget
    trial at similar params (findings.compare_seeds).
    """

    study_name: str
    objectives: tuple[Objective, ...]
    metrics: tuple[str, ...]
    param_keys: tuple[str, ...]
    counts: dict[str, int]
    fail_reasons: dict[str, int]
    front: "pd.DataFrame"
    usable: int
    reference: Reference
    hypervolume: float
    normalized_hypervolume: float | None
    best: dict[str, tuple[int, float]]
    rungs: tuple[RungCorrelation, ...]
    plot: "PlotData"
    importance: "StudyImportance | None" = None
    seeds: "tuple[SeedComparison, ...]" = ()


# --- reading ----------------------------------------------------------------------------------

def select_objectives(study: "optuna.Study", text: str | None) -> tuple[Objective, ...]:
    """The study's objectives, or the comma-separated subset named in `--objectives`, in that order."""
    names = study.metric_names or [f"objective_{i}" for i in range(len(study.directions))]
    everything = {n: Objective(metric=n, direction=d.name.lower()) for n, d in zip(names, study.directions)}
    if text is None:
        return tuple(everything.values())
    for cost in (PARAMS, MACS, MEMORY):      # priced for every trial: an axis even where not an objective
        everything.setdefault(cost, Objective(metric=cost, direction="minimize"))
    chosen = [w.strip() for w in text.split(",") if w.strip()]
    listing = f"the study's objectives are {', '.join(names)}"
    unknown = [w for w in chosen if w not in everything]
    if unknown or not chosen:
        what = f"unknown objective {unknown[0]!r}" if unknown else "no objective given"
        raise UserError(f"--objectives {text!r}: {what}; {listing}")
    if len(set(chosen)) < len(chosen):
        raise UserError(f"--objectives {text!r}: an objective is named twice; {listing}")
    return tuple(everything[w] for w in chosen)


def parse_reference(text: str | None, objectives: tuple[Objective, ...]) -> tuple[float, ...] | None:
    """`--reference 0,1e6` → one float per objective, raw units, in `objectives` order."""
    if text is None:
        return None
    names = ",".join(o.metric for o in objectives)
    try:
        values = tuple(float(w) for w in text.split(","))
    except ValueError:
        raise UserError(f"--reference {text!r}: expected numbers separated by commas ({names})") from None
    if len(values) != len(objectives) or not all(math.isfinite(v) for v in values):
        raise UserError(f"--reference {text!r}: give {len(objectives)} finite numbers, one per objective "
                        f"({names})")
    return values


def prepare_frame(study: "optuna.Study") -> "pd.DataFrame":
    """study.trials_frame, with COMPLETE trials lacking `max_epochs` taken as full budget."""
    frame = trials_frame(study)
    if len(frame) and MAX_EPOCHS in frame:
        # A COMPLETE trial is full-budget by study.tell_finished's rule; hand-made ones may lack the attr.
        missing = frame[MAX_EPOCHS].isna() & (frame["state"] == "COMPLETE")
        frame[MAX_EPOCHS] = frame[MAX_EPOCHS].where(~missing, frame[EPOCHS_TRAINED]).astype(float)
    return frame


def count_states(frame: "pd.DataFrame") -> tuple[dict[str, int], dict[str, int]]:
    """Trials by state (STATE_ORDER first), and FAIL trials by fail_reason."""
    counts = frame["state"].value_counts().to_dict()
    by_state = {s: int(counts.pop(s)) for s in STATE_ORDER if s in counts}
    by_state.update({s: int(n) for s, n in sorted(counts.items())})
    reasons = frame.loc[frame["state"] == "FAIL", FAIL_REASON].fillna("unknown").value_counts().to_dict()
    return by_state, {str(r): int(n) for r, n in sorted(reasons.items())}


def choose_reference(objectives: tuple[Objective, ...], usable_values: Any, override: tuple[float, ...] | None,
                     space: "SearchSpace | None") -> Reference:
    """--reference, else each objective's `reference` in space.yaml, else `default_reference`."""
    if override is not None:
        return Reference(override, "--reference")
    default = default_reference(usable_values, objectives)
    by_metric = {o.metric: o.reference for o in (space.objectives if space else ())}
    given = [by_metric.get(o.metric) for o in objectives]
    values = tuple(float(g) if g is not None else float(d) for g, d in zip(given, default))
    if all(g is None for g in given):
        return Reference(values, "default: 0 for a maximised objective, 1.1 × the largest usable value "
                                 "for a minimised one")
    if all(g is not None for g in given):
        return Reference(values, f"from {SPACE_FILE}")
    return Reference(values, f"from {SPACE_FILE} where given, else the default")


def average_ranks(values: Any) -> np.ndarray:
    """1-based ranks of a 1-D array; tied values share the average of the ranks they span (1, 2.5, 2.5, 4)."""
    _, inverse, counts = np.unique(np.asarray(values, dtype=float), return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    return (ends - (counts - 1) / 2.0)[inverse.reshape(-1)]


def spearman(x: Any, y: Any) -> float:
    """Spearman rank correlation of two equal-length 1-D sequences (Pearson's r of their average ranks).

    NaN when either side is constant or there are fewer than two pairs (no ranking to compare).
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.ndim != 1 or x.shape != y.shape:
        raise ValueError(f"spearman needs two 1-D sequences of one length, got shapes {x.shape} and {y.shape}")
    if len(x) < 2:
        return math.nan
    rx, ry = average_ranks(x), average_ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    scale = math.sqrt(float(np.sum(rx * rx)) * float(np.sum(ry * ry)))
    if scale == 0.0:
        return math.nan
    return float(np.clip(np.sum(rx * ry) / scale, -1.0, 1.0))


def rung_correlations(frame: "pd.DataFrame", milestones: Sequence[int], max_epochs: int) -> tuple[RungCorrelation, ...]:
    """Per rung epoch r < max_epochs: Spearman between curve[r - 1] and curve[max_epochs - 1] over the
    COMPLETE trials whose curve reaches max_epochs (None with fewer than MIN_RUNG_TRIALS, or constant)."""
    curves = frame[CURVE] if CURVE in frame else [None] * len(frame)
    full = sorted((int(t), [float(v) for v in c]) for t, s, c in zip(frame["trial"], frame["state"], curves)
                  if s == COMPLETE and isinstance(c, (list, tuple, np.ndarray)) and len(c) >= max_epochs)
    out = []
    for r in sorted({int(m) for m in milestones}):
        if not 1 <= r < max_epochs:
            continue
        pairs = [(t, c[r - 1], c[max_epochs - 1]) for t, c in full
                 if math.isfinite(c[r - 1]) and math.isfinite(c[max_epochs - 1])]
        trials, at_rung, final = (tuple(z) for z in zip(*pairs)) if pairs else ((), (), ())
        rho = spearman(at_rung, final) if len(pairs) >= MIN_RUNG_TRIALS else math.nan
        out.append(RungCorrelation(r, int(max_epochs), trials, at_rung, final,
                                   None if math.isnan(rho) else rho))
    return tuple(out)


def _int_keys(study: "optuna.Study") -> set[str]:
    """Searched keys sampled from integer distributions (their column is float once NaN is mixed in)."""
    from optuna.distributions import IntDistribution

    return {k for t in study.get_trials(deepcopy=False) for k, d in t.distributions.items()
            if isinstance(d, IntDistribution)}


def _front_rows(frame: "pd.DataFrame", on_front: Any, metrics: tuple[str, ...], params: tuple[str, ...],
                int_keys: set[str]) -> "pd.DataFrame":
    rows = frame.loc[on_front, ["trial", "state", *metrics, EPOCHS_TRAINED, *params]].copy()
    for column in [m for m in metrics if m in COUNT_METRICS] + [p for p in params if p in int_keys]:
        values = rows[column].astype(float)
        if values.dropna().apply(float.is_integer).all():
            rows[column] = values.round().astype("Int64")
    rows[EPOCHS_TRAINED] = rows[EPOCHS_TRAINED].astype(int)
    order = [PARAMS, "trial"] if PARAMS in rows else ["trial"]
    return rows.sort_values(order, kind="stable").reset_index(drop=True)


def _not_recorded(metric: str, study_name: str) -> str:
    return (f"--objectives: {metric} is not recorded for every usable trial of study {study_name!r} (trials priced "
            "before dsearch recorded it); leave it out")


def build_report(study: "optuna.Study", objectives: tuple[Objective, ...], include_partial: bool = False,
                 reference: tuple[float, ...] | None = None, space: "SearchSpace | None" = None) -> Report:
    """Front (classify_trials), hypervolume, best per objective, knee, importance, seed comparison and plot
    data; UserError if no usable trial."""
    from .findings import compare_seeds
    from .importance import compute_importance
    from .paper import paper_points
    from .plots import DOMINATED, FRONT, classify_trials, compute_plot_data, parameter_columns

    frame = prepare_frame(study)
    if frame.empty:
        raise UserError(f"study {study.study_name!r} has no trials yet (`dsearch run` records them)")
    counts, reasons = count_states(frame)
    for o in objectives:
        if o.metric not in frame:
            raise UserError(_not_recorded(o.metric, study.study_name))
    status = classify_trials(frame, objectives, include_partial)
    usable = frame[status.isin((FRONT, DOMINATED))]
    if usable.empty:
        raise UserError(_no_usable_trial(study.study_name, counts, include_partial))
    names = [o.metric for o in objectives]
    missing = [n for n in names if usable[n].isna().any()]
    if missing:
        raise UserError(_not_recorded(missing[0], study.study_name))
    values = usable[names].to_numpy(dtype=float)
    ref = choose_reference(objectives, values, reference, space)
    paper = paper_points(space.data.name, space.data.augment) if space is not None else []
    rungs = rung_correlations(frame, space.milestones, space.budget.max_epochs) if space is not None else ()
    metrics = tuple(dict.fromkeys([*(study.metric_names or names), *names]))   # with an axis like memory
    params = tuple(sorted(parameter_columns(frame)))
    best = {}
    for o in objectives:
        row = usable[o.metric].idxmax() if o.direction == "maximize" else usable[o.metric].idxmin()
        best[o.metric] = (int(usable.at[row, "trial"]), float(usable.at[row, o.metric]))
    importance = compute_importance(study, objectives)
    return Report(
        study_name=study.study_name, objectives=objectives, metrics=metrics, param_keys=params,
        counts=counts, fail_reasons=reasons,
        front=_front_rows(frame, status == FRONT, metrics, params, _int_keys(study)),
        usable=len(usable), reference=ref, hypervolume=hypervolume(values, objectives, ref.values),
        normalized_hypervolume=normalized_hypervolume(values, objectives) if len(values) >= 2 else None,
        best=best, rungs=rungs,
        plot=compute_plot_data(frame, objectives, ref.values, paper, include_partial, rungs=rungs,
                               importance=importance),
        importance=importance, seeds=compare_seeds(study),
    )


def _no_usable_trial(name: str, counts: dict[str, int], include_partial: bool) -> str:
    states = ", ".join(f"{n} {s}" for s, n in counts.items())
    if include_partial:
        return f"study {name!r} has no COMPLETE or PRUNED trial with values yet ({states})"
    hint = " (add --include-partial to use the PRUNED ones at their last epoch)" if counts.get(PRUNED) else ""
    return f"study {name!r} has no COMPLETE trial trained to its full budget yet ({states}){hint}"


# --- printing ---------------------------------------------------------------------------------

def format_cell(column: str, value: Any) -> str:
    """A table cell: val_acc to 4 decimals, whole numbers with thousands separators, other floats to 4 digits."""
    import numbers

    import pandas as pd

    if value is None or pd.isna(value):
        return "–"
    if isinstance(value, (bool, str)) or not isinstance(value, numbers.Real):
        return str(value)
    if column == VAL_ACC:
        return f"{float(value):.4f}"
    if isinstance(value, numbers.Integral) or column in COUNT_METRICS and float(value).is_integer():
        return f"{int(value):,}"
    return f"{float(value):.4g}"


def front_table(report: Report, include_partial: bool = False) -> "Table":
    """The front as a rich table: trial, (state), objectives, searched params, epochs trained."""
    from rich.table import Table

    chosen = ", ".join(f"{o.metric} {_ARROWS.get(o.direction, '')}" for o in report.objectives)
    table = Table(title=f"Pareto front of {report.study_name}: {len(report.front)} of {report.usable} "
                        f"usable trials ({chosen})")
    columns = ["trial", *(["state"] if include_partial else []), *report.metrics, *report.param_keys,
               EPOCHS_TRAINED]
    headers = {MACS: "MACs", EPOCHS_TRAINED: "epochs trained"}
    for c in columns:
        table.add_column(headers.get(c, c), justify="left" if c == "state" else "right", no_wrap=True)
    for _, row in report.front.iterrows():
        table.add_row(*(format_cell(c, row[c]) for c in columns))
    return table


def hypervolume_line(report: Report) -> str:
    """The hypervolume as a share of the box between the usable trials' best and worst values."""
    logs = [_NAMES.get(o.metric, o.metric) for o in report.objectives if o.metric in LOG_SCALED]
    box = "of the box between the study's best and worst values"
    if report.normalized_hypervolume is None:
        return f"hypervolume: n/a as a share {box} ({report.usable} usable trial; needs 2)"
    scale = f" ({', '.join(logs)} on a log scale)" if logs else ""
    return f"hypervolume: {report.normalized_hypervolume:.1%} {box}{scale}"


def rung_lines(rungs: Sequence[RungCorrelation]) -> list[str]:
    """One line per rung: the Spearman correlation of its val_acc with the final one, or why it is n/a."""
    lines = []
    for rung in rungs:
        n = len(rung.trials)
        count = f"{n} full-budget trial{'' if n == 1 else 's'}"
        head = f"rung at epoch {rung.epoch}:"
        if n < MIN_RUNG_TRIALS:
            lines.append(f"{head} n/a ({count}; needs {MIN_RUNG_TRIALS})")
        elif rung.spearman is None:
            lines.append(f"{head} n/a (all {count} have the same val_acc there or at epoch {rung.final_epoch})")
        else:
            line = (f"{head} Spearman {rung.spearman:.2f} between val_acc there and at epoch {rung.final_epoch} "
                    f"({count})")
            if rung.spearman < WEAK_RUNG:
                line += " — weakly informative: a rung after the first lr drop (leave out grace_period, or set budget.rungs) would rank on less noise"
            lines.append(line)
    return lines


def summary_lines(report: Report) -> list[str]:
    """Trials by state, hypervolume (share of the box, then raw beside its reference point), best per
    objective, knee point, how informative each rung is, importance, and what the study says."""
    from .findings import study_says_lines
    from .importance import importance_lines

    states = ", ".join(f"{n} {s}" for s, n in report.counts.items())
    if report.fail_reasons:
        states += " (FAIL: " + ", ".join(f"{n} {r}" for r, n in report.fail_reasons.items()) + ")"
    units = " × ".join(o.metric for o in report.objectives)
    # Plain numbers (no separators) so the point can be passed back as --reference.
    ref = ", ".join(f"{o.metric}={v:.10g}" for o, v in zip(report.objectives, report.reference.values))
    lines = [
        f"trials: {states}",
        hypervolume_line(report),
        f"raw hypervolume: {report.hypervolume:.6g} ({units}) against reference point ({ref}) "
        f"[{report.reference.source}]",
    ]
    for o in report.objectives:
        trial, value = report.best[o.metric]
        lines.append(f"best {o.metric} ({o.direction}): {format_cell(o.metric, value)} (trial {trial})")
    if report.plot.knee is not None:
        row = report.front[report.front["trial"] == report.plot.knee].iloc[0]
        at = ", ".join(f"{o.metric} {format_cell(o.metric, row[o.metric])}" for o in report.objectives)
        lines.append(f"knee point: trial {report.plot.knee} ({at}): nearest the ideal point, "
                     "each objective scaled to [0, 1] over the front")
    lines += rung_lines(report.rungs)
    if report.importance is None:
        return lines
    if report.importance.available:   # else the n/a line is said once, in "what the study says"
        lines += importance_lines(report.importance)
    return lines + study_says_lines(report.seeds, report.importance)


def make_console() -> "Console":
    """Rich console: no markup (paths may hold brackets); wide when not a terminal so tables don't fold."""
    from rich.console import Console

    console = Console(highlight=False, markup=False, soft_wrap=True)
    if not console.is_terminal:
        console.width = max(console.width, 200)
    return console
