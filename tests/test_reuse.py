"""Feature reuse (paper Fig. 5): exact matrices of hand-set networks, the three findings, CSV, `dsearch reuse`."""

from __future__ import annotations

import json
import shutil
import math

import numpy as np
import pytest
import torch
from optuna.distributions import IntDistribution
from optuna.trial import TrialState, create_trial

from dsearch.analysis.reuse import (FIGURE_ID, classifier_layers, compute_reuse, csv_text, finding_lines, html_text,
                                    read_csv, write_reuse)
from dsearch.cli import main
from dsearch.errors import UserError
from dsearch.net.config import ModelConfig
from dsearch.net.model import build_model
from dsearch.training.config import RunConfig
from studies import new_study

# ------------------------------------------------------------------ hand-set weights

KERNEL = torch.tensor([0.0, 1.0, 2.0] * 3).reshape(3, 3)   # |mean| 1 over the 9 positions


def pattern(shape: tuple[int, ...]) -> torch.Tensor:
    """Mean |x| exactly 1 over every input map, signs alternating over output channels (checks the absolute value)."""
    out = shape[0]
    signs = torch.tensor([(-1.0) ** o for o in range(out)]).reshape(out, *([1] * (len(shape) - 1)))
    magnitude = KERNEL if shape[2:] == (3, 3) else torch.ones(shape[2:])
    return signs * magnitude.expand(shape[1:]) if len(shape) > 2 else signs * torch.ones(shape)


def set_sources(weight: torch.Tensor, m0: int, k: int, values: list[float]) -> None:
    """Source s's input maps (s=0: the first m0, then k each) get mean |w| = values[s]."""
    with torch.no_grad():
        assert weight.shape[1] == m0 + k * (len(values) - 1), (weight.shape, m0, k, values)
        for s, v in enumerate(values):
            lo, hi = (0, m0) if s == 0 else (m0 + (s - 1) * k, m0 + s * k)
            weight[:, lo:hi] = v * pattern(tuple(weight[:, lo:hi].shape))


def hand_set(model, layout, value):
    """layout: (m0, k, n) per block, stated by hand; pixel (s, t) of block b := value(b, s, t), t = n+1 for T/C.

    Returns the expected matrices (NaN where s ≥ ℓ)."""
    expected = []
    feats = model.features
    for b, (m0, k, n) in enumerate(layout, start=1):
        block = getattr(feats, f"denseblock{b}")
        for ell in range(1, n + 1):
            set_sources(getattr(block, f"denselayer{ell}").conv1.weight, m0, k, [value(b, s, ell) for s in range(ell)])
        last = getattr(feats, f"transition{b}").conv.weight if b < len(layout) else model.classifier.weight
        set_sources(last, m0, k, [value(b, s, n + 1) for s in range(n + 1)])
        e = np.full((n + 1, n + 1), np.nan)
        for t in range(1, n + 2):
            for s in range(min(t, n + 1)):
                e[s, t - 1] = value(b, s, t)
        expected.append(e)
    return expected


def by_position(b, s, t):
    return (s + 1) * t + 100 * b


# Layouts by hand: m0 = the stem's maps, then ⌊θ·(m0 + n·k)⌋ after each transition.
CASES = {
    # basic, stem 16 (paper), k=3: 16+3·3=25 → θ=1 → 25; 25+2·3=31 maps into the classifier.
    "densenet": (dict(variant="densenet", block_layers=(3, 2), growth_rate=3), [(16, 3, 3), (25, 3, 2)], 31),
    # B (1×1 bottleneck conv1), a growth rate per block: stem 2·2=4; 4+2·2=8 → 8; 8+2·3=14.
    "densenet-b": (dict(variant="densenet-b", block_layers=(2, 2), growth_rate=(2, 3)), [(4, 2, 2), (8, 3, 2)], 14),
    # BC L=16 k=2: (16-4)/6 = 2 layers per block, stem 4; 4+2·2=8 → 4, three times.
    "densenet-bc": (dict(variant="densenet-bc", depth=16, growth_rate=2), [(4, 2, 2), (4, 2, 2), (4, 2, 2)], 8),
    # C, θ=0.5: stem 6; 6+3·3=15 → ⌊7.5⌋=7; 7+1·3=10.
    "densenet-c": (dict(variant="densenet-c", block_layers=(3, 1), growth_rate=3), [(6, 3, 3), (7, 3, 1)], 10),
}


