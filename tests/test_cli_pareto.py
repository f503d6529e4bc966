"""`dsearch pareto` and `dsearch dashboard` on small hand-made studies: front, hypervolume, rungs, CSV, HTML, errors."""

from __future__ import annotations

import csv
import json
import math
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
from optuna.distributions import FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial

from dsearch.cli import main
from dsearch.metrics import Objective
from dsearch.analysis.outputs import figure_ids
from dsearch.analysis.report import (RungCorrelation, average_ranks, build_report, choose_reference,
                                     rung_correlations, rung_lines, select_objectives, spearman)
from dsearch.search.io import parse_space
from studies import DIRECTIONS, METRICS, new_study

DISTRIBUTIONS = {"model.growth_rate": IntDistribution(8, 48), "train.lr": FloatDistribution(0.01, 0.3, log=True)}
MAX_EPOCHS = 10
SPACE_YAML = """\
name: toy
data: {name: cifar10, augment: true}
budget: {max_epochs: 10, num_samples: 8}
fixed: {model.variant: densenet-bc, model.depth: 40}
params:
  model.growth_rate: {type: int, low: 8, high: 48}
  train.lr: {type: float, low: 0.01, high: 0.3, log: true}
"""

# (state, val_acc, params, macs, epochs trained, growth_rate, lr, fail_reason)
TRIALS = [
    ("COMPLETE", 0.90, 100_000, 10_000_000, 10, 12, 0.1, None),
    ("COMPLETE", 0.93, 300_000, 40_000_000, 10, 24, 0.05, None),
    ("COMPLETE", 0.88, 200_000, 2_000_000, 10, 16, 0.2, None),   # fewest MACs; dominated by 0 in 2-D
    ("COMPLETE", 0.95, 800_000, 50_000_000, 10, 40, 0.2, None),
    ("PRUNED", 0.97, 150_000, 15_000_000, 3, 20, 0.1, None),      # would dominate 1 and 3 if counted
    ("FAIL", None, None, None, 0, 8, 0.3, "invalid"),
    ("FAIL", None, None, None, 0, 48, 0.01, "over_budget"),
    ("COMPLETE", 0.85, 400_000, 60_000_000, 10, 30, 0.02, None),  # dominated by 1
]


def add_trial(study, state, acc, params, macs, epochs, k, lr, reason, memory=None):
    """Record a trial as the runner does: values only for COMPLETE, last_* attrs for PRUNED."""
    attrs = {"epochs_trained": epochs, "max_epochs": MAX_EPOCHS, "curve": [acc] * epochs if acc else []}
    if memory is not None:
        attrs["memory"] = memory
    if state == "PRUNED":
        attrs.update(last_val_acc=acc, last_params=params, last_macs=macs)
    if reason:
        attrs.update(fail_reason=reason, error="rejected before training")
    study.add_trial(create_trial(
        state=TrialState[state], values=[acc, params, macs] if state == "COMPLETE" else None,
        params={"model.growth_rate": k, "train.lr": lr}, distributions=DISTRIBUTIONS, user_attrs=attrs))


def make_study(study_dir: Path, trials=TRIALS, space: bool = True) -> optuna.Study:
    study_dir.mkdir(parents=True, exist_ok=True)
    study = new_study("toy", f"sqlite:///{study_dir / 'study.db'}")
    for t in trials:
        add_trial(study, *t)
    if space:
        (study_dir / "space.yaml").write_text(SPACE_YAML)
    return study


@pytest.fixture(scope="module")
def template_dir(tmp_path_factory):
    """The TRIALS study, built once; tests get copies (a SQLite study is one file)."""
    path = tmp_path_factory.mktemp("template") / "toy"
    make_study(path)
    return path


def copy_study(template_dir: Path, where: Path) -> Path:
    return Path(shutil.copytree(template_dir, where / "toy"))


@pytest.fixture
def study_dir(template_dir, tmp_path):
    return copy_study(template_dir, tmp_path)


def run_pareto(capsys, study_dir, *args):
    """Exit code and stdout of an in-process `dsearch pareto STUDY_DIR ARGS`."""
    code = main(["pareto", str(study_dir), *args])
    return code, capsys.readouterr().out


@pytest.fixture(scope="module")
def two_d(template_dir, tmp_path_factory):
    """`dsearch pareto --objectives val_acc,params` run once: (study_dir, stdout)."""
    study_dir = copy_study(template_dir, tmp_path_factory.mktemp("two_d"))
    return study_dir, pareto_output(study_dir, "--objectives", "val_acc,params")


