"""Plotly figures of a search's Pareto front, and the one self-contained HTML page the figures go on.

Data first, rendering second (as Optuna's plots): `compute_plot_data` turns a trials
DataFrame into plain NamedTuples that tests can check without a browser; the front's own
figures (a 2-D scatter per pair of objectives, the 3-D one) render them here, and
`render_html` embeds plotly.js once so the page works offline. The figures of how the search
went (learning curves, hypervolume over trials, rungs, importance) and `build_figures`, the
whole set by id, are in search_figures.py.

The trials DataFrame (one row per trial) has columns `trial` (int), `state`
("COMPLETE" / "PRUNED"; other states are ignored), one column per objective,
`epochs_trained` (int), `curve` (list of val_acc per epoch, or None), optionally
`max_epochs`, and the searched parameters as dotted columns (`model.growth_rate`, ...).

How well each rung ranks the full-budget trials (report.rung_correlations) and each objective's
hyperparameter importance (importance.compute_importance) come in as plain data too, like the paper's
points, and are passed through in PlotData for search_figures.py to draw.
The paper's points are test-set numbers, and are labelled so.
"""

from __future__ import annotations

import html
import itertools
import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from ..metrics import DEFAULT_OBJECTIVES, MACS, MEMORY, PARAMS, VAL_ACC, Objective
from .pareto import (
    COMPLETE,
    PRUNED,
    default_reference,
    fidelity_mask,
    hypervolume_history,
    knee_point,
    pareto_mask,
)

FRONT = "front"          # usable for the front and non-dominated
DOMINATED = "dominated"  # usable for the front but dominated
EXCLUDED = "excluded"    # drawn but not usable (partial budget)
IGNORED = "ignored"      # not drawn: other states (FAIL, RUNNING) or non-finite values

AXIS_LABELS = {
    VAL_ACC: "validation accuracy (fraction)",
    PARAMS: "params",
    MACS: "MACs (multiply-accumulates, batch 1)",
    MEMORY: "training memory (predicted peak bytes per step)",
}

# A positive axis spanning at least this ratio is drawn on a log scale.
LOG_AXIS_RATIO = 100.0

STATUS_COLORS = {FRONT: "#d62728", DOMINATED: "#7f7f7f", EXCLUDED: "#1f77b4"}
_OPACITY = {FRONT: 1.0, DOMINATED: 0.35, EXCLUDED: 0.5}
# The paper's numbers are test-set errors (Table 2), drawn as accuracy beside our validation accuracy.
PAPER_TRACE = "paper, test error (Huang et al. 2017)"
_TRACE_NAMES = {
    FRONT: "Pareto front",
    DOMINATED: "dominated",
    EXCLUDED: "partial budget (not in front)",
}


class PointGroup(NamedTuple):
    """Trials of one status; values are raw objective values, shape (k, m)."""

    trials: tuple[int, ...]
    values: np.ndarray
    pruned: tuple[bool, ...]
    hover: tuple[str, ...]


class CurveData(NamedTuple):
    """One trial's validation accuracy (fraction) after epochs 1, 2, ..."""

    trial: int
    val_acc: tuple[float, ...]


class HistoryData(NamedTuple):
    """Running hypervolume (product of the objectives' units) after each usable trial, by trial number."""

    trials: tuple[int, ...]
    hypervolume: tuple[float, ...]


class PlotData(NamedTuple):
    """Everything the figures draw, in raw units."""

    objectives: tuple[Objective, ...]
    reference: tuple[float, ...] | None
    front: PointGroup
    dominated: PointGroup
    excluded: PointGroup
    paper: tuple[Any, ...]  # PaperPoint-like: .name plus one attribute per objective
    knee: int | None        # trial number
    curves: tuple[CurveData, ...]
    history: HistoryData
    # RungCorrelation-like: .epoch, .final_epoch, .trials, .rung_val_acc, .final_val_acc, .spearman (None: n/a)
    rungs: tuple[Any, ...] = ()
    # importance.StudyImportance-like: .trials, .top, .objectives (each .metric, .shares, .constant); None: none
    importance: Any = None


