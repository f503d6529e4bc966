"""`dsearch replay`: replay searches on a study's recorded learning curves with a simulated clock.

Each method × seed is one search by the same engine as `dsearch run`, on W simulated workers that train a
sampled configuration by reading its recorded run from the table. Prints, per method, the median share of
the table's optimum hypervolume at the end and at 10/25/50/100 % of the time full-budget random search
needs for num_samples, the time to 90 % and 95 %, epochs trained, epochs spent on trials that end below the
table's median accuracy, partial-budget points on the front the user sees, and paired Wilcoxon p-values
against the default method (the one `dsearch run` uses for the space). Seed s runs the sampler with the
space's seed + s: seed 0 is the search the space describes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional

import numpy as np
import typer

from ..errors import UserError
from .app import app
from .pareto import STORAGE_HELP, STUDY_HELP

REPLAY_METRICS = ("val_acc", "params", "macs")


def load_table(study_dir: Path | None, storage: str | None, study_name: str | None) -> Any:
    """The table: a study folder (its study.db, or a committed study.db.gz) or --storage/--study."""
    from ..search.io import open_study_with_space
    from ..search.table import open_table_db, table_of

    if study_dir is None and storage is None:
        raise UserError("give a TABLE study folder, or --storage URL --study NAME")
    folder = open_table_db(study_dir) if study_dir is not None else None
    study, space = open_study_with_space(folder, storage, study_name)
    if space is None:
        raise UserError(f"study {study.study_name!r} has no stored space; pass --space SPACE.yaml")
    return table_of(study, space), space


def replay_space(table_space: Any, space_path: Path | None, num_samples: int | None) -> Any:
    """The space replayed: the table's, or --space's budget, objectives and sampler seed over the table's
    params; num_samples from --num-samples. The sampler type is each method's."""
    from ..search.io import load_space

    space = load_space(space_path) if space_path is not None else table_space
    bad = [o.metric for o in space.objectives if o.metric not in REPLAY_METRICS]
    if bad:
        raise UserError(f"objectives: a replay knows {', '.join(REPLAY_METRICS)}, not {bad[0]} (the table records "
                        "val_acc per epoch; params and MACs are closed-form)")
    if space.budget.max_epochs > table_space.budget.max_epochs:
        raise UserError(f"budget.max_epochs: {space.budget.max_epochs} is past the table's "
                        f"{table_space.budget.max_epochs} epochs; use a space with max_epochs ≤ "
                        f"{table_space.budget.max_epochs}")
    budget = space.budget.model_copy(update={"num_samples": num_samples} if num_samples else {})
    sampler = space.sampler.model_copy(update={"type": None if space.sampler.type == "grid" else space.sampler.type,
                                               "repeats": 1})
    return space.model_copy(update={"budget": budget, "sampler": sampler})