@pytest.fixture(scope="module")
def three_d(template_dir, tmp_path_factory):
    """`dsearch pareto` (all three objectives) run once: (study_dir, stdout)."""
    study_dir = copy_study(template_dir, tmp_path_factory.mktemp("three_d"))
    return study_dir, pareto_output(study_dir)


def pareto_output(study_dir, *args):
    """stdout of a successful `dsearch pareto`, for module-scoped fixtures (capsys is per test)."""
    import contextlib
    import io

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        assert main(["pareto", str(study_dir), *args]) == 0
    return buffer.getvalue()


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


def dashboard_figures(study_dir):
    from optuna_dashboard._custom_plot_data import get_plotly_graph_objects

    study = optuna.load_study(study_name="toy", storage=f"sqlite:///{study_dir / 'study.db'}")
    return get_plotly_graph_objects(study._storage.get_study_system_attrs(study._study_id))


# --- the front ----------------------------------------------------------------------------------

def test_two_objective_front_csv_and_hand_computed_hypervolume(two_d):
    study_dir, out = two_d
    # Front of the COMPLETE trials in (val_acc ↑, params ↓): 0, 1, 3; 2 is dominated by 0, 7 by 1,
    # and PRUNED 4 doesn't count. Sorted by params.
    assert read_csv(study_dir / "pareto.csv") == [
        ["trial", "state", "val_acc", "params", "macs", "epochs_trained", "model.growth_rate", "train.lr"],
        ["0", "COMPLETE", "0.9", "100000", "10000000", "10", "12", "0.1"],
        ["1", "COMPLETE", "0.93", "300000", "40000000", "10", "24", "0.05"],
        ["3", "COMPLETE", "0.95", "800000", "50000000", "10", "40", "0.2"],
    ]
    # Reference (default): val_acc 0, params 1.1 × 800,000 = 880,000. Slabs along params:
    #   100k→300k at 0.90: 180,000;  300k→800k at 0.93: 465,000;  800k→880k at 0.95: 76,000  → 721,000.
    assert "\nraw hypervolume: 721000 (val_acc × params) against reference point (val_acc=0, params=880000) " \
           "[default: 0 for a maximised objective, 1.1 × the largest usable value for a minimised one]\n" in out
    # As a share of the box between the usable trials' best and worst values: val_acc 0.85..0.95 scaled to
    # 1..0, log10(params) 5..log10(8e5) to 0..1. Front 0 (0.5, 0), 1 (0.2, log 3 / log 8 = 0.528), 3 (0, 1):
    #   0.5 × 1 + (0.5 − 0.2) × (1 − 0.528) = 0.6415.
    assert "\nhypervolume: 64.2% of the box between the study's best and worst values (params on a log scale)\n" in out
    assert "trials: 5 COMPLETE, 1 PRUNED, 2 FAIL (FAIL: 1 invalid, 1 over_budget)" in out
    assert "best val_acc (maximize): 0.9500 (trial 3)" in out
    assert "best params (minimize): 100,000 (trial 0)" in out
    # Knee: scaled to [0, 1] over the front, trial 1 sits at (0.4, 0.286), distance 0.49 < 1 for 0 and 3.
    assert "knee point: trial 1 (val_acc 0.9300, params 300,000)" in out
    assert out.endswith(f"HTML: {study_dir / 'pareto.html'}\nCSV: {study_dir / 'pareto.csv'}\n")


def test_table_lists_front_trials_with_objectives_params_and_epochs(two_d):
    lines = two_d[1].splitlines()
    header = next(line for line in lines if "trial" in line and "epochs trained" in line)
    assert [c.strip() for c in header.strip("┃ ").split("┃")] == [
        "trial", "val_acc", "params", "MACs", "model.growth_rate", "train.lr", "epochs trained"]
    rows = [[c.strip() for c in line.strip("│ ").split("│")] for line in lines if line.startswith("│")]
    assert rows == [["0", "0.9000", "100,000", "10,000,000", "12", "0.1", "10"],
                    ["1", "0.9300", "300,000", "40,000,000", "24", "0.05", "10"],
                    ["3", "0.9500", "800,000", "50,000,000", "40", "0.2", "10"]]