def axis_label(name: str) -> str:
    """The axis title for a metric, naming its unit."""
    return AXIS_LABELS.get(name, name)


def parameter_columns(trials: pd.DataFrame) -> list[str]:
    """The searched-parameter columns: those with a dotted name, in DataFrame order."""
    return [c for c in trials.columns if "." in str(c)]


def format_value(value: Any) -> str:
    if isinstance(value, float) and value.is_integer() and abs(value) >= 1:
        value = int(value)
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return f"{value:,}"
    if isinstance(value, (float, np.floating)):
        return f"{value:.4g}"
    return str(value)


def _hover(row: pd.Series, objectives: Sequence[Objective], params: Sequence[str]) -> str:
    lines = [f"<b>trial {int(row['trial'])}</b> ({row['state']})"]
    lines += [f"{o.metric}: {format_value(row[o.metric])}" for o in objectives]
    lines.append(f"epochs trained: {format_value(row.get('epochs_trained'))}")
    missing = [p for p in params if row[p] is None or (np.isscalar(row[p]) and pd.isna(row[p]))]
    lines += [f"{p} = {format_value(row[p])}" for p in params if p not in missing]
    return "<br>".join(lines)


def classify_trials(
    trials: pd.DataFrame, objectives: Sequence[Objective] = DEFAULT_OBJECTIVES, include_partial: bool = False
) -> pd.Series:
    """Each trial's status (FRONT, DOMINATED, EXCLUDED, IGNORED), indexed like `trials`.

    The front is taken over the usable trials (`fidelity_mask`) in all objectives at once.
    """
    names = [o.metric for o in objectives]
    values = trials[names].to_numpy(dtype=float)
    drawable = np.isfinite(values).all(axis=1) & trials["state"].isin((COMPLETE, PRUNED)).to_numpy()
    max_epochs = trials["max_epochs"] if "max_epochs" in trials else None
    usable = drawable & fidelity_mask(trials["state"], trials.get("epochs_trained"), max_epochs, include_partial)
    status = np.where(drawable, EXCLUDED, IGNORED).astype(object)
    on_front = pareto_mask(values[usable], objectives)
    status[np.flatnonzero(usable)] = np.where(on_front, FRONT, DOMINATED)
    return pd.Series(status, index=trials.index, name="status")


def _group(rows: pd.DataFrame, objectives: Sequence[Objective], params: Sequence[str]) -> PointGroup:
    return PointGroup(
        trials=tuple(int(t) for t in rows["trial"]),
        values=rows[[o.metric for o in objectives]].to_numpy(dtype=float).reshape(len(rows), len(objectives)),
        pruned=tuple(bool(s == PRUNED) for s in rows["state"]),
        hover=tuple(_hover(row, objectives, params) for _, row in rows.iterrows()),
    )


def compute_plot_data(
    trials: pd.DataFrame,
    objectives: Sequence[Objective] = DEFAULT_OBJECTIVES,
    reference: Sequence[float] | None = None,
    paper: Sequence[Any] = (),
    include_partial: bool = False,
    params: Sequence[str] | None = None,
    rungs: Sequence[Any] = (),
    importance: Any = None,
) -> PlotData:
    """The front, dominated and excluded trials, knee, front learning curves and hypervolume history.

    reference: raw units, None for `default_reference` over the usable trials (no
    hypervolume when there are none). params: hover columns, None for the dotted ones.
    rungs: report.RungCorrelation-like, passed through to the rung figure; importance:
    importance.StudyImportance-like, passed through to the importance figure.
    """
    objectives = tuple(objectives)
    params = parameter_columns(trials) if params is None else list(params)
    trials = trials.sort_values("trial", kind="stable")
    status = classify_trials(trials, objectives, include_partial).to_numpy()
    groups = {s: _group(trials[status == s], objectives, params) for s in (FRONT, DOMINATED, EXCLUDED)}

    usable = trials[np.isin(status, (FRONT, DOMINATED))]
    usable_values = usable[[o.metric for o in objectives]].to_numpy(dtype=float)
    if reference is None and len(usable):
        reference = default_reference(usable_values, objectives)
    history = HistoryData((), ())
    if reference is not None:
        reference = tuple(float(r) for r in reference)
        running = hypervolume_history(usable_values, objectives, reference)
        history = HistoryData(tuple(int(t) for t in usable["trial"]), tuple(float(h) for h in running))

    knee = knee_point(usable_values, objectives)
    curves = tuple(
        CurveData(int(row["trial"]), tuple(float(v) for v in row["curve"]))
        for _, row in trials[status == FRONT].iterrows()
        if isinstance(row.get("curve"), (list, tuple, np.ndarray)) and len(row["curve"])
    )
    return PlotData(
        objectives=objectives,
        reference=reference,
        front=groups[FRONT],
        dominated=groups[DOMINATED],
        excluded=groups[EXCLUDED],
        paper=tuple(paper),
        knee=None if knee is None else int(usable["trial"].iloc[knee]),
        curves=curves,
        history=history,
        rungs=tuple(rungs),
        importance=importance,
    )


