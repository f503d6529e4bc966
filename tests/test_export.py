"""`dsearch export` and `dsearch.load_model`: a trial's checkpoint becomes a folder that loads (or runs, as ONNX or
TorchScript) to the same network, with what inference needs beside it."""

from __future__ import annotations

import contextlib
import io
import json
import sys

import numpy as np
import pytest
import torch
from optuna.distributions import IntDistribution
from optuna.trial import TrialState, create_trial

import dsearch
from dsearch.cli import main
from dsearch.training.config import RunConfig
from dsearch.net.model import build_model
from studies import new_study

# The smallest DenseNet-BC (one layer per block) on 8×8 synthetic images: ~2.7k params, CPU-instant.
RUN = RunConfig(model=dict(variant="densenet-bc", depth=10, growth_rate=4),
                data=dict(name="synthetic", synthetic_image_size=8))


def add_trial(study, state, checkpoint=None, config=RUN, values=(0.5, 2666, 1e5), **attrs):
    attrs = {"epochs_trained": 2, "max_epochs": 2, **attrs}
    if checkpoint is not None:
        attrs["checkpoint"] = str(checkpoint)
    if config is not None:
        attrs["config"] = json.dumps(config.model_dump(mode="json"))
    study.add_trial(create_trial(
        state=state, values=list(values) if state == TrialState.COMPLETE else None,
        params={"model.growth_rate": 4}, distributions={"model.growth_rate": IntDistribution(2, 8)},
        user_attrs=attrs))


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """Trials: 0 COMPLETE with a real checkpoint (relative path), 1 FAIL invalid, 2 checkpoint file gone,
    3 checkpoint whose weights don't fit its config (growth rate 6 recorded, 4 trained)."""
    study_dir = tmp_path_factory.mktemp("export") / "s"
    (study_dir / "ckpt").mkdir(parents=True)
    torch.manual_seed(0)
    model = build_model(RUN.model)
    # As train.fit writes it: the state_dict under "model", beside optimizer state, epoch, ...
    torch.save({"model": model.state_dict(), "epoch": 2, "history": []}, study_dir / "ckpt" / "0.pt")
    s = new_study("s", f"sqlite:///{study_dir / 'study.db'}")
    add_trial(s, TrialState.COMPLETE, "ckpt/0.pt")
    add_trial(s, TrialState.FAIL, config=None, fail_reason="invalid", epochs_trained=0)
    add_trial(s, TrialState.COMPLETE, study_dir / "ckpt" / "gone.pt")
    other = RUN.model_copy(update={"model": RUN.model.with_overrides(growth_rate=6)})
    add_trial(s, TrialState.COMPLETE, study_dir / "ckpt" / "0.pt", config=other)
    return study_dir, model


def test_exported_model_gives_the_checkpoints_outputs(study, tmp_path, capsys):
    study_dir, original = study
    out = tmp_path / "exported"
    assert main(["export", str(study_dir), "--trial", "0", "--out", str(out)]) == 0
    assert f"load it with: dsearch.load_model({str(out)!r})" in capsys.readouterr().out
    loaded = dsearch.load_model(out)
    assert not loaded.training
    x = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(loaded(x), original.eval()(x))


def test_export_folder_holds_a_plain_state_dict_and_the_resolved_config(study, tmp_path):
    study_dir, original = study
    out = tmp_path / "exported"
    assert main(["export", str(study_dir), "--trial", "0", "--out", str(out)]) == 0
    weights = torch.load(out / "model.pt", weights_only=True)
    assert weights.keys() == original.state_dict().keys()
    assert json.loads((out / "config.json").read_text()) == RUN.model_dump(mode="json")
    provenance = json.loads((out / "trial.json").read_text())
    assert (provenance["study"], provenance["trial"], provenance["state"]) == ("s", 0, "COMPLETE")