def test_three_objective_front_and_hypervolume(three_d):
    study_dir, out = three_d
    # Trial 2 has the fewest MACs, so it joins the front in 3-D; 7 is still dominated by 1.
    assert [r[0] for r in read_csv(study_dir / "pareto.csv")[1:]] == ["0", "2", "1", "3"]
    # Reference (0, 880,000, 1.1 × 60M = 66M). Slices along MACs, each an area in (val_acc, params):
    #   2M→10M   {2}:        0.88 × 680k                 = 598,400  × 8M  = 4.7872e12
    #   10M→40M  {2, 0}:     0.90 × 780k                 = 702,000  × 30M = 2.106e13
    #   40M→50M  {2, 0, 1}:  0.90 × 200k + 0.93 × 580k   = 719,400  × 10M = 7.194e12
    #   50M→66M  all:        721,000 (the 2-D value)                × 16M = 1.1536e13
    #   total 4.45772e13
    assert "raw hypervolume: 4.45772e+13 (val_acc × params × macs)" in out
    assert "reference point (val_acc=0, params=880000, macs=66000000)" in out
    # Normalised (val_acc 0.95..0.85 → 0..1, log params 1e5..8e5, log MACs 2e6..6e7 → 0..1), the front is
    # 0 (0.5, 0, 0.473), 1 (0.2, 0.528, 0.881), 2 (0.7, 1/3, 0), 3 (0, 1, 0.946: no volume). Slices along MACs:
    #   0→0.473 {2}: 0.3 × 2/3 = 0.2;  0.473→0.881 {2, 0}: 0.5;  0.881→1 {2, 0, 1}: 0.5 + 0.3 × 0.472 = 0.6415
    #   0.2 × 0.473 + 0.5 × 0.408 + 0.6415 × 0.119 = 0.3749.
    assert "hypervolume: 37.5% of the box between the study's best and worst values (params, MACs on a log scale)" \
           in out
    assert "best macs (minimize): 2,000,000 (trial 2)" in out


def test_html_has_every_plot_div_and_the_papers_networks(three_d):
    page = (three_d[0] / "pareto.html").read_text()
    for div in ("pair-params-val_acc", "pair-macs-val_acc", "pair-macs-params", "front-3d", "learning-curves",
                "hypervolume", "rungs"):
        assert f'id="{div}"' in page
    # cifar10 with augmentation → the C10+ column of Table 2, all six networks.
    for name in ("densenet40_k12", "densenet100_k24", "densenet_bc100_k12", "densenet_bc190_k40"):
        assert name in page


def test_figures_are_saved_for_the_dashboard_once_per_view(three_d, capsys):
    study_dir, out = three_d
    first = dashboard_figures(study_dir)
    keys = ["pair-params-val_acc", "pair-macs-val_acc", "pair-macs-params", "front-3d", "learning-curves",
            "hypervolume", "rungs"]
    objectives = tuple(Objective(metric=m, direction=d) for m, d in zip(METRICS, DIRECTIONS))
    assert sorted(first) == sorted(figure_ids(objectives, False, keys))
    assert "data" in json.loads(first["dsearch.val_acc-params-macs.pair-params-val_acc"])
    assert "dashboard: 7 figures saved" in out
    # Run again: same ids, overwritten rather than added.
    assert run_pareto(capsys, study_dir)[0] == 0
    assert sorted(dashboard_figures(study_dir)) == sorted(first)


def test_reference_override_and_output_paths(study_dir, capsys):
    html_path, csv_path = study_dir / "out" / "front.html", study_dir / "out" / "front.csv"
    code, out = run_pareto(capsys, study_dir, "--objectives", "val_acc,params", "--reference", "0.5,1e6",
                           "--html", str(html_path), "--csv", str(csv_path))
    assert code == 0
    # (300k−100k)(0.90−0.5) + (800k−300k)(0.93−0.5) + (1e6−800k)(0.95−0.5) = 80,000 + 215,000 + 90,000.
    assert "raw hypervolume: 385000 (val_acc × params) against reference point (val_acc=0.5, params=1000000) " \
           "[--reference]" in out
    assert "hypervolume: 64.2% of the box" in out  # the share doesn't depend on the reference point
    assert html_path.exists() and len(read_csv(csv_path)) == 4
    assert not (study_dir / "pareto.html").exists() and not (study_dir / "pareto.csv").exists()


def test_include_partial_adds_pruned_trials_marked_as_such(study_dir, capsys):
    code, out = run_pareto(capsys, study_dir, "--objectives", "val_acc,params", "--include-partial")
    assert code == 0
    rows = read_csv(study_dir / "pareto.csv")
    # PRUNED 4 (0.97 at 150k, after 3 of 10 epochs) dominates 1 and 3; 0 keeps the fewest params.
    assert [r[:2] + r[5:6] for r in rows[1:]] == [["0", "COMPLETE", "10"], ["4", "PRUNED", "3"]]
    assert any(line.startswith("│") and "PRUNED" in line for line in out.splitlines())  # a state column


def test_without_space_yaml_there_are_no_paper_points(study_dir, capsys):
    (study_dir / "space.yaml").unlink()
    code, out = run_pareto(capsys, study_dir, "--objectives", "val_acc,params")
    assert code == 0
    page = (study_dir / "pareto.html").read_text()
    assert "densenet_bc100_k12" not in page
    # No space, no rungs: the section and its figure are left out.
    assert "rung" not in out and 'id="rungs"' not in page
    assert "hypervolume: 64.2% of the box" in out