def objective_pairs(objectives: Sequence[Objective]) -> list[tuple[int, int]]:
    """(x, y) column indices of each 2-D plot: y is the earlier objective (val_acc vs each cost)."""
    return [(j, i) for i, j in itertools.combinations(range(len(objectives)), 2)]


def paper_values(data: PlotData, columns: Sequence[int]) -> tuple[list[str], np.ndarray]:
    """Names and (k, len(columns)) raw values of the paper points that have all these objectives."""
    names = [data.objectives[c].metric for c in columns]
    points = [p for p in data.paper if all(getattr(p, n, None) is not None for n in names)]
    values = np.array([[float(getattr(p, n)) for n in names] for p in points]).reshape(len(points), len(names))
    return [p.name for p in points], values


def paper_hover(data: PlotData, columns: Sequence[int]) -> str:
    """Hover template of the paper's points: their val_acc column is the paper's test accuracy, not ours."""
    lines = ["<b>%{text}</b> (Huang et al. 2017)"]
    for axis, c in zip("xyz", columns):
        metric = data.objectives[c].metric
        if metric == VAL_ACC:
            lines.append(f"test accuracy: %{{{axis}:.4f}} (the paper's test set, not a validation split)")
        else:
            lines.append(f"{metric}: %{{{axis}:,}}")
    return "<br>".join(lines) + "<extra>paper</extra>"


def _axis_type(values: np.ndarray) -> str:
    finite = values[np.isfinite(values)]
    if finite.size and finite.min() > 0 and finite.max() / finite.min() >= LOG_AXIS_RATIO:
        return "log"
    return "linear"


def _groups(data: PlotData) -> list[tuple[str, PointGroup]]:
    return [(FRONT, data.front), (DOMINATED, data.dominated), (EXCLUDED, data.excluded)]


def _marker(status: str, group: PointGroup) -> dict:
    return dict(
        color=STATUS_COLORS[status],
        opacity=_OPACITY[status],
        size=10 if status == FRONT else 8,
        symbol=["x" if p else "circle" for p in group.pruned],
        line=dict(width=0.5 if status == FRONT else 0, color="#333333"),
    )


def _knee_values(data: PlotData) -> np.ndarray | None:
    if data.knee is None:
        return None
    return data.front.values[data.front.trials.index(data.knee)]


