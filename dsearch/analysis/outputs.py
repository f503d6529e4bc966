"""Where the front report goes: CSV, JSON and HTML files, and figures saved in the study for the dashboard.

report.py builds the Report and its summary lines; this module turns them into text (the front's rows as
CSV, the summary as JSON, the summary and figures as one HTML page), writes the files all or none (every
folder is made before any file is written), and stores the figures in the study under fixed graph ids.
"""

from __future__ import annotations

import html
from pathlib import Path
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..errors import UserError
from ..metrics import Objective
from .report import Report

if TYPE_CHECKING:
    import optuna
    import plotly.graph_objects as go

CSV_FILE = "pareto.csv"
HTML_FILE = "pareto.html"


def csv_text(report: Report) -> str:
    """One row per front trial: trial, state, the study's metrics, epochs_trained, searched keys (dotted)."""
    return report.front.to_csv(index=False)


def json_text(report: Report) -> str:
    """The summary as JSON: counts, the raw hypervolume with its reference, its share of the study's box, the
    best trial per objective, the knee, each rung's Spearman correlation, importance, the seed comparisons,
    and the front's rows."""
    import json

    from .findings import seeds_json
    from .importance import importance_json

    summary = {
        "study": report.study_name, "objectives": [o.model_dump() for o in report.objectives],
        "trials": report.counts, "fail_reasons": report.fail_reasons, "usable": report.usable,
        "hypervolume": {"raw": report.hypervolume, "reference": [float(v) for v in report.reference.values],
                        "reference_source": report.reference.source, "share": report.normalized_hypervolume},
        "best": {m: {"trial": t, "value": v} for m, (t, v) in report.best.items()},
        "knee": report.plot.knee,
        "rungs": [{"epoch": r.epoch, "final_epoch": r.final_epoch, "trials": len(r.trials), "spearman": r.spearman}
                  for r in report.rungs],
        "importance": importance_json(report.importance) if report.importance is not None else None,
        "seeds": seeds_json(report.seeds),
        "front": json.loads(report.front.to_json(orient="records")),
    }
    return json.dumps(summary, indent=2) + "\n"


def html_text(figures: dict[str, "go.Figure"], title: str, summary: Sequence[str] = (),
              links: Sequence[tuple[str, str]] = ()) -> str:
    """The summary lines, the links to the front trials' reuse pages (label, relative href) and the figures as
    one self-contained page (plots.render_html)."""
    from .plots import render_html

    return render_html(figures, html.escape(title), summary, links)


def write_files(files: list[tuple[str, Path, str]]) -> list[Path]:
    """Write (option, path, text) files: every folder is made first, so a bad path writes none of them."""
    for option, path, _ in files:
        _guard(option, path, lambda p: p.parent.mkdir(parents=True, exist_ok=True))
    for option, path, text in files:
        _guard(option, path, lambda p: p.write_text(text, encoding="utf-8"))
    return [Path(path) for _, path, _ in files]


def _guard(option: str, path: Path, action: Any) -> None:
    try:
        action(Path(path))
    except OSError as e:
        raise UserError(f"{option} {path}: can't write ({e.strerror or e.__class__.__name__})") from None


def figure_ids(objectives: tuple[Objective, ...], include_partial: bool, keys: Any) -> list[str]:
    """Dashboard graph ids, one per figure and view: `dsearch.val_acc-params.pair-params-val_acc`.

    Fixed ids make a repeated `dsearch pareto` overwrite its figures instead of adding copies
    (optuna-dashboard's default id is a fresh uuid4 per call).
    """
    view = "dsearch." + "-".join(o.metric for o in objectives) + (".partial" if include_partial else "")
    return [f"{view}.{key}" for key in keys]


def save_dashboard_figures(study: "optuna.Study", figures: dict[str, "go.Figure"], ids: list[str]) -> list[str]:
    """Store the figures in the study (system attrs) so optuna-dashboard shows them; returns their ids."""
    from optuna_dashboard import save_plotly_graph_object

    return [save_plotly_graph_object(study, fig, graph_object_id=gid) for gid, fig in zip(ids, figures.values())]
