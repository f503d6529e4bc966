"""Plot data (no browser): which trials are front / dominated / excluded, hypervolume history, figures, HTML."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from dsearch.analysis.paper import PaperPoint, paper_column, paper_points
from dsearch.metrics import DEFAULT_OBJECTIVES as OBJECTIVES
from dsearch.metrics import MAXIMIZE, MINIMIZE, Objective
from dsearch.analysis.plots import (
    DOMINATED,
    EXCLUDED,
    FRONT,
    IGNORED,
    classify_trials,
    compute_plot_data,
    render_html,
)
from dsearch.analysis.importance import Importance, StudyImportance
from dsearch.analysis.report import RungCorrelation
from dsearch.analysis.search_figures import build_figures

PAPER = (PaperPoint("densenet_bc100_k12", 0.9549, 769_162, 287_929_692),)


def sample_trials() -> pd.DataFrame:
    """Seven trials: 0, 1, 4 (a duplicate of 1), 5 on the front; 3 dominated; 2 pruned; 6 failed."""
    return pd.DataFrame({
        "trial": [0, 1, 2, 3, 4, 5, 6],
        "state": ["COMPLETE", "COMPLETE", "PRUNED", "COMPLETE", "COMPLETE", "COMPLETE", "FAIL"],
        "val_acc": [0.90, 0.93, 0.50, 0.88, 0.93, 0.95, np.nan],
        "params": [1e6, 2e6, 3e5, 2e6, 2e6, 8e6, np.nan],
        "macs": [3e8, 5e8, 1e8, 6e8, 5e8, 2e9, np.nan],
        "epochs_trained": [4, 4, 1, 4, 4, 4, 0],
        "curve": [[0.5, 0.7, 0.85, 0.9], [0.6, 0.8, 0.9, 0.93], [0.5], [0.4, 0.6, 0.8, 0.88],
                  [0.6, 0.8, 0.9, 0.93], [0.7, 0.9, 0.94, 0.95], []],
        "model.growth_rate": [12, 24, 12, 12, 24, 40, 12],
        "train.lr": [0.1, 0.1, 0.05, 0.1, 0.1, 0.1, 0.1],
    })


def test_trials_are_classified_front_dominated_excluded_ignored():
    status = classify_trials(sample_trials())
    assert status.tolist() == [FRONT, FRONT, EXCLUDED, DOMINATED, FRONT, FRONT, IGNORED]


def test_pruned_trials_join_the_front_only_with_include_partial():
    status = classify_trials(sample_trials(), include_partial=True)
    # The pruned trial has the fewest params and MACs, so it is non-dominated; nothing else changes.
    assert status.tolist() == [FRONT, FRONT, FRONT, DOMINATED, FRONT, FRONT, IGNORED]


def test_trials_short_of_max_epochs_are_excluded():
    trials = sample_trials().assign(max_epochs=[4, 4, 4, 4, 4, 300, 4])
    assert classify_trials(trials).tolist()[5] == EXCLUDED


def test_plot_data_groups_knee_and_curves():
    data = compute_plot_data(sample_trials(), paper=PAPER)
    assert data.front.trials == (0, 1, 4, 5)
    assert data.dominated.trials == (3,)
    assert data.excluded.trials == (2,)
    assert data.excluded.pruned == (True,)
    assert data.front.values.tolist()[0] == [0.90, 1e6, 3e8]
    assert data.knee == 1  # normalised front: (1, 0, 0), (0.4, 1/7, 2/17), (0.4, …), (0, 1, 1)
    assert [c.trial for c in data.curves] == [0, 1, 4, 5]
    assert data.curves[3].val_acc == (0.7, 0.9, 0.94, 0.95)
    assert data.paper == PAPER


def test_hover_shows_configuration_and_epochs_trained():
    hover = compute_plot_data(sample_trials()).front.hover[0]
    assert hover == ("<b>trial 0</b> (COMPLETE)<br>val_acc: 0.9<br>params: 1,000,000<br>"
                     "macs: 300,000,000<br>epochs trained: 4<br>model.growth_rate = 12<br>train.lr = 0.1")


def test_default_reference_and_hypervolume_history_by_hand():
    data = compute_plot_data(sample_trials())
    assert data.reference == pytest.approx((0.0, 8.8e6, 2.2e9))
    assert data.history.trials == (0, 1, 3, 4, 5)  # usable trials only, by trial number
    # Trial 0 alone: 0.9 × (8.8e6 − 1e6) × (2.2e9 − 3e8).
    assert data.history.hypervolume[0] == pytest.approx(0.9 * 7.8e6 * 1.9e9)
    # Trial 1 adds 0.03 × 6.8e6 × 1.7e9; trials 3 and 4 add nothing; trial 5 adds 0.02 × 0.8e6 × 0.2e9.
    second = 0.9 * 7.8e6 * 1.9e9 + 0.03 * 6.8e6 * 1.7e9
    assert data.history.hypervolume[1:4] == pytest.approx((second,) * 3)
    assert data.history.hypervolume[4] == pytest.approx(second + 0.02 * 0.8e6 * 0.2e9)
    assert np.all(np.diff(data.history.hypervolume) >= 0)


def test_given_reference_is_kept():
    data = compute_plot_data(sample_trials(), reference=(0.0, 1e7, 1e10))
    assert data.reference == (0.0, 1e7, 1e10)


def test_only_pruned_trials_give_no_front_no_reference_no_history():
    trials = sample_trials().assign(state="PRUNED")
    data = compute_plot_data(trials)
    assert (data.front.trials, data.knee, data.reference, data.history.trials) == ((), None, None, ())
    assert len(build_figures(data)) == 6


def test_three_objectives_give_three_pairs_a_3d_view_curves_and_hypervolume():
    figures = build_figures(compute_plot_data(sample_trials(), paper=PAPER))
    assert list(figures) == ["pair-params-val_acc", "pair-macs-val_acc", "pair-macs-params",
                             "front-3d", "learning-curves", "hypervolume"]
    assert figures["front-3d"].data[0].type == "scatter3d"


def test_two_objectives_have_no_3d_view():
    objectives = (Objective(metric="val_acc", direction=MAXIMIZE), Objective(metric="params", direction=MINIMIZE))
    figures = build_figures(compute_plot_data(sample_trials(), objectives))
    assert list(figures) == ["pair-params-val_acc", "learning-curves", "hypervolume"]


def test_pair_figure_draws_front_dominated_pruned_and_paper_as_svg_markers():
    pair = build_figures(compute_plot_data(sample_trials(), paper=PAPER))["pair-params-val_acc"]
    assert [t.type for t in pair.data] == ["scatter"] * 4
    front, dominated, excluded, paper = pair.data
    assert list(front.x) == [1e6, 2e6, 2e6, 8e6] and front.marker.opacity == 1.0
    assert list(dominated.customdata) == [3] and dominated.marker.opacity < 1.0
    assert list(excluded.marker.symbol) == ["x"] and list(front.marker.symbol) == ["circle"] * 4
    assert paper.text == ("densenet_bc100_k12",) and paper.mode == "markers+text"
    assert pair.layout.xaxis.title.text == "params"
    assert pair.layout.yaxis.title.text == "validation accuracy (fraction)"
    assert pair.layout.annotations[0].text == "knee: trial 1"


def test_paper_points_are_labelled_as_test_error_and_hover_as_test_accuracy():
    figures = build_figures(compute_plot_data(sample_trials(), paper=PAPER))
    paper = figures["pair-params-val_acc"].data[-1]
    assert paper.name == "paper, test error (Huang et al. 2017)"
    assert paper.hovertemplate == ("<b>%{text}</b> (Huang et al. 2017)<br>params: %{x:,}<br>test accuracy: "
                                   "%{y:.4f} (the paper's test set, not a validation split)<extra>paper</extra>")
    assert "test accuracy" not in figures["pair-macs-params"].data[-1].hovertemplate  # no accuracy drawn there
    three_d = figures["front-3d"].data[-1]
    assert three_d.name == "paper, test error (Huang et al. 2017)" and "test accuracy: %{z:.4f}" in three_d.hovertemplate


def test_macs_axis_is_labelled_and_log_scaled_when_it_spans_100x():
    pair = build_figures(compute_plot_data(sample_trials()))["pair-macs-params"]
    assert pair.layout.xaxis.title.text == "MACs (multiply-accumulates, batch 1)"
    assert (pair.layout.xaxis.type, pair.layout.yaxis.type) == ("linear", "linear")  # 1e8..2e9 is 20x
    wide = sample_trials().assign(macs=[3e8, 5e8, 1e6, 6e8, 5e8, 2e9, np.nan])
    log_pair = build_figures(compute_plot_data(wide))["pair-macs-params"]
    assert log_pair.layout.xaxis.type == "log"
    assert log_pair.layout.annotations[0].x == pytest.approx(np.log10(5e8))  # plotly wants log10 here


def test_learning_curves_are_the_front_trials():
    curves = build_figures(compute_plot_data(sample_trials()))["learning-curves"]
    assert [t.name for t in curves.data] == ["trial 0", "trial 1 (knee)", "trial 4", "trial 5"]
    assert list(curves.data[0].x) == [1, 2, 3, 4]


def test_figures_come_in_html_order_pairs_first():
    figures = list(build_figures(compute_plot_data(sample_trials(), OBJECTIVES, paper=PAPER)).values())
    assert [f.layout.title.text for f in figures][:2] == ["val_acc (maximize) vs params (minimize)",
                                                          "val_acc (maximize) vs macs (minimize)"]
    assert len(figures) == 6


def test_html_embeds_plotlyjs_once_and_needs_no_cdn(tmp_path):
    html = render_html(build_figures(compute_plot_data(sample_trials(), paper=PAPER)))
    assert "<script src=" not in html and "<link" not in html  # nothing fetched from a CDN
    assert html.count("plotly.js v") >= 1 and len(html) > 3_000_000
    for key in ("pair-params-val_acc", "front-3d", "learning-curves", "hypervolume"):
        assert f'id="{key}"' in html
    assert render_html({}, "empty").count("<section") == 0


def sample_rungs() -> tuple[RungCorrelation, ...]:
    """Rungs at epochs 1 and 2 of sample_trials' full-budget trials (max_epochs 4), the second n/a."""
    return (RungCorrelation(1, 4, (0, 1, 3, 5, 7), (0.5, 0.6, 0.4, 0.7, 0.3), (0.9, 0.93, 0.88, 0.95, 0.8), 0.8123),
            RungCorrelation(2, 4, (0, 1, 3), (0.7, 0.8, 0.6), (0.9, 0.93, 0.88), None))