@pytest.mark.parametrize("variant", list(CASES))
def test_each_pixel_is_the_mean_absolute_weight_from_its_source(variant):
    fields, layout, classifier_in = CASES[variant]
    model = build_model(ModelConfig(num_classes=3, **fields))
    assert model.classifier.in_features == classifier_in
    expected = hand_set(model, layout, by_position)
    result = compute_reuse(model)
    assert [(b.input_maps, b.growth_rate, b.num_layers) for b in result.blocks] == layout
    for blk, e in zip(result.blocks, expected):
        np.testing.assert_array_equal(blk.matrix, e)
    n_last = layout[-1][2]
    assert [b.targets[-1] for b in result.blocks] == ["T"] * (len(layout) - 1) + ["C"]
    assert result.blocks[-1].targets == tuple(str(i) for i in range(1, n_last + 1)) + ("C",)


def test_compressed_transition_column_sees_all_sources_and_the_next_block_starts_from_its_floor_outputs():
    fields, layout, _ = CASES["densenet-c"]
    model = build_model(ModelConfig(**fields))
    assert model.features.transition1.conv.weight.shape[:2] == (7, 15)   # in: all 15 maps; out: ⌊0.5·15⌋
    hand_set(model, layout, by_position)
    first, second = compute_reuse(model).blocks
    np.testing.assert_array_equal(first.matrix[:, 3], [104, 108, 112, 116])   # (s+1)·4 + 100, s = 0..3
    assert second.input_maps == 7
    np.testing.assert_array_equal(second.matrix, [[201, 202], [np.nan, 204]])


def test_a_state_dict_with_its_config_gives_the_modules_matrices_and_a_wrong_config_is_refused():
    fields, layout, _ = CASES["densenet-b"]
    config = ModelConfig(**fields)
    model = build_model(config)
    hand_set(model, layout, by_position)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for a, b in zip(compute_reuse(state, config).blocks, compute_reuse(model).blocks):
        np.testing.assert_array_equal(a.matrix, b.matrix)
    with pytest.raises(UserError, match=r"growth rates \[2, 3\].*config says \[2, 2\], \[2, 2\]"):
        compute_reuse(state, config.with_overrides(growth_rate=2))
    with pytest.raises(UserError, match="not a DenseNet state dict"):
        compute_reuse({"classifier.weight": torch.zeros(2, 2)})


def test_torchvision_densenet_weights_are_read_by_their_module_names():
    tv = pytest.importorskip("torchvision.models")
    result = compute_reuse(tv.DenseNet(growth_rate=4, block_config=(2, 3), num_init_features=8, bn_size=2))
    # torchvision halves at a transition: 8+2·4=16 → 8; 8+3·4=20 maps into the classifier.
    assert [(b.input_maps, b.growth_rate, b.num_layers) for b in result.blocks] == [(8, 4, 2), (8, 4, 3)]
    assert [b.targets[-1] for b in result.blocks] == ["T", "C"]
    assert all(np.isfinite(np.diag(b.matrix)).all() for b in result.blocks)


# ------------------------------------------------------------------ the three findings, by hand

