"""`dsearch pareto`: print a study's full-budget front and summary, write CSV and HTML, save dashboard figures.

The summary gives the hypervolume as a share of the box between the study's best and worst values (and the
raw one against its reference point), when the study has its space how well each rung's val_acc ranks
the full-budget trials (Spearman rank correlation with the final val_acc), each hyperparameter's importance
per objective (PED-ANOVA over the COMPLETE full-budget trials), and "what the study says": each seed trial
against the best full-budget trial at similar params, and the hyperparameters that matter most. The HTML
page carries the same summary above its figures.

Everything is checked before anything is written, and the one write into the study (the dashboard
figures, as study system attrs) comes last and only while no `dsearch run` holds the study's lock. A study whose
search was tracked to MLflow (or `--mlflow URI`) gets pareto.html and pareto.csv on its parent run, and its front
trials' child runs the tag dsearch.front=true (search/tracking.py).

The study is a study directory (SQLite inside it), or `--storage URL [--study NAME]` with no local folder
needed: the space then comes from the copy stored in the study, and pareto.csv / pareto.html go to
`studies/NAME/` (created on demand, where `dsearch run` would put the study's folder) unless --csv / --html
say otherwise.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer

from ..analysis.outputs import (CSV_FILE, HTML_FILE, csv_text, figure_ids, html_text, json_text, save_dashboard_figures,
                                write_files)
from ..analysis.report import (Report, build_report, front_table, make_console, parse_reference, select_objectives,
                               summary_lines)
from ..analysis.reuse import REUSE_DIR
from ..errors import UserError
from ..search.io import open_study_with_space
from ..search.lock import StudyLease, StudyLock
from ..search.storage import display_url, storage_url
from ..search.tracking import publish_front
from .app import app

if TYPE_CHECKING:
    import optuna

    from ..analysis.reuse import ReuseResult

STUDY_DIR_HELP = "study directory, e.g. studies/c10 (optional with --storage)"
STORAGE_HELP = "Optuna RDB URL, e.g. postgresql://USER@HOST:PORT/DB (default: SQLite in the study dir)"
STUDY_HELP = "study name in --storage (default: the study dir's, or the only one there)"


def output_dir(study_dir: Path | None, study_name: str) -> Path:
    """Where a command writes next to a study: its directory, else studies/NAME (as `dsearch run` names it)."""
    return Path(study_dir) if study_dir is not None else Path("studies") / study_name


def study_args(study_dir: Path | None, storage: str | None, study_name: str) -> str:
    """How to name this study again on the command line (the password, if any, hidden)."""
    if storage is None:
        return str(study_dir)
    where = f"{study_dir} " if study_dir is not None else ""
    return f"{where}--storage {display_url(storage)} --study {study_name}"


def pareto_command(study_dir: Path | None, storage: str | None = None, objectives: str | None = None,
                   csv: Path | None = None, html_path: Path | None = None, reference: str | None = None,
                   include_partial: bool = False, study_name: str | None = None,
                   json_path: Path | None = None, mlflow: str | None = None) -> Report:
    """Print the front and its summary, write CSV and HTML, save the figures for the dashboard."""
    from ..analysis.search_figures import build_figures

    study, space = open_study_with_space(study_dir, storage, study_name)
    chosen = select_objectives(study, objectives)
    report = build_report(study, chosen, include_partial, parse_reference(reference, chosen), space)
    out_dir = output_dir(study_dir, study.study_name)

    console = make_console()
    console.print(f"study {report.study_name} ({display_url(storage_url(study_dir, storage))})")
    console.print(front_table(report, include_partial))
    summary = summary_lines(report)
    for line in summary:
        console.print(line)

    figures = build_figures(report.plot)
    title = f"dsearch Pareto front: {report.study_name} ({', '.join(o.metric for o in chosen)})"
    html_target = Path(html_path or out_dir / HTML_FILE)
    reuse = front_reuse(study, report, out_dir, console)
    reuse_dir = out_dir / REUSE_DIR
    links = [(f"trial {n}", os.path.relpath((reuse_dir / f"trial-{n}.html").resolve(), html_target.parent.resolve()))
             for n in reuse]
    html_out, csv_out, *json_out = write_files(
        [("--html", html_target, html_text(figures, title, summary, links)),
         ("--csv", csv or out_dir / CSV_FILE, csv_text(report))]
        + ([("--json", json_path, json_text(report))] if json_path else []))
    if reuse:
        write_reuse_pages(reuse, report.study_name, reuse_dir)
        console.print(f"feature reuse (paper Fig. 5): {len(reuse)} of {len(report.front)} front trials in {reuse_dir}/")
    holder = StudyLock(out_dir).holder()
    lease = StudyLease(storage_url(study_dir, storage), study.study_name).holder() if storage else None
    if holder is not None or lease is not None:
        where = (f"pid {holder}) holds {out_dir}" if holder is not None
                 else f"pid {lease['pid']} on host {lease['host']}) runs the study")
        console.print(f"dashboard figures not saved: a `dsearch run` ({where}; "
                      "run `dsearch pareto` again after it ends")
    else:
        ids = save_dashboard_figures(study, figures, figure_ids(chosen, include_partial, figures))
        console.print(f"dashboard: {len(ids)} figures saved in the study "
                      f"(`dsearch dashboard {study_args(study_dir, storage, study.study_name)}`)")
    publish_front(study, space, [Path(html_out), Path(csv_out)], [int(n) for n in report.front["trial"]], mlflow,
                  storage_url(study_dir, storage), say=console.print)
    console.print(f"HTML: {html_out}")
    console.print(f"CSV: {csv_out}")
    if json_out:
        console.print(f"JSON: {json_out[0]}")
    return report


def front_reuse(study: "optuna.Study", report: Report, out_dir: Path, console) -> dict[int, "ReuseResult"]:
    """The Fig. 5 reuse data of every front trial that has a checkpoint, read before anything is written (the
    weights are dropped once summarised). A trial whose checkpoint is missing or unreadable is named and
    skipped: the front report doesn't depend on it."""
    from ..analysis.export import trial_weights
    from ..analysis.reuse import compute_reuse

    results = {}
    numbers = [int(n) for n in report.front["trial"]]
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}   # one read of the study, not one per trial
    if numbers:
        console.print(f"reading the checkpoints of {len(numbers)} front trials for their feature-reuse figures…")
    for number in numbers:
        try:
            _, weights = trial_weights(trials[number], out_dir)
            results[number] = compute_reuse(weights)
        except UserError as e:
            console.print(f"no reuse figure for trial {number}: {e}")
    return results


