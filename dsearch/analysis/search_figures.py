"""Plotly figures of how a search went, beside the front's own (plots.py), and the whole set by id.

Learning curves of the front's trials (val_acc per epoch), the running hypervolume over trials, how well
each rung's val_acc ranks the full-budget trials (one scatter per rung, titled with its Spearman
correlation), and each objective's hyperparameter importance (bars). They draw the same PlotData as the
front figures (plots.compute_plot_data); `build_figures` puts them all, front figures first, in one dict
keyed by a stable id (the HTML div id and the dashboard's graph id).
"""

from __future__ import annotations

import math
from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ..metrics import VAL_ACC
from .plots import (
    DOMINATED,
    FRONT,
    PlotData,
    STATUS_COLORS,
    format_value,
    axis_label,
    build_3d_figure,
    build_pair_figure,
    objective_pairs,
)


def _integer_axis(title: str, largest: float) -> dict:
    """An axis of whole numbers (epochs, trial numbers) with at most ~10 "nice" ticks."""
    step = next(s * 10**e for e in range(12) for s in (1, 2, 5) if s * 10**e >= largest / 10)
    return dict(title=title, tick0=0, dtick=step)


def build_curves_figure(data: PlotData) -> go.Figure:
    """Validation accuracy per epoch of the front's trials."""
    fig = go.Figure()
    for curve in data.curves:
        fig.add_trace(go.Scatter(
            x=list(range(1, len(curve.val_acc) + 1)), y=list(curve.val_acc), mode="lines",
            name=f"trial {curve.trial}" + (" (knee)" if curve.trial == data.knee else ""),
            line=dict(width=3 if curve.trial == data.knee else 1.5),
        ))
    fig.update_layout(
        title="Learning curves of the Pareto-front trials",
        xaxis=_integer_axis("epoch", max((len(c.val_acc) for c in data.curves), default=1)),
        yaxis=dict(title=axis_label(VAL_ACC)), template="plotly_white",
    )
    return fig


def build_history_figure(data: PlotData) -> go.Figure:
    """Running hypervolume of the usable trials against trial number."""
    units = " × ".join(o.metric for o in data.objectives)
    reference = ", ".join(format_value(r) for r in data.reference) if data.reference else "none"
    fig = go.Figure(go.Scatter(
        x=list(data.history.trials), y=list(data.history.hypervolume), mode="lines+markers",
        line=dict(shape="hv"), name="hypervolume",
    ))
    fig.update_layout(
        title=f"Hypervolume over trials (reference point: {reference})",
        xaxis=_integer_axis("trial number", max(data.history.trials, default=1)),
        yaxis=dict(title=f"hypervolume ({units})"),
        template="plotly_white",
    )
    return fig


RUNGS_PER_ROW = 3


def _rung_title(rung: Any) -> str:
    rho = "n/a" if rung.spearman is None else f"{rung.spearman:.2f}"
    return f"rung at epoch {rung.epoch}: Spearman {rho} ({len(rung.trials)} trials)"


def build_rungs_figure(data: PlotData) -> go.Figure:
    """Per rung, val_acc at the rung (x) against val_acc at the full budget (y), one marker per full-budget
    trial; each panel titled with the rung's Spearman rank correlation."""
    rungs = data.rungs
    cols = min(RUNGS_PER_ROW, len(rungs))
    rows = math.ceil(len(rungs) / cols)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=[_rung_title(r) for r in rungs],
                        horizontal_spacing=0.08, vertical_spacing=0.25 / rows)
    for i, rung in enumerate(rungs):
        row, col = divmod(i, cols)
        fig.add_trace(go.Scatter(
            x=list(rung.rung_val_acc), y=list(rung.final_val_acc), mode="markers", name=f"epoch {rung.epoch}",
            marker=dict(size=8, color=STATUS_COLORS[DOMINATED], line=dict(width=0.5, color="#333333")),
            customdata=list(rung.trials), showlegend=False, hoverinfo="text",
            text=[f"<b>trial {t}</b><br>val_acc at epoch {rung.epoch}: {x:.4f}<br>"
                  f"val_acc at epoch {rung.final_epoch}: {y:.4f}"
                  for t, x, y in zip(rung.trials, rung.rung_val_acc, rung.final_val_acc)],
        ), row=row + 1, col=col + 1)
        fig.update_xaxes(title_text=f"val_acc at epoch {rung.epoch}", row=row + 1, col=col + 1)
        fig.update_yaxes(title_text=f"val_acc at epoch {rung.final_epoch}", row=row + 1, col=col + 1)
    fig.update_layout(
        title="How well each rung ranks the full-budget trials (Spearman rank correlation with the final val_acc)",
        template="plotly_white", hovermode="closest", height=max(560, 420 * rows),
    )
    return fig


def _ranked(data: PlotData) -> list[Any]:
    """The objectives whose importance has shares to draw (not constant, not n/a)."""
    return [o for o in (data.importance.objectives if data.importance is not None else ()) if o.shares]


def build_importance_figure(data: PlotData) -> go.Figure:
    """One horizontal bar chart per objective, stacked (long dotted keys need the room on the left): each
    hyperparameter's share of importance, largest on top."""
    ranked, imp = _ranked(data), data.importance
    heights = [len(o.shares) + 1 for o in ranked]
    height = 160 + 32 * sum(heights) + 80 * len(ranked)   # pixels: margins, bars, a gap per panel
    fig = make_subplots(rows=len(ranked), cols=1, subplot_titles=[f"importance for {o.metric}" for o in ranked],
                        row_heights=heights, vertical_spacing=80 / height)
    for i, o in enumerate(ranked):
        keys, shares = [k for k, _ in reversed(o.shares)], [v for _, v in reversed(o.shares)]
        fig.add_trace(go.Bar(
            x=shares, y=keys, orientation="h", name=o.metric, showlegend=False, marker_color=STATUS_COLORS[FRONT],
            text=[f"{v:.2f}" for v in shares], textposition="auto",
            hovertemplate=f"{o.metric}<br>%{{y}}: %{{x:.3f}}<extra></extra>",
        ), row=i + 1, col=1)
        fig.update_xaxes(range=[0, 1], row=i + 1, col=1)
    fig.update_xaxes(title_text="share of importance (sums to 1 per objective)", row=len(ranked), col=1)
    constant = [o.metric for o in imp.objectives if o.constant]
    note = f"; constant: {', '.join(constant)}" if constant else ""
    fig.update_layout(
        title=f"Hyperparameter importance (PED-ANOVA: the top {imp.top} of {imp.trials} COMPLETE full-budget "
              f"trials per objective against all{note})",
        template="plotly_white", height=height,
    )
    return fig


def build_figures(data: PlotData) -> dict[str, go.Figure]:
    """All figures keyed by a stable id (also the HTML div id): pair-X-Y..., front-3d, learning-curves,
    hypervolume, importance when some objective has one, and rungs when some rung has a full-budget trial
    to draw (last)."""
    figures = {}
    for x, y in objective_pairs(data.objectives):
        figures[f"pair-{data.objectives[x].metric}-{data.objectives[y].metric}"] = build_pair_figure(data, x, y)
    if len(data.objectives) == 3:
        figures["front-3d"] = build_3d_figure(data)
    figures["learning-curves"] = build_curves_figure(data)
    figures["hypervolume"] = build_history_figure(data)
    if _ranked(data):
        figures["importance"] = build_importance_figure(data)
    if any(r.trials for r in data.rungs):
        figures["rungs"] = build_rungs_figure(data)
    return figures