def test_rungs_figure_one_panel_per_rung_titled_with_spearman():
    data = compute_plot_data(sample_trials(), rungs=sample_rungs())
    assert data.rungs == sample_rungs()
    figures = build_figures(data)
    assert list(figures)[-1] == "rungs" and len(figures) == 7
    rungs = figures["rungs"]
    assert [t.type for t in rungs.data] == ["scatter", "scatter"]
    first, second = rungs.data
    assert list(first.x) == [0.5, 0.6, 0.4, 0.7, 0.3] and list(first.y) == [0.9, 0.93, 0.88, 0.95, 0.8]
    assert list(first.customdata) == [0, 1, 3, 5, 7] and list(second.customdata) == [0, 1, 3]
    assert first.text[0] == "<b>trial 0</b><br>val_acc at epoch 1: 0.5000<br>val_acc at epoch 4: 0.9000"
    assert [a.text for a in rungs.layout.annotations] == ["rung at epoch 1: Spearman 0.81 (5 trials)",
                                                         "rung at epoch 2: Spearman n/a (3 trials)"]
    assert (first.xaxis, second.xaxis) == ("x", "x2")  # side by side
    assert rungs.layout.xaxis2.title.text == "val_acc at epoch 2"
    assert rungs.layout.yaxis.title.text == "val_acc at epoch 4"