def write_reuse_pages(results: dict[int, "ReuseResult"], study_name: str, folder: Path) -> dict[int, Path]:
    """OUT_DIR/reuse/trial-N.{csv,html} as `dsearch reuse STUDY --trial N` names them, sharing one plotly.min.js."""
    from ..analysis.reuse import write_plotly_js, write_result

    pages = {n: write_result(r, folder, f"trial-{n}", f"Feature reuse (DenseNet Fig. 5): trial {n} of {study_name}",
                             include_plotlyjs="directory")[1] for n, r in results.items()}
    if pages:
        write_plotly_js(folder)
    return pages


@app.command()
def pareto(
    study_dir: Optional[Path] = typer.Argument(None, help=STUDY_DIR_HELP),
    objectives: Optional[str] = typer.Option(None, "--objectives",
                                             help="comma list, a subset of the study's (default: all)"),
    csv: Optional[Path] = typer.Option(None, "--csv", help="front as CSV (default: STUDY_DIR/pareto.csv, "
                                                           "or studies/NAME/pareto.csv with --storage alone)"),
    html: Optional[Path] = typer.Option(None, "--html", help="plots as HTML (default: STUDY_DIR/pareto.html, "
                                                             "or studies/NAME/pareto.html with --storage alone)"),
    reference: Optional[str] = typer.Option(
        None, "--reference", help="reference point of the raw hypervolume, comma list in objective order (raw "
                                  "units; default: space.yaml's, else 0 / 1.1 × the largest)"),
    include_partial: bool = typer.Option(False, "--include-partial",
                                         help="add PRUNED trials at their last epoch"),
    storage: Optional[str] = typer.Option(None, "--storage", help=STORAGE_HELP),
    study: Optional[str] = typer.Option(None, "--study", help=STUDY_HELP),
    json_path: Optional[Path] = typer.Option(None, "--json", help="also write the summary as JSON here (raw and "
                                                                  "normalised hypervolume, rungs, importance, "
                                                                  "seed trials, front)"),
    mlflow: Optional[str] = typer.Option(None, "--mlflow", help="MLflow tracking URI to attach the front to "
                                         "(default: where the study's search was tracked, if it was)"),
) -> None:
    """The Pareto front of full-budget trials: table, hypervolume, rung correlations, importance, what the study
    says, CSV, HTML, dashboard figures."""
    pareto_command(study_dir, storage, objectives, csv, html, reference, include_partial, study, json_path, mlflow)
