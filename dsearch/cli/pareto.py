"""`dsearch pareto`: print a study's full-budget front and summary, write CSV and HTML, save dashboard figures.

Everything is checked before anything is written, and the one write into the study (the dashboard
figures, as study system attrs) comes last and only while no `dsearch run` holds the study's lock.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..analysis.report import (CSV_FILE, HTML_FILE, Report, build_report, figure_ids, front_table, make_console,
                               parse_reference, save_dashboard_figures, select_objectives, summary_lines,
                               write_csv, write_html)
from ..search.io import read_stored_space
from ..search.lock import StudyLock
from ..search.record import open_study, storage_url
from .app import app


def pareto_command(study_dir: Path, storage: str | None = None, objectives: str | None = None,
                   csv: Path | None = None, html_path: Path | None = None, reference: str | None = None,
                   include_partial: bool = False) -> Report:
    """Print the front and its summary, write CSV and HTML, save the figures for the dashboard."""
    from ..analysis.plots import build_figures

    study_dir = Path(study_dir)
    space = read_stored_space(study_dir)
    study = open_study(study_dir, storage, space)
    chosen = select_objectives(study, objectives)
    report = build_report(study, chosen, include_partial, parse_reference(reference, chosen), space)

    console = make_console()
    console.print(f"study {report.study_name} ({storage_url(study_dir, storage)})")
    console.print(front_table(report, include_partial))
    for line in summary_lines(report):
        console.print(line)

    figures = build_figures(report.plot)
    title = f"dsearch Pareto front: {report.study_name} ({', '.join(o.metric for o in chosen)})"
    html_out = write_html(figures, html_path or study_dir / HTML_FILE, title)
    csv_out = write_csv(report, csv or study_dir / CSV_FILE)
    holder = StudyLock(study_dir).holder()
    if holder is not None:
        console.print(f"dashboard figures not saved: a `dsearch run` (pid {holder}) holds {study_dir}; "
                      "run `dsearch pareto` again after it ends")
    else:
        ids = save_dashboard_figures(study, figures, figure_ids(chosen, include_partial, figures))
        console.print(f"dashboard: {len(ids)} figures saved in the study (`dsearch dashboard {study_dir}`)")
    console.print(f"HTML: {html_out}")
    console.print(f"CSV: {csv_out}")
    return report


@app.command()
def pareto(
    study_dir: Path = typer.Argument(..., help="study directory, e.g. studies/c10"),
    objectives: Optional[str] = typer.Option(None, "--objectives",
                                             help="comma list, a subset of the study's (default: all)"),
    csv: Optional[Path] = typer.Option(None, "--csv", help="front as CSV (default: STUDY_DIR/pareto.csv)"),
    html: Optional[Path] = typer.Option(None, "--html", help="plots as HTML (default: STUDY_DIR/pareto.html)"),
    reference: Optional[str] = typer.Option(
        None, "--reference", help="hypervolume reference point, comma list in objective order (raw units; "
                                  "default: space.yaml's, else 0 / 1.1 × the largest)"),
    include_partial: bool = typer.Option(False, "--include-partial",
                                         help="add PRUNED trials at their last epoch"),
    storage: Optional[str] = typer.Option(None, "--storage", help="Optuna RDB URL (default: SQLite in the study dir)"),
) -> None:
    """The Pareto front of full-budget trials: table, hypervolume, CSV, HTML, dashboard figures."""
    pareto_command(study_dir, storage, objectives, csv, html, reference, include_partial)