def test_reference_comes_from_the_space_objectives_when_they_have_one():
    objectives = (Objective(metric="val_acc", direction="maximize"), Objective(metric="params", direction="minimize"))
    values = [[0.9, 1e5], [0.95, 8e5]]

    from dsearch.search import schema as sp

    class Space:  # the objectives as a space file gives them: a reference for val_acc only
        objectives = [sp.SpaceObjective(metric="val_acc", direction="maximize", reference=0.5),
                      sp.SpaceObjective(metric="params", direction="minimize")]

    assert choose_reference(objectives, values, None, None).values == pytest.approx((0.0, 880_000.0))
    ref = choose_reference(objectives, values, None, Space)
    assert ref.values == pytest.approx((0.5, 880_000.0)) and "space.yaml" in ref.source
    assert choose_reference(objectives, values, (0.1, 2e6), Space).values == (0.1, 2e6)


# --- what the study says: importance and the seed recipe ---------------------------------------------

def test_a_small_study_says_importance_is_na_and_has_no_seed(three_d):
    study_dir, out = three_d
    assert "\nwhat the study says:\n  no seed trial (a space's seed_trials are queued first)\n" \
           "  importance: n/a (needs ≥ 10 COMPLETE trials, this study has 5)\n" in out
    assert "importance (PED-ANOVA" not in out   # the n/a line is said once
    page = (study_dir / "pareto.html").read_text()
    assert 'id="summary"' in page and "importance: n/a (needs ≥ 10 COMPLETE trials, this study has 5)" in page
    assert 'id="importance"' not in page


def importance_study(study_dir: Path) -> optuna.Study:
    """A seed trial (0: k 10, lr 0.1, val_acc 0.90 at 100,000 params), then 12 COMPLETE trials whose val_acc
    is set by lr alone (0.95 at lr 0.05, 0.1 less per decade away) and params by k alone (1000 k²), MACs all
    equal, plus PRUNED and rejected trials that must not count."""
    study = make_study(study_dir, trials=[])
    study.enqueue_trial({"model.growth_rate": 10, "train.lr": 0.1})
    seed = study.ask(DISTRIBUTIONS)
    for key, value in {"epochs_trained": MAX_EPOCHS, "max_epochs": MAX_EPOCHS, "curve": [0.9] * 10}.items():
        seed.set_user_attr(key, value)
    study.tell(seed, [0.9, 100_000, 10_000_000])
    for i, k in enumerate([8, 10, 13, 16, 19, 22, 25, 28, 31, 34, 37, 40]):
        lr = 0.01 * 30 ** (((i * 5) % 12) / 11)           # lr spread over 0.01..0.3, in no order of k
        acc = 0.95 - 0.1 * abs(math.log10(lr / 0.05))
        add_trial(study, "COMPLETE", acc, 1000 * k * k, 10_000_000, MAX_EPOCHS, k, lr, None)
    add_trial(study, "PRUNED", 0.99, 100_000, 1_000, 3, 10, 0.3, None)
    add_trial(study, "FAIL", None, None, None, 0, 48, 0.01, "over_budget")
    return study


def test_dsearch_pareto_prints_importance_and_what_the_study_says(tmp_path, capsys):
    importance_study(tmp_path / "s")
    code, out = run_pareto(capsys, tmp_path / "s", "--json", str(tmp_path / "summary.json"))
    assert code == 0
    lines = out.splitlines()
    start = lines.index("importance (PED-ANOVA over 13 COMPLETE full-budget trials: how the top 5 of each objective "
                        "differ from all; shares sum to 1):")
    assert lines[start + 1].startswith("  val_acc: train.lr ")
    assert lines[start + 2].startswith("  params: model.growth_rate ")
    assert lines[start + 3] == "  macs: constant (the same in all 13 trials)"
    assert lines[start + 4:start + 6] == [
        "what the study says:",
        # Trial 2 (k 10) is the only other one within ±10 % of 100,000 params: lr 0.01 · 30^(5/11) = 0.04693,
        # val_acc 0.95 − 0.1 · |log10(0.04693 / 0.05)| = 0.94724.
        "  seed trial 0: val_acc 0.9000 at epoch 10 (100,000 params); best full-budget trial within ±10% of its "
        "params: trial 2, val_acc 0.9472 at epoch 10 (100,000 params), +0.0472; it differs in train.lr 0.1 → 0.04693"]
    assert lines[start + 6].startswith("  what matters for val_acc: train.lr ")
    assert lines[start + 7].startswith("  what matters for params: model.growth_rate ")
    assert lines[start + 8] == "  macs: constant over the COMPLETE trials"
    summary = json.loads((tmp_path / "summary.json").read_text())
    importance = summary["importance"]
    assert (importance["method"], importance["trials"], importance["top_trials"]) == ("PED-ANOVA", 13, 5)
    assert max(importance["objectives"]["val_acc"], key=importance["objectives"]["val_acc"].get) == "train.lr"
    assert sum(importance["objectives"]["params"].values()) == pytest.approx(1.0)
    assert importance["objectives"]["macs"] == "constant"
    assert [(s["trial"], s["best_similar"]["trial"]) for s in summary["seeds"]] == [(0, 2)]
    page = (tmp_path / "s" / "pareto.html").read_text()
    assert "what the study says:" in page and page.index('id="importance"') < page.index('id="rungs"')
    assert "dashboard: 8 figures saved" in out   # the 7 of test_figures_are_saved_for_the_dashboard + importance