def test_three_findings_match_hand_arithmetic():
    """Basic, blocks (5, 2), k=2, stem 4: block 2 starts from 4+5·2 = 14 maps; 18 maps into the classifier."""
    picked = {
        (1, 4): [1, 1, 2, 4],        # layer 4: beyond its 3 nearest = source 0: 1/8
        (1, 5): [1, 1, 1, 1, 4],     # layer 5: sources 0, 1: 2/8
        (2, 1): [1], (2, 2): [1, 4],  # block 2's row 0 mean (1+1)/2 = 1; all its dense pixels (1+1+4)/3 = 2
        (2, 3): [1, 1, 8],           # classifier: per map (14·1 + 2·1 + 2·8)/18 = 16/9; final layer's maps: 8
    }
    model = build_model(ModelConfig(variant="densenet", block_layers=(5, 2), growth_rate=2, init_features=4,
                                    num_classes=2))
    hand_set(model, [(4, 2, 5), (14, 2, 2)], lambda b, s, t: picked.get((b, t), [3] * t)[s])
    f = compute_reuse(model).findings
    assert f.spread == pytest.approx((1 / 8 + 2 / 8) / 2, abs=1e-12)
    assert f.spread_if_uniform == pytest.approx((1 / 4 + 2 / 5) / 2, abs=1e-12)
    assert f.transition_row == pytest.approx(0.5, abs=1e-12)
    assert f.classifier_layers == 1
    assert f.classifier_focus == pytest.approx(8 / (16 / 9), abs=1e-12)   # 4.5
    lines = finding_lines(f)
    assert lines[0].startswith("spread: 0.19 of each layer's weight reaches beyond its 3 nearest sources")
    assert lines[1].startswith("transition row: 0.50 ×") and "paper: < 1" in lines[1]
    assert lines[2].startswith("classifier focus: 4.50 × its mean weight on the last block's final layer's maps")


def test_findings_without_their_structure_are_none_and_say_what_they_need():
    f = compute_reuse(build_model(ModelConfig(block_layers=(3,), growth_rate=2, init_features=4))).findings
    assert (f.spread, f.transition_row) == (None, None)
    assert math.isfinite(f.classifier_focus)
    lines = finding_lines(f)
    assert lines[0] == "spread: n/a (needs ≥ 4 layers per block)"
    assert lines[1] == "transition row: n/a (needs ≥ 2 blocks)"


def test_classifier_looks_at_the_final_quarter_of_the_last_blocks_layers():
    assert [classifier_layers(n) for n in (1, 2, 4, 5, 12, 16, 32)] == [1, 1, 1, 2, 3, 4, 8]


# ------------------------------------------------------------------ CSV and HTML