def test_rungs_wrap_after_three_panels_and_no_figure_without_trials():
    many = tuple(RungCorrelation(e, 9, (0, 1), (0.5, 0.6), (0.8, 0.9), None) for e in (1, 2, 3, 4))
    rungs = build_figures(compute_plot_data(sample_trials(), rungs=many))["rungs"]
    assert [t.xaxis for t in rungs.data] == ["x", "x2", "x3", "x4"]
    assert rungs.layout.xaxis4.domain == rungs.layout.xaxis.domain  # second row, first column
    empty = (RungCorrelation(1, 4, (), (), (), None),)
    assert "rungs" not in build_figures(compute_plot_data(sample_trials(), rungs=empty))
    assert "rungs" not in build_figures(compute_plot_data(sample_trials()))


IMPORTANCE = StudyImportance(12, 5, (
    Importance("val_acc", "maximize", (("train.lr", 0.7), ("model.growth_rate", 0.2), ("train.momentum", 0.1))),
    Importance("params", "minimize", (("model.growth_rate", 0.9), ("train.lr", 0.06), ("train.momentum", 0.04))),
    Importance("macs", "minimize", (), constant=True),
))


def test_importance_figure_one_bar_chart_per_objective_before_the_rungs():
    figures = build_figures(compute_plot_data(sample_trials(), rungs=sample_rungs(), importance=IMPORTANCE))
    assert list(figures)[-2:] == ["importance", "rungs"] and len(figures) == 8
    bars = figures["importance"]
    assert [t.type for t in bars.data] == ["bar", "bar"]  # macs is constant: no panel
    val_acc, params = bars.data
    assert list(val_acc.y) == ["train.momentum", "model.growth_rate", "train.lr"]  # largest on top
    assert list(val_acc.x) == [0.1, 0.2, 0.7] and list(params.text) == ["0.04", "0.06", "0.90"]
    assert (val_acc.orientation, val_acc.xaxis, params.xaxis) == ("h", "x", "x2")  # stacked panels
    assert [a.text for a in bars.layout.annotations] == ["importance for val_acc", "importance for params"]
    assert bars.layout.title.text == ("Hyperparameter importance (PED-ANOVA: the top 5 of 12 COMPLETE full-budget "
                                      "trials per objective against all; constant: macs)")