def replay_command(study_dir: Path | None, storage: str | None, study_name: str | None, space_path: Path | None,
                   methods: str | None, seeds: int, workers: int | None, num_samples: int | None,
                   json_path: Path | None, html_path: Path | None, trace_path: Path | None,
                   jobs: int | None, quiet: bool = False) -> dict[str, Any]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from ..analysis.replay import Scale, bands, build_figure, share_histories, summarize, write_html
    from ..search.methods import METHODS, TIME_BASE, available, default_method, unknown_methods
    from ..search.replay import replay_many
    from ..search.table import optimum_points

    if seeds < 1:
        raise UserError(f"--seeds: must be ≥ 1, got {seeds}")
    if workers is not None and workers < 1:
        raise UserError(f"--workers: must be ≥ 1, got {workers}")
    if num_samples is not None and num_samples < 1:
        raise UserError(f"--num-samples: must be ≥ 1, got {num_samples}")
    for p in (json_path, html_path, trace_path):
        if p is not None and not Path(p).parent.is_dir():
            raise UserError(f"{p}: its folder {Path(p).parent} does not exist")
    table, table_space = load_table(study_dir, storage, study_name)
    space = replay_space(table_space, space_path, num_samples)
    default = default_method(space)
    names = [m.strip() for m in methods.split(",") if m.strip()] if methods else [default] + [
        m for m in available() if m not in (default, "space") and METHODS[m].by_default]
    unknown = unknown_methods(names)
    if unknown:
        raise UserError(f"--methods: unknown method {unknown[0]!r}; methods: {', '.join(METHODS)}")
    missing = [n for n in names if n not in available()]
    if missing:
        raise UserError(f"--methods: {missing[0]} needs Syne Tune, which is not installed; "
                        "pip install 'dsearch[bench]' (syne-tune), or leave it out")
    workers = workers or space.budget.max_concurrent_trials
    rows = optimum_points(table, space)
    if len(rows) == 0:
        raise UserError(f"the table has no run of {space.budget.max_epochs} epochs: no optimum to "
                        "measure against (a table needs full-budget trials)")
    run_names = names + ([TIME_BASE] if TIME_BASE not in names else [])
    jobs = jobs or os.cpu_count() or 1
    say = (lambda *a: None) if quiet else print
    say(f"table: {table.describe()}")
    say(f"replaying {len(names)} methods × {seeds} seeds of {space.name}: {space.budget.num_samples} samples, "
        f"{workers} workers, on {jobs} processes; dsearch's rungs {space.milestones or 'none'} "
        f"({space.rung_placement}), anchors' grace · rf^k {space.budget.milestones or 'none'} (reduction factor "
        f"{space.budget.reduction_factor:g})")
    with Progress(TextColumn("replay"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  disable=quiet, transient=True) as bar:
        task = bar.add_task("replay", total=len(run_names) * seeds)
        runs = replay_many(table, space, run_names, seeds, workers, jobs, lambda: bar.advance(task))
    scale = Scale(rows, space.objectives)
    fronts = {n: METHODS[n].front for n in run_names}
    time_base = float(np.median([r.end for r in runs[TIME_BASE]]))
    median_acc = float(np.median(rows[:, [o.metric for o in space.objectives].index("val_acc")]))
    shown = {n: runs[n] for n in names}
    histories = share_histories(shown, fronts, scale)
    result = summarize(shown, histories, fronts, scale, default, time_base, median_acc, space.budget.max_epochs)
    result.update(table=table.describe(), space=space.name, seeds=seeds, workers=workers,
                  num_samples=space.budget.num_samples, rungs=space.milestones,
                  geometric_rungs=space.budget.milestones,
                  reduction_factor=space.budget.reduction_factor)
    if not quiet:
        print_result(result, names)
    if json_path is not None:
        Path(json_path).write_text(json.dumps(result, indent=1, default=_jsonable) + "\n")
        say(f"wrote {json_path}")
    if html_path is not None:
        grid, curves = bands(shown, histories)
        fig = build_figure(grid, curves, default, f"dsearch replay: {space.name} on {seeds} seeds, {workers} workers")
        write_html(fig, html_path)
        say(f"wrote {html_path}")
    if trace_path is not None:
        first = runs[names[0]][0]
        lines = [json.dumps({"number": t.number, "params": t.params, "state": t.state, "epochs_trained": t.epochs})
                 for t in first.trials]
        Path(trace_path).write_text("\n".join(lines) + "\n")
        say(f"wrote {trace_path} ({names[0]}, seed 0: {len(lines)} trials)")
    return result


def _jsonable(x: Any) -> Any:
    if isinstance(x, np.generic):
        return x.item()
    raise TypeError(f"not JSON-able: {type(x).__name__}")


def _fmt(x: float | None, pct: bool = False) -> str:
    if x is None:
        return "never"
    return f"{100 * x:.1f}%" if pct else f"{x:,.0f}"


def _p(x: float | None) -> str:
    return "–" if x is None else f"{x:.3g}"


def print_result(result: dict[str, Any], names: list[str]) -> None:
    from rich.table import Table

    from ..analysis.report import make_console

    console = make_console()
    t = Table(title=f"median over {result['seeds']} seeds; hypervolume as % of the table's optimum; time in "
                    f"simulated seconds (random search needs {result['time_base_s']:,.0f} s for "
                    f"{result['num_samples']} samples)"
                    + (f"; p: paired Wilcoxon against {result['default']}" if result["default"] in names else
                       f"; no p-values: the default ({result['default']}) is not among the methods"))
    for col in ("method", "final", *[f"at {k}" for k in result["budgets_s"]], "t→90%", "t→95%", "epochs",
                "junk epochs", "partial on front", "p final", "p at 25%", "p t→95%", "driver ms/trial"):
        t.add_column(col, justify="left" if col == "method" else "right")
    for name in names:
        m = result["methods"][name]
        med = m["median"]
        p = m.get("p_value_vs_default", {})
        t.add_row(name + (" (default)" if name == result["default"] else ""), _fmt(med["final_hypervolume"], True),
                  *[_fmt(med[f"hypervolume_at_{k}"], True) for k in result["budgets_s"]],
                  _fmt(med["time_to_90"]), _fmt(med["time_to_95"]), _fmt(med["epochs"]), _fmt(med["junk_epochs"]),
                  f"{med['partial_on_front']:.0f}", _p(p.get("final")) if name != result["default"] else "",
                  _p(p.get("25%")) if name != result["default"] else "",
                  _p(p.get("time_to_95")) if name != result["default"] else "",
                  f"{med['driver_ms_per_trial']:.1f}")
    console.print(t)
    rejected = max(result["methods"][n]["median"]["rejected_share"] or 0.0 for n in names)
    if rejected:
        console.print(f"samples not in the table (rejected before training, as infeasible ones are): up to "
                      f"{rejected:.0%} of a method's samples (median over seeds)")


@app.command()
def replay(
    table: Optional[Path] = typer.Argument(None, help="the table: a study directory (optional with --storage)"),
    storage: Optional[str] = typer.Option(None, "--storage", help=STORAGE_HELP),
    study: Optional[str] = typer.Option(None, "--study", help=STUDY_HELP),
    space: Optional[Path] = typer.Option(None, "--space", help="replay this space's budget, objectives and sampler "
                                         "seed on the table (default: the table's own space)"),
    methods: Optional[str] = typer.Option(None, "--methods", help="comma-separated (default: every method but "
                                          "the slow optuna-gp); see `dsearch replay --list`"),
    seeds: int = typer.Option(20, "--seeds", help="replays per method (seed s: the sampler seed + s)"),
    workers: Optional[int] = typer.Option(None, "--workers", help="simulated workers (default: the space's "
                                          "budget.max_concurrent_trials)"),
    num_samples: Optional[int] = typer.Option(None, "--num-samples", help="trials per search (default: the space's)"),
    json_path: Optional[Path] = typer.Option(None, "--json", help="write the numbers per seed here"),
    html_path: Optional[Path] = typer.Option(None, "--html", help="write hypervolume against time here"),
    trace_path: Optional[Path] = typer.Option(None, "--trace", help="write seed 0 of the first method, one JSON line "
                                              "per trial"),
    jobs: Optional[int] = typer.Option(None, "--jobs", help="processes (default: the CPUs)"),
    list_methods: bool = typer.Option(False, "--list", help="list the methods and exit"),
) -> None:
    """Replay searches on a study's recorded learning curves (simulated clock): methods × seeds, hypervolume vs time."""
    if list_methods:
        from ..search.methods import METHODS

        for m in METHODS.values():
            print(f"{m.name:24s} {m.about}")
        return
    replay_command(table, storage, study, space, methods, seeds, workers, num_samples, json_path, html_path,
                   trace_path, jobs)
