"""`dsearch export` and `dsearch.load_model`: a trial's checkpoint becomes a folder that loads to the same network."""

from __future__ import annotations

import json

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


def add_trial(study, state, checkpoint=None, config=RUN, **attrs):
    attrs = {"epochs_trained": 2, "max_epochs": 2, **attrs}
    if checkpoint is not None:
        attrs["checkpoint"] = str(checkpoint)
    if config is not None:
        attrs["config"] = json.dumps(config.model_dump(mode="json"))
    study.add_trial(create_trial(
        state=state, values=[0.5, 2666, 1e5] if state == TrialState.COMPLETE else None,
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