def test_no_importance_figure_when_na_or_every_objective_constant():
    assert "importance" not in build_figures(compute_plot_data(sample_trials()))
    assert "importance" not in build_figures(compute_plot_data(sample_trials(),
                                                               importance=StudyImportance(9, 0, ())))
    constant = StudyImportance(12, 5, (Importance("val_acc", "maximize", (), constant=True),))
    assert "importance" not in build_figures(compute_plot_data(sample_trials(), importance=constant))


def test_html_summary_is_escaped_preformatted_text_above_the_figures():
    figures = build_figures(compute_plot_data(sample_trials()))
    html = render_html(figures, "t", ["what the study says:", "  a <b> & c"])
    assert '<pre style="white-space: pre-wrap">what the study says:\n  a &lt;b&gt; &amp; c</pre>' in html
    assert html.index('id="summary"') < html.index('id="pair-params-val_acc"')
    assert 'id="summary"' not in render_html(figures, "t")


# --- the paper's reference points (Table 2, priced by dsearch.net.cost) ------------------------


def test_paper_column_follows_dataset_and_augmentation():
    assert [paper_column("cifar10", False), paper_column("cifar10", True)] == ["C10", "C10+"]
    assert [paper_column("cifar100", False), paper_column("cifar100", True)] == ["C100", "C100+"]
    assert paper_column("svhn", True) is None


def test_paper_densenet_bc100_k12_on_c10_plus_is_95_49_percent_769162_params():
    points = {p.name: p for p in paper_points("cifar10", augment=True)}
    assert list(points) == ["densenet40_k12", "densenet100_k12", "densenet100_k24",
                            "densenet_bc100_k12", "densenet_bc250_k24", "densenet_bc190_k40"]
    assert points["densenet_bc100_k12"] == PaperPoint("densenet_bc100_k12", 0.9549, 769_162, 287_929_692)
    assert points["densenet_bc190_k40"] == PaperPoint("densenet_bc190_k40", 0.9654, 25_624_430, 9_301_945_740)


def test_paper_cifar100_points_are_priced_with_100_classes_and_skip_missing_entries():
    points = {p.name: p for p in paper_points("cifar100", augment=False)}
    assert "densenet_bc190_k40" not in points  # "–" in the paper's C100 column
    assert points["densenet_bc100_k12"] == PaperPoint("densenet_bc100_k12", 0.7585, 800_032, 287_960_472)
    assert points["densenet40_k12"].val_acc == 0.7245


def test_paper_has_no_points_outside_cifar():
    assert paper_points("svhn", augment=False) == [] and paper_points("imagenet", augment=True) == []