# --- the hypervolume as a share of the box -------------------------------------------------------

def test_normalized_hypervolume_of_three_hand_made_points(tmp_path, capsys):
    # val_acc 0.75, 0.6875, 0.5 → 0, 0.25, 1; log10 params 6, 5, 4 → 1, 0.5, 0; log10 MACs 9, 8, 7 → 1, 0.5, 0
    # (all exact in binary, so the share is exactly 0.1875 and prints as 18.8%).
    # Normalised points (0, 1, 1), (0.25, 0.5, 0.5), (1, 0, 0): only the middle one has volume, 0.75 × 0.5 × 0.5.
    trials = [("COMPLETE", 0.75, 1_000_000, 1_000_000_000, 10, 40, 0.1, None),
              ("COMPLETE", 0.6875, 100_000, 100_000_000, 10, 24, 0.1, None),
              ("COMPLETE", 0.5, 10_000, 10_000_000, 10, 8, 0.1, None)]
    study = make_study(tmp_path / "s", trials=trials)
    report = build_report(study, select_objectives(study, None))
    assert report.normalized_hypervolume == pytest.approx(0.1875)
    # The raw one stays in the report, against its reference (0, 1.1e6, 1.1e9). Slices along MACs:
    #   1e7→1e8 {2}: 0.5 × 1.09e6;  1e8→1e9 {2, 1}: + 0.1875 × 1e6;  1e9→1.1e9 all: + 0.0625 × 0.1e6.
    assert report.hypervolume == pytest.approx(545_000 * 0.9e8 + 732_500 * 0.9e9 + 738_750 * 0.1e9)
    assert report.reference.values == pytest.approx((0.0, 1.1e6, 1.1e9))
    code, out = run_pareto(capsys, tmp_path / "s")
    assert code == 0
    assert "\nhypervolume: 18.8% of the box between the study's best and worst values (params, MACs on a log scale)\n" \
           in out
    # --json keeps both numbers for machines: the raw one with its reference, and the share.
    import json

    assert main(["pareto", str(tmp_path / "s"), "--json", str(tmp_path / "summary.json")]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["hypervolume"]["share"] == pytest.approx(0.1875)
    assert summary["hypervolume"]["raw"] == pytest.approx(report.hypervolume)
    assert summary["hypervolume"]["reference"] == pytest.approx([0.0, 1.1e6, 1.1e9])
    assert summary["trials"] == {"COMPLETE": 3} and [r["trial"] for r in summary["front"]] == [2, 1, 0]


# --- how informative each rung is ---------------------------------------------------------------

def test_spearman_monotone_reversed_ties_and_constant():
    assert spearman([1, 2, 3, 4, 5], [0.1, 0.5, 0.6, 0.9, 2.0]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4, 5], [9, 7, 5, 3, 1]) == pytest.approx(-1.0)
    # Ties take the average rank: x → 1, 2.5, 2.5, 4; y → 1, 3, 2, 4. Pearson of the ranks:
    #   Σ dx dy = 2.25 + 2.25 = 4.5; Σ dx² = 4.5; Σ dy² = 5 → 4.5 / √22.5 = √0.9.
    assert list(average_ranks([1, 2, 2, 3])) == [1, 2.5, 2.5, 4]
    assert spearman([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(math.sqrt(0.9))
    assert math.isnan(spearman([0.5] * 5, [1, 2, 3, 4, 5])) and math.isnan(spearman([1], [2]))


def test_spearman_agrees_with_scipy():
    from scipy.stats import spearmanr

    rng = np.random.default_rng(0)
    for _ in range(20):
        x, y = rng.integers(0, 6, 12).astype(float), rng.integers(0, 6, 12).astype(float)  # many ties
        assert spearman(x, y) == pytest.approx(spearmanr(x, y).statistic)


# Final val_acc (epoch 4) rises with the trial number: ranks 1..6.
RUNG_FINAL = [0.60, 0.65, 0.70, 0.75, 0.80, 0.85]
# Epoch 2: ranks 1, 3, 2, 4, 6, 5 → Σd² = 4, ρ = 1 − 6 · 4 / (6 · 35) = 0.8857.
RUNG_EPOCH2 = [0.50, 0.52, 0.51, 0.56, 0.58, 0.57]
# Epoch 1, in tied pairs: ranks 5.5, 3.5, 5.5, 1.5, 3.5, 1.5 against 1..6:
#   Σ dx dy = −12, Σ dx² = 16, Σ dy² = 17.5 → ρ = −12 / √280 = −0.7171.
RUNG_EPOCH1 = [0.30, 0.20, 0.30, 0.10, 0.20, 0.10]
RUNG_SPACE = SPACE_YAML.replace("budget: {max_epochs: 10, num_samples: 8}",
                                "budget: {max_epochs: 4, num_samples: 8, rungs: [1, 2]}")


def make_rung_study(study_dir: Path, full: int = 6) -> optuna.Study:
    """`full` COMPLETE trials trained 4 epochs (curves above), a PRUNED one and a COMPLETE one short of epoch 4."""
    study = make_study(study_dir, trials=[], space=False)
    rows = [("COMPLETE", [RUNG_EPOCH1[i], RUNG_EPOCH2[i], 0.5, RUNG_FINAL[i]]) for i in range(full)]
    rows += [("PRUNED", [0.9, 0.9]), ("COMPLETE", [0.9, 0.9, 0.9])]
    for i, (state, curve) in enumerate(rows):
        values = [curve[-1], 100_000 * (i + 1), 10_000_000 * (i + 1)]
        attrs = {"epochs_trained": len(curve), "max_epochs": 4, "curve": curve}
        if state == "PRUNED":
            attrs.update(last_val_acc=values[0], last_params=values[1], last_macs=values[2])
        study.add_trial(create_trial(
            state=TrialState[state], values=values if state == "COMPLETE" else None,
            params={"model.growth_rate": 12, "train.lr": 0.1}, distributions=DISTRIBUTIONS, user_attrs=attrs))
    (study_dir / "space.yaml").write_text(RUNG_SPACE)
    return study


def test_rung_correlations_by_hand_from_a_study(tmp_path):
    study = make_rung_study(tmp_path / "s")
    report = build_report(study, select_objectives(study, None), space=parse_space(RUNG_SPACE))
    first, second = report.rungs
    assert first == RungCorrelation(1, 4, (0, 1, 2, 3, 4, 5), tuple(RUNG_EPOCH1), tuple(RUNG_FINAL),
                                    pytest.approx(-12 / math.sqrt(280)))
    assert (second.epoch, second.trials, second.rung_val_acc) == (2, (0, 1, 2, 3, 4, 5), tuple(RUNG_EPOCH2))
    assert second.spearman == pytest.approx(1 - 24 / 210)
    assert report.plot.rungs == report.rungs  # the HTML draws the same numbers


def test_rung_lines_in_dsearch_pareto(tmp_path, capsys):
    make_rung_study(tmp_path / "s")
    code, out = run_pareto(capsys, tmp_path / "s")
    assert code == 0
    assert "\nrung at epoch 1: Spearman -0.72 between val_acc there and at epoch 4 (6 full-budget trials) — weakly " \
           "informative: a rung after the first lr drop (leave out grace_period, or set budget.rungs) would rank on " \
           "less noise\n" in out
    assert "\nrung at epoch 2: Spearman 0.89 between val_acc there and at epoch 4 (6 full-budget trials)\n" in out
    assert 'id="rungs"' in (tmp_path / "s" / "pareto.html").read_text()


def test_rungs_need_five_full_budget_trials(tmp_path, capsys):
    make_rung_study(tmp_path / "s", full=3)
    code, out = run_pareto(capsys, tmp_path / "s")
    assert code == 0
    assert "\nrung at epoch 1: n/a (3 full-budget trials; needs 5)\nrung at epoch 2: n/a (3 full-budget trials; " \
           "needs 5)\n" in out


def test_rung_correlations_skip_rungs_at_or_past_max_epochs_and_short_curves():
    frame = pd.DataFrame({
        "trial": [0, 1, 2, 3, 4, 5, 6, 7],
        "state": ["COMPLETE"] * 5 + ["PRUNED", "COMPLETE", "FAIL"],
        "curve": [[0.1, 0.2, 0.3], [0.2, 0.3, 0.4], [0.3, 0.4, 0.5], [0.4, 0.5, 0.6], [0.5, 0.5, 0.5],
                  [0.9, 0.9], [0.9, 0.9], []],
    })
    rungs = rung_correlations(frame, [2, 1, 3, 5], 3)
    assert [r.epoch for r in rungs] == [1, 2]
    assert rungs[0].trials == (0, 1, 2, 3, 4) and rungs[0].final_val_acc == (0.3, 0.4, 0.5, 0.6, 0.5)
    # Epoch 1 ranks 1..5 against final ranks 1, 2, 3.5, 5, 3.5: Σ dx dy = 8, Σ dx² = 10, Σ dy² = 9.5.
    assert rungs[0].spearman == pytest.approx(8 / math.sqrt(95))
    # Every COMPLETE trial at 0.5 after epoch 1: no ranking there, so n/a (not 0, not NaN).
    constant = rung_correlations(frame.assign(curve=[[0.5, 0.1 * i, 0.2 * i] for i in range(8)]), [1], 3)
    assert constant[0].trials == (0, 1, 2, 3, 4, 6) and constant[0].spearman is None


def test_rung_lines_wording():
    def rung(epoch, n, rho):
        return RungCorrelation(epoch, 90, tuple(range(n)), (0.5,) * n, (0.9,) * n, rho)

    assert rung_lines([rung(10, 8, 0.8123), rung(30, 8, 0.31), rung(10, 1, None), rung(30, 6, None)]) == [
        "rung at epoch 10: Spearman 0.81 between val_acc there and at epoch 90 (8 full-budget trials)",
        "rung at epoch 30: Spearman 0.31 between val_acc there and at epoch 90 (8 full-budget trials) — weakly "
        "informative: a rung after the first lr drop (leave out grace_period, or set budget.rungs) would rank on "
        "less noise",
        "rung at epoch 10: n/a (1 full-budget trial; needs 5)",
        "rung at epoch 30: n/a (all 6 full-budget trials have the same val_acc there or at epoch 90)",
    ]
    assert rung_lines([]) == []


# --- dashboard figures ----------------------------------------------------------------------------

HOLD_LOCK = """
import sys, time
from dsearch.search.lock import StudyLock
lock = StudyLock(sys.argv[1]); lock.acquire(); print("held", flush=True); time.sleep(60)
"""


def test_figures_are_not_saved_while_a_run_holds_the_lock(study_dir, capsys):
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(study_dir)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        before = (study_dir / "study.db").read_bytes()
        code, out = run_pareto(capsys, study_dir)
        assert code == 0
        assert f"dashboard figures not saved: a `dsearch run` (pid {holder.pid}) holds {study_dir}" in out
        assert (study_dir / "study.db").read_bytes() == before
        assert dashboard_figures(study_dir) == {}
    finally:
        holder.kill()
        holder.wait()


# --- errors ---------------------------------------------------------------------------------------

def snapshot(study_dir: Path):
    db = study_dir / "study.db"
    return (db.read_bytes(), db.stat().st_mtime_ns, sorted(p.name for p in study_dir.iterdir())) if db.exists() \
        else sorted(p.name for p in study_dir.iterdir()) if study_dir.exists() else None


def assert_one_line_error(capsys, code, *texts):
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("dsearch: error: ") and err.count("\n") == 1, err
    for text in texts:
        assert text in err, err


@pytest.mark.parametrize("args, texts", [
    (["--objectives", "val_acc,acc"], ["unknown objective 'acc'", "the study's objectives are val_acc, params, macs"]),
    (["--objectives", "val_acc,val_acc"], ["named twice"]),
    (["--reference", "0.5"], ["give 3 finite numbers, one per objective (val_acc,params,macs)"]),
    (["--reference", "a,b,c"], ["expected numbers"]),
])
def test_bad_options_are_one_line_errors_and_leave_the_study_alone(study_dir, capsys, args, texts):
    before = snapshot(study_dir)
    assert_one_line_error(capsys, main(["pareto", str(study_dir), *args]), *texts)
    assert snapshot(study_dir) == before


def test_missing_study_directory_and_missing_study_db(tmp_path, capsys):
    assert_one_line_error(capsys, main(["pareto", str(tmp_path / "nope")]), "study directory", "does not exist")
    (tmp_path / "empty").mkdir()
    assert_one_line_error(capsys, main(["pareto", str(tmp_path / "empty")]), "no study at")
    assert list((tmp_path / "empty").iterdir()) == []


def test_empty_study_is_an_error(tmp_path, capsys):
    make_study(tmp_path / "s", trials=[])
    before = snapshot(tmp_path / "s")
    assert_one_line_error(capsys, main(["pareto", str(tmp_path / "s")]), "has no trials yet")
    assert snapshot(tmp_path / "s") == before


def test_no_complete_trial_suggests_include_partial(tmp_path, capsys):
    make_study(tmp_path / "s", trials=[t for t in TRIALS if t[0] != "COMPLETE"])
    before = snapshot(tmp_path / "s")
    assert_one_line_error(capsys, main(["pareto", str(tmp_path / "s")]),
                          "no COMPLETE trial", "1 PRUNED, 2 FAIL", "--include-partial")
    assert snapshot(tmp_path / "s") == before
    assert main(["pareto", str(tmp_path / "s"), "--include-partial"]) == 0
    out = capsys.readouterr().out
    # One usable trial (PRUNED 4) spans no box; no COMPLETE trial reaches epoch 10, so no rung is measured. The
    # space leaves grace_period out: its rung is one epoch after cifar10's first lr drop, at 50% of 10 epochs.
    assert "\nhypervolume: n/a as a share of the box between the study's best and worst values " \
           "(1 usable trial; needs 2)\n" in out
    assert "rung at epoch 6: n/a (0 full-budget trials; needs 5)" in out


def test_errors_have_no_traceback_in_a_real_process(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "dsearch.cli", "pareto", str(tmp_path / "nope")],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("dsearch: error: study directory") and proc.stderr.count("\n") == 1


# --- dashboard ------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str, deadline: float):
    """GET url as JSON, retrying until the server answers or the deadline (time.monotonic) passes."""
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                return json.load(r)
        except OSError:
            if time.monotonic() > deadline:
                return None
            time.sleep(0.2)


def test_dashboard_serves_the_study_and_its_figures_on_localhost(three_d, tmp_path):
    study_dir, _ = three_d  # `dsearch pareto` has saved its figures there
    port = free_port()
    log = tmp_path / "dashboard.log"  # a file, not a pipe nobody reads (a full pipe would stall the server)
    with open(log, "w") as sink:
        proc = subprocess.Popen([sys.executable, "-m", "dsearch.cli", "dashboard", str(study_dir),
                                 "--port", str(port)], stdout=sink, stderr=subprocess.STDOUT)
    try:
        studies = get_json(f"http://127.0.0.1:{port}/api/studies", time.monotonic() + 30)
        assert studies is not None, f"no answer within 30 s (exit status {proc.poll()}): {log.read_text()}"
        assert [(s["study_id"], s["study_name"]) for s in studies["study_summaries"]] == [(1, "toy")]
        detail = get_json(f"http://127.0.0.1:{port}/api/studies/1?after=0", time.monotonic() + 5)
        assert "dsearch.val_acc-params-macs.front-3d" in [g["id"] for g in detail["plotly_graph_objects"]]
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_dashboard_on_a_busy_port_is_a_one_line_error(study_dir, capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        code = main(["dashboard", str(study_dir), "--port", str(busy.getsockname()[1])])
    assert_one_line_error(capsys, code, "can't listen on 127.0.0.1", "pick another")


def test_dashboard_of_a_missing_study_is_a_one_line_error(tmp_path, capsys):
    assert_one_line_error(capsys, main(["dashboard", str(tmp_path / "nope")]), "does not exist")


def test_memory_is_an_axis_of_the_front_where_it_is_not_an_objective(tmp_path, capsys):
    # The same trials with a recorded memory (predicted peak bytes): trial 2 is lightest, 3 heaviest.
    memory = [50_000_000, 90_000_000, 20_000_000, 300_000_000, 60_000_000, 1, 1, 100_000_000]
    make_study(tmp_path / "toy", [(*t, m) for t, m in zip(TRIALS, memory)])
    study_dir = tmp_path / "toy"
    code, out = run_pareto(capsys, study_dir, "--objectives", "val_acc,memory", "--csv", str(tmp_path / "f.csv"))
    assert code == 0
    rows = list(csv.DictReader(open(tmp_path / "f.csv")))
    # Full-budget trials 0 (.90, 50 MB), 1 (.93, 90 MB), 2 (.88, 20 MB), 3 (.95, 300 MB), 7 (.85, 100 MB):
    # 7 is dominated by 0 and 1; the other four make the front.
    assert sorted(int(r["trial"]) for r in rows) == [0, 1, 2, 3]


def test_memory_axis_of_a_study_that_never_recorded_it_is_a_one_line_error(study_dir, capsys):
    assert main(["pareto", str(study_dir), "--objectives", "val_acc,memory"]) == 2
    err = capsys.readouterr().err
    assert "memory is not recorded for every usable trial" in err and err.count("\n") == 1