def test_csv_is_tidy_and_round_trips_exactly():
    model = build_model(ModelConfig(variant="densenet-bc", depth=22, growth_rate=3, num_classes=4))   # 3 × 3 layers
    blocks = compute_reuse(model).blocks
    text = csv_text(blocks)
    lines = text.splitlines()
    assert lines[0] == "block,source,target,target_kind,mean_abs_weight"
    assert len(lines) - 1 == 3 * (3 * 4 // 2 + 4)           # per block: n(n+1)/2 layer pixels + n+1 in T/C
    assert lines[1].startswith("1,0,1,layer,")
    kinds = {line.split(",")[3] for line in lines[1:]}
    assert kinds == {"layer", "transition", "classifier"}
    back = read_csv(text)
    assert sorted(back) == [1, 2, 3]
    for blk in blocks:
        np.testing.assert_array_equal(back[blk.block], blk.matrix)


def test_html_is_self_contained_with_one_heatmap_div_per_block_and_the_findings():
    result = compute_reuse(build_model(ModelConfig(variant="densenet-bc", depth=16, growth_rate=2)))
    page = html_text(result)
    assert "<script src=" not in page and "<link" not in page          # nothing fetched from a CDN
    assert page.count("plotly.js v") == 1                                 # plotly.js inline, once
    assert [page.count(f'id="{FIGURE_ID.format(b)}"') for b in (1, 2, 3, 4)] == [1, 1, 1, 0]
    assert "Dense block 3 (2 layers)" in page and "transition row:" in page


# ------------------------------------------------------------------ `dsearch reuse`

RUN = RunConfig(model=dict(variant="densenet-bc", depth=16, growth_rate=2),
                data=dict(name="synthetic", synthetic_image_size=8))


def add_trial(study, state, checkpoint=None, **attrs):
    attrs = {"epochs_trained": 2, "max_epochs": 2, **attrs}
    if checkpoint is not None:
        attrs["checkpoint"] = str(checkpoint)
    if state != TrialState.FAIL:
        attrs["config"] = json.dumps(RUN.model_dump(mode="json"))
    study.add_trial(create_trial(
        state=state, values=[0.5, 1000, 1e5] if state == TrialState.COMPLETE else None,
        params={"model.growth_rate": 2}, distributions={"model.growth_rate": IntDistribution(2, 8)},
        user_attrs=attrs))


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """Trials: 0 COMPLETE, checkpoint ckpt/0.pt (relative); 1 FAIL invalid; 2 COMPLETE, the same checkpoint by
    its absolute path (for --storage without the folder)."""
    study_dir = tmp_path_factory.mktemp("reuse") / "s"
    (study_dir / "ckpt").mkdir(parents=True)
    model = build_model(RUN.model)
    torch.save({"model": model.state_dict(), "epoch": 2, "config": RUN.model_dump(mode="json")},
               study_dir / "ckpt" / "0.pt")
    s = new_study("s", f"sqlite:///{study_dir / 'study.db'}")
    add_trial(s, TrialState.COMPLETE, "ckpt/0.pt")
    add_trial(s, TrialState.FAIL, fail_reason="invalid", epochs_trained=0)
    add_trial(s, TrialState.COMPLETE, study_dir / "ckpt" / "0.pt")
    return study_dir, model


def files(folder):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def check_output(out: str, csv_path, html_path, model):
    lines = out.splitlines()
    assert lines[0].endswith(": 3 dense blocks of 2, 2, 2 layers")
    assert lines[1:3] == [f"CSV: {csv_path}", f"HTML: {html_path}"]
    assert lines[3] == "spread: n/a (needs ≥ 4 layers per block)"
    assert lines[4].startswith("transition row: ") and lines[5].startswith("classifier focus: ")
    assert csv_path.read_text() == csv_text(compute_reuse(model).blocks)
    assert html_path.read_text().count('class="plotly-graph-div"') == 3


def test_reuse_of_a_study_trial_writes_trial_n_files_in_the_studys_reuse_folder(study, capsys):
    study_dir, model = study
    assert main(["reuse", str(study_dir), "--trial", "0"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("feature reuse of trial 0 of s (COMPLETE, 2 of 2 epochs): ")
    check_output(out, study_dir / "reuse" / "trial-0.csv", study_dir / "reuse" / "trial-0.html", model)


def test_reuse_by_storage_url_and_study_name(study, tmp_path, capsys):
    study_dir, model = study
    url = f"sqlite:///{study_dir / 'study.db'}"
    assert main(["reuse", "--storage", url, "--study", "s", "--trial", "2", "--out", str(tmp_path / "o")]) == 0
    check_output(capsys.readouterr().out, tmp_path / "o" / "trial-2.csv", tmp_path / "o" / "trial-2.html", model)


def test_reuse_of_a_training_checkpoint_writes_beside_it(study, tmp_path, capsys):
    study_dir, model = study
    ckpt = tmp_path / "checkpoint.pt"
    ckpt.write_bytes((study_dir / "ckpt" / "0.pt").read_bytes())
    assert main(["reuse", str(ckpt)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"feature reuse of checkpoint {ckpt}, epoch 2: ")
    check_output(out, tmp_path / "checkpoint-reuse.csv", tmp_path / "checkpoint-reuse.html", model)


def test_reuse_of_an_exported_folder_writes_into_it(study, tmp_path, capsys):
    study_dir, model = study
    folder = tmp_path / "exported"
    assert main(["export", str(study_dir), "--trial", "0", "--out", str(folder)]) == 0
    capsys.readouterr()
    assert main(["reuse", str(folder)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"feature reuse of exported network {folder} (trial 0 of s, COMPLETE): ")
    check_output(out, folder / "reuse.csv", folder / "reuse.html", model)
    assert main(["reuse", str(folder / "model.pt"), "--out", str(tmp_path / "o")]) == 0   # its model.pt: the folder
    check_output(capsys.readouterr().out, tmp_path / "o" / "reuse.csv", tmp_path / "o" / "reuse.html", model)


def test_write_reuse_returns_both_paths_and_the_data(tmp_path):
    model = build_model(RUN.model)
    csv_path, html_path, result = write_reuse(model, tmp_path / "a" / "b", stem="trial-7")
    assert (csv_path, html_path) == (tmp_path / "a" / "b" / "trial-7.csv", tmp_path / "a" / "b" / "trial-7.html")
    assert len(result.blocks) == 3 and csv_path.read_text() == csv_text(result.blocks)


@pytest.mark.parametrize("args, text", [
    (["{d}/nope"], "nope does not exist"),
    (["{d}", "--trial", "7"], "--trial 7: no such trial in study 's' (trials 0..2)"),
    (["{d}", "--trial", "1"], "trial 1 has no checkpoint (state FAIL, invalid)"),
    (["{d}"], "is a study directory: say which trial with --trial N"),
    (["{d}/ckpt"], "neither a study directory (study.db) nor a folder written by `dsearch export`"),
    (["{d}/study.db"], "study.db: not a dsearch checkpoint ("),
    (["{d}/plain.pt"], "plain.pt: not a dsearch checkpoint (found ['classifier.bias', "),
    (["{d}/ckpt/0.pt", "--out", "{d}/study.db"], "{d}/study.db: exists and is not a directory"),
    (["{d}/ckpt/0.pt", "--study", "s"], "--storage/--study name a study: add --trial N"),
])
def test_reuse_errors_are_one_line_exit_2_and_write_nothing(study, capsys, args, text):
    study_dir, model = study
    plain = study_dir / "plain.pt"
    if not plain.exists():
        torch.save(model.state_dict(), plain)                 # a state dict alone: not a training checkpoint
    before = {p: p.read_bytes() for p in study_dir.rglob("*") if p.is_file()}
    argv = ["reuse"] + [a.format(d=study_dir) for a in args]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("dsearch: error: ") and err.count("\n") == 1 and text.format(d=study_dir) in err, err
    assert {p: p.read_bytes() for p in study_dir.rglob("*") if p.is_file()} == before


def test_pareto_writes_and_links_a_reuse_page_per_front_trial_with_a_checkpoint(study, tmp_path, capsys):
    """Trials 0 and 2 (the same values) are the front; trial 0's checkpoint is relative to the study folder, so in a
    copy whose ckpt/ is gone it is named and skipped, and trial 2 (absolute path) gets its page and link."""
    study_dir, model = study
    copy = tmp_path / "s"
    shutil.copytree(study_dir, copy, ignore=shutil.ignore_patterns("ckpt", "reuse"))
    assert main(["pareto", str(copy)]) == 0
    out = capsys.readouterr().out
    assert "no reuse figure for trial 0: trial 0's checkpoint" in out
    assert f"feature reuse (paper Fig. 5): 1 of 2 front trials in {copy / 'reuse'}/" in out
    assert sorted(files(copy / "reuse")) == ["plotly.min.js", "trial-2.csv", "trial-2.html"]
    page = (copy / "reuse" / "trial-2.html").read_text()
    assert '<script charset="utf-8" src="plotly.min.js"></script>' in page and page.count('class="plotly-graph-div"') == 3
    assert (copy / "reuse" / "trial-2.csv").read_text() == csv_text(compute_reuse(model).blocks)
    front = (copy / "pareto.html").read_text()
    assert '<li><a href="reuse/trial-2.html">trial 2</a></li>' in front and "trial-0.html" not in front