def build_pair_figure(data: PlotData, x: int, y: int) -> go.Figure:
    """2-D scatter of objective y against objective x (SVG markers, one per trial and paper point)."""
    fig = go.Figure()
    for status, group in _groups(data):
        fig.add_trace(go.Scatter(
            x=group.values[:, x], y=group.values[:, y], mode="markers", name=_TRACE_NAMES[status],
            marker=_marker(status, group), text=list(group.hover), hoverinfo="text",
            customdata=list(group.trials),
        ))
    names, paper = paper_values(data, (x, y))
    if names:
        fig.add_trace(go.Scatter(
            x=paper[:, 0], y=paper[:, 1], mode="markers+text", name=PAPER_TRACE,
            text=names, textfont=dict(size=10),
            textposition=[("top center", "bottom center")[i % 2] for i in range(len(names))],
            marker=dict(symbol="star", size=12, color="#2ca02c", line=dict(width=1, color="#333333")),
            hovertemplate=paper_hover(data, (x, y)),
        ))
    types = [_axis_type(np.concatenate([g.values[:, c] for _, g in _groups(data)] + [paper[:, k]]))
             for k, c in enumerate((x, y))]
    knee = _knee_values(data)
    if knee is not None:
        position = [math.log10(knee[c]) if t == "log" else knee[c] for c, t in zip((x, y), types)]
        fig.add_annotation(x=position[0], y=position[1], text=f"knee: trial {data.knee}", showarrow=True,
                           arrowhead=2, ax=30, ay=-30)
    ox, oy = data.objectives[x], data.objectives[y]
    fig.update_layout(
        title=f"{oy.metric} ({oy.direction}) vs {ox.metric} ({ox.direction})",
        xaxis=dict(title=axis_label(ox.metric), type=types[0]),
        yaxis=dict(title=axis_label(oy.metric), type=types[1]),
        template="plotly_white", hovermode="closest",
    )
    return fig


def build_3d_figure(data: PlotData) -> go.Figure:
    """3-D scatter of three objectives (WebGL): z is the first objective, x and y the next two."""
    x, y, z = 1, 2, 0
    axes = (x, y, z)
    fig = go.Figure()
    for status, group in _groups(data):
        marker = _marker(status, group)
        marker.update(size=6 if status == FRONT else 4)
        fig.add_trace(go.Scatter3d(
            x=group.values[:, x], y=group.values[:, y], z=group.values[:, z], mode="markers",
            name=_TRACE_NAMES[status], marker=marker, text=list(group.hover), hoverinfo="text",
        ))
    names, paper = paper_values(data, axes)
    if names:
        fig.add_trace(go.Scatter3d(
            x=paper[:, 0], y=paper[:, 1], z=paper[:, 2], mode="markers+text", text=names,
            name=PAPER_TRACE, marker=dict(symbol="diamond", size=6, color="#2ca02c"),
            hovertemplate=paper_hover(data, axes),
        ))
    scene = {}
    for key, (k, c) in zip(("xaxis", "yaxis", "zaxis"), enumerate(axes)):
        column = np.concatenate([g.values[:, c] for _, g in _groups(data)] + [paper[:, k]])
        scene[key] = dict(title=axis_label(data.objectives[c].metric), type=_axis_type(column))
    scene.update(aspectmode="cube", camera=dict(eye=dict(x=1.7, y=1.7, z=0.9)))
    fig.update_layout(title="Pareto front in all three objectives", scene=scene, template="plotly_white",
                      height=720)
    return fig


def render_html(figures: dict[str, go.Figure], title: str = "dsearch Pareto front",
                summary: Sequence[str] = (), links: Sequence[tuple[str, str]] = ()) -> str:
    """One standalone HTML page: the summary lines (if any) as preformatted text, links to the front trials'
    feature-reuse pages (label, relative href), then plotly.js embedded once (no CDN) and one div per figure,
    id = its key. The summary and links are HTML-escaped here; title is HTML."""
    divs = [
        fig.to_html(full_html=False, include_plotlyjs=(i == 0), div_id=key, default_height="560px")
        for i, (key, fig) in enumerate(figures.items())
    ]
    body = "\n".join(f'<section class="figure">\n{div}\n</section>' for div in divs)
    if links:
        items = "".join(f'<li><a href="{html.escape(href)}">{html.escape(label)}</a></li>' for label, href in links)
        body = (f'<section id="reuse">\n<h2>Feature reuse of the front trials (paper Fig. 5)</h2>\n'
                f'<ul>{items}</ul>\n</section>\n{body}')
    if summary:
        text = html.escape("\n".join(summary))
        body = f'<section class="summary" id="summary">\n<pre style="white-space: pre-wrap">{text}</pre>\n</section>\n{body}'
    return (
        "<!DOCTYPE html>\n<html>\n<head>\n<meta charset=\"utf-8\">\n"
        f"<title>{title}</title>\n</head>\n<body>\n<h1>{title}</h1>\n{body}\n</body>\n</html>\n"
    )