@pytest.mark.parametrize("trial, text", [
    (7, "--trial 7: no such trial in study 's' (trials 0..3)"),
    (1, "trial 1 has no checkpoint (state FAIL, invalid)"),
    (2, "gone.pt does not exist"),
    (3, "weights don't match the config's model"),
])
def test_export_errors_are_one_line_and_write_nothing(study, tmp_path, capsys, trial, text):
    study_dir, _ = study
    before = (study_dir / "study.db").read_bytes()
    out = tmp_path / "exported"
    assert main(["export", str(study_dir), "--trial", str(trial), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dsearch: error: ") and err.count("\n") == 1 and text in err, err
    assert not out.exists()
    assert (study_dir / "study.db").read_bytes() == before


def test_export_of_a_missing_study_is_a_one_line_error(tmp_path, capsys):
    assert main(["export", str(tmp_path / "nope"), "--trial", "0", "--out", str(tmp_path / "o")]) == 2
    assert "study directory" in capsys.readouterr().err


def test_load_model_of_a_folder_without_export_is_a_clear_error(tmp_path):
    with pytest.raises(dsearch.UserError, match="no config.json"):
        dsearch.load_model(tmp_path)


def test_export_and_load_model_read_checkpoints_and_folders_in_an_object_store(study, tmp_path, monkeypatch, capsys):
    """Checkpoints recorded as s3:// URIs (as a cluster search records them) export from any machine."""
    from cluster import s3_server
    from dsearch.search import artifacts

    study_dir, original = study

    def put(location: str, data: bytes) -> None:
        fs, path = artifacts.filesystem(location)
        with fs.open_output_stream(path) as f:
            f.write(data)

    with s3_server() as s3:
        for key, value in s3.env.items():
            monkeypatch.setenv(key, value)
        s3.make_bucket("bkt")
        ckpt = artifacts.join(s3.uri("bkt", "runs"), "tiny/run-1/t0/checkpoint_000002/checkpoint.pt")
        put(ckpt, (study_dir / "ckpt" / "0.pt").read_bytes())
        url = f"sqlite:///{tmp_path / 'study.db'}"
        s = new_study("s3", url)
        add_trial(s, TrialState.COMPLETE, ckpt)
        add_trial(s, TrialState.COMPLETE, artifacts.join(s3.uri("bkt", "runs"), "tiny/gone/checkpoint.pt"))
        out = tmp_path / "best"
        assert main(["export", "--storage", url, "--study", "s3", "--trial", "0", "--out", str(out)]) == 0
        assert json.loads((out / "trial.json").read_text())["checkpoint"] == ckpt
        for name in ("config.json", "model.pt"):            # the exported folder, copied to the store
            put(artifacts.join(s3.uri("bkt", "exports/best"), name), (out / name).read_bytes())
        loaded = dsearch.load_model(s3.uri("bkt", "exports/best"))
        x = torch.randn(2, 3, 8, 8)
        with torch.no_grad():
            assert torch.equal(loaded(x), original.eval()(x))
        capsys.readouterr()
        assert main(["export", "--storage", url, "--study", "s3", "--trial", "1", "--out", str(tmp_path / "x")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "trial 1's checkpoint s3://bkt/runs/tiny/gone/checkpoint.pt?endpoint_override=" \
            in err and "is not in the object store or can't be read from this machine" in err
        with pytest.raises(dsearch.UserError, match=r"exports/nothing\?endpoint_override=.*: no config.json"):
            dsearch.load_model(s3.uri("bkt", "exports/nothing"))


# --- picking a trial, deployment formats, the manifest ----------------------------------------------------------

# (val_acc ↑, params ↓, MACs ↓) of a hand-made study, all on one checkpoint. Full-budget front: trials 0, 1, 2 (4 is
# dominated by 2; 3 was stopped at epoch 1 of 2). Min-max normalised over the front, the distance to the ideal point
# is √(0²+1²+1²) = 1.41 for 0, √(1²+0²+0²) = 1 for 1 and √((0.05/0.35)²+(500/4500)²+(0.5e5/4.5e5)²) = 0.21 for 2:
# the knee is trial 2. The best full-budget val_acc is trial 0's 0.95 (the PRUNED trial's 0.99 is at half budget).
RANKED = {0: (0.95, 5000, 5e5), 1: (0.60, 500, 0.5e5), 2: (0.90, 1000, 1e5), 4: (0.85, 2000, 2e5)}
KNEE, BEST = 2, 0


def run_cli(args):
    """main(args) with its stdout; for module-scoped fixtures, where capsys isn't available."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(args)
    return code, out.getvalue()


@pytest.fixture(scope="module")
def ranked(study, tmp_path_factory):
    study_dir, original = study
    ranked_dir = tmp_path_factory.mktemp("ranked") / "r"
    ranked_dir.mkdir()
    s = new_study("r", f"sqlite:///{ranked_dir / 'study.db'}")
    ckpt = study_dir / "ckpt" / "0.pt"
    for number in range(5):
        if number == 3:
            add_trial(s, TrialState.PRUNED, ckpt, epochs_trained=1, last_val_acc=0.99, last_params=800,
                      last_macs=0.8e5)
        else:
            add_trial(s, TrialState.COMPLETE, ckpt, values=RANKED[number])
    return ranked_dir, original


@pytest.fixture(scope="module")
def onnx_export(ranked, tmp_path_factory):
    """The knee of the ranked study, exported once as ONNX (the slow export: torch.export + onnxscript)."""
    ranked_dir, original = ranked
    out = tmp_path_factory.mktemp("onnx") / "knee"
    code, printed = run_cli(["export", str(ranked_dir), "--trial", "knee", "--format", "onnx", "--out", str(out)])
    assert code == 0
    return out, printed, original


@pytest.fixture(scope="module")
def torchscript_export(ranked, tmp_path_factory):
    """The best trial of the ranked study as TorchScript, into a folder that held a state_dict export of it."""
    ranked_dir, original = ranked
    out = tmp_path_factory.mktemp("ts") / "best"
    assert run_cli(["export", str(ranked_dir), "--trial", "best", "--out", str(out)])[0] == 0
    code, printed = run_cli(["export", str(ranked_dir), "--trial", "best", "--format", "torchscript",
                             "--out", str(out)])
    assert code == 0
    return out, printed, original


def test_trial_knee_exports_the_knee_of_the_full_budget_front_and_says_so(onnx_export):
    out, printed, _ = onnx_export
    first = printed.splitlines()[0]
    assert first.startswith(f"exported trial {KNEE} of r (the knee of the full-budget front over val_acc, "
                            "params, macs; COMPLETE, 2 of 2 epochs)"), first
    provenance = json.loads((out / "trial.json").read_text())
    assert provenance["trial"] == KNEE and provenance["picked"].startswith("the knee")


def test_trial_best_exports_the_full_budget_trial_with_the_highest_val_acc(torchscript_export):
    out, printed, _ = torchscript_export
    assert printed.startswith(f"exported trial {BEST} of r (the best val_acc (0.9500) of 4 full-budget trials; "
                              "COMPLETE"), printed
    assert json.loads((out / "manifest.json").read_text())["trial"] == BEST


def test_onnx_export_runs_in_onnxruntime_at_any_batch_size_with_the_networks_logits(onnx_export):
    """Exported with a batch of 2 and checked on 16: batches of 1 and 3 run too (a dynamic batch axis)."""
    import onnx
    import onnxruntime as ort

    out, printed, original = onnx_export
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "manifest.json", "model.onnx", "trial.json"]
    assert "checked with onnxruntime on 16 synthetic validation images: largest |logit difference|" in printed
    opset = next(o.version for o in onnx.load(str(out / "model.onnx")).opset_import if o.domain in ("", "ai.onnx"))
    assert opset >= 17
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].name == "images" and session.get_outputs()[0].name == "logits"
    for batch in (1, 3):
        x = torch.randn(batch, 3, 8, 8)
        with torch.no_grad():
            expected = original.eval()(x).numpy()
        logits = session.run(["logits"], {"images": x.numpy()})[0]
        assert logits.shape == (batch, 10)
        assert np.abs(logits - expected).max() <= 1e-4


def test_onnx_manifest_holds_input_size_normalisation_classes_and_the_check(onnx_export):
    from dsearch.training.data import load_data

    out, _, _ = onnx_export
    m = json.loads((out / "manifest.json").read_text())
    data = load_data(RUN.data)      # the statistics the network was trained with: its train split's, exact
    assert (m["format"], m["file"], m["input_size"], m["dataset"]) == ("onnx", "model.onnx", [3, 8, 8], "synthetic")
    assert m["opset"] >= 17 and m["input"]["shape"] == ["batch", 3, 8, 8]
    assert m["mean"] == pytest.approx(data.mean, abs=1e-12) and m["std"] == pytest.approx(data.std, abs=1e-12)
    assert m["classes"] == [str(i) for i in range(10)]      # the synthetic set names no classes
    check = m["check"]
    assert (check["with"], check["inputs"], check["images"], check["tolerance"]) == ("onnxruntime", "validation",
                                                                                     16, 1e-4)
    assert 0 <= check["max_abs_diff"] <= 1e-4


def test_load_model_of_an_onnx_export_says_to_use_onnxruntime(onnx_export):
    out, _, _ = onnx_export
    with pytest.raises(dsearch.UserError, match="an ONNX export; run model.onnx with onnxruntime"):
        dsearch.load_model(out)


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_torchscript_export_loads_with_torch_jit_and_with_load_model(torchscript_export):
    out, printed, original = torchscript_export
    # The state_dict export's model.pt, now stale, is gone: the folder holds one network, the manifest's.
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "manifest.json", "model.ts", "trial.json"]
    assert "checked with torch.jit.load on 16 synthetic validation images" in printed
    x = torch.randn(5, 3, 8, 8)
    with torch.no_grad():
        expected = original.eval()(x)
        assert (torch.jit.load(str(out / "model.ts"))(x) - expected).abs().max() <= 1e-4
        assert torch.equal(dsearch.load_model(out)(x), expected)
    m = json.loads((out / "manifest.json").read_text())
    assert (m["format"], m["file"], m["opset"], m["check"]["with"]) == ("torchscript", "model.ts", None,
                                                                        "torch.jit.load")


def test_class_names_are_the_datasets_own_in_label_order():
    from dsearch.analysis.deploy import class_names

    assert class_names("fashion_mnist", 10)[:2] == ("T-shirt/top", "Trouser")
    assert class_names("fashion_mnist", 10)[9] == "Ankle boot"
    assert class_names("cifar10", 10) == ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                                          "ship", "truck")
    assert len(class_names("cifar100", 100)) == 100 and class_names("cifar100", 100)[99] == "worm"
    assert class_names("synthetic", 3) == ("0", "1", "2")


def test_without_its_data_the_export_is_checked_on_random_inputs_and_says_so(study, tmp_path, capsys, monkeypatch):
    import dsearch.training.data as data
    from dsearch.training.data.locate import MissingDataError

    def missing(cfg, **_):
        raise MissingDataError("synthetic: not in /nowhere")

    monkeypatch.setattr(data, "load_data", missing)
    study_dir, _ = study
    out = tmp_path / "exported"
    assert main(["export", str(study_dir), "--trial", "0", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert ("checked with dsearch.load_model on 16 random N(0, 1) inputs (synthetic validation data not loadable "
            "here: synthetic: not in /nowhere)") in printed and "normalisation unknown" in printed
    m = json.loads((out / "manifest.json").read_text())
    assert (m["check"]["inputs"], m["mean"], m["std"]) == ("random", None, None)
    assert m["input_size"] == [3, 8, 8] and len(m["classes"]) == 10


def test_an_export_that_fails_its_check_is_a_one_line_error_with_the_difference_and_writes_nothing(
        study, tmp_path, capsys, monkeypatch):
    import dsearch.analysis.deploy as deploy

    monkeypatch.setattr(deploy, "max_difference", lambda a, b: 0.5)
    study_dir, _ = study
    out = tmp_path / "exported"
    assert main(["export", str(study_dir), "--trial", "0", "--format", "torchscript", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "largest |logit difference| 0.5 > 0.0001 on 16 synthetic validation" in err, err
    assert list(tmp_path.iterdir()) == []       # no folder, no staging folder beside it


@pytest.fixture(scope="module")
def unfinished(study, tmp_path_factory):
    """A study with no full-budget trial: one PRUNED at epoch 1 of 2, one FAIL."""
    study_dir, _ = study
    url = f"sqlite:///{tmp_path_factory.mktemp('unfinished') / 'u.db'}"
    s = new_study("unfinished", url)
    add_trial(s, TrialState.PRUNED, study_dir / "ckpt" / "0.pt", epochs_trained=1, last_val_acc=0.9)
    add_trial(s, TrialState.FAIL, config=None, fail_reason="invalid", epochs_trained=0)
    return url


@pytest.mark.parametrize("args, text", [
    (["--trial", "foo"], "--trial 'foo': expected a trial number, 'knee' or 'best'"),
    (["--trial", "-1"], "--trial '-1': expected a trial number"),
    (["--trial", "0", "--format", "onx"], "--format 'onx': expected one of state_dict, onnx, torchscript; did you "
                                          "mean onnx?"),
    (["--trial", "knee", "--study", "unfinished"], "--trial knee: study 'unfinished' has no COMPLETE trial trained "
                                                   "to its full budget yet (1 PRUNED, 1 FAIL)"),
    (["--trial", "best", "--study", "unfinished"], "has no COMPLETE trial trained to its full budget"),
])
def test_bad_trial_format_or_study_is_a_one_line_error_that_writes_nothing(study, unfinished, tmp_path, capsys, args,
                                                                         text):
    study_dir, _ = study
    where = ["--storage", unfinished] if "unfinished" in args else [str(study_dir)]
    assert main(["export", *where, *args, "--out", str(tmp_path / "exported")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dsearch: error: ") and err.count("\n") == 1 and text in err, err
    assert list(tmp_path.iterdir()) == []


def test_onnx_export_without_onnxruntime_names_the_extra_to_install(study, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)      # import onnxruntime → ImportError
    study_dir, _ = study
    out = tmp_path / "exported"
    assert main(["export", str(study_dir), "--trial", "0", "--format", "onnx", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "needs onnxruntime, which is not installed: pip install 'dsearch[export]'" in err
    assert not out.exists()
