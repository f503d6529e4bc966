"""The search through the real Ray Tune path (local Ray, num_cpus=2): states, attrs, failures, resume.

Clusters (--ray-address, --storage-path) are tested on a real two-node cluster in test_cluster.py.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from dsearch.search import record as st
from spaces import tiny_space

pytestmark = pytest.mark.slow

TINY = tiny_space(extra="constraints: {max_params: 12000}\n")


def write_space(tmp_path: Path, num: int = 6, conc: int = 1, text: str = TINY) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(text.replace("NUM", str(num)).replace("CONC", str(conc)))
    return path


def dsearch(*args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dsearch.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=kw.pop("timeout", 300), **kw)


def trials_by_state(study):
    out = {}
    for t in study.get_trials():
        out.setdefault(t.state, []).append(t)
    return out


# depth 13 doesn't fit DenseNet-BC (L - 4 must be a multiple of 6): invalid combinations get sampled too. A
# training step's predicted peak of 1.6 MB: the seed (depth 10, k=6: 1.44 MB) trains on the normal path; depth 10
# k=7 and depth 16 k=4, 5 fit only on the memory-efficient path (auto picks it); depth 10 k=8, 9 and depth 16 k=6
# fit on neither and are rejected (tests/test_pricing.py has the numbers' rule).
TINY_STEP_3 = TINY.replace("model.depth: {type: int, low: 10, high: 16, step: 6}",
                           "model.depth: {type: int, low: 10, high: 16, step: 3}") \
                  .replace("constraints: {max_params: 12000}", "constraints: {max_params: 12000, max_memory: 1.6e6}") \
                  .replace("train.batch_size: 32}", "train.batch_size: 32, train.amp: off}")   # memory: fp32's


def test_tiny_search_records_complete_pruned_and_rejected_trials(tmp_path):
    space = write_space(tmp_path, text=TINY_STEP_3)
    proc = dsearch("run", space, "--study-dir", tmp_path / "study", "--quiet",
                   env={**os.environ, "DSEARCH_MEASURE_CPU_PEAK": "1"})     # off elsewhere in the suite
    assert proc.returncode == 0, proc.stderr
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path}/study/study.db")
    assert study.metric_names == ["val_acc", "params", "macs"]
    states = trials_by_state(study)
    counted = st.counted_trials(study)
    assert counted == 6
    complete, pruned = states.get(TrialState.COMPLETE, []), states.get(TrialState.PRUNED, [])
    assert complete and pruned
    assert complete[0].number == 0 and complete[0].params == {"model.depth": 10, "model.growth_rate": 6,
                                                              "train.lr": 0.1}
    for t in complete:
        a = t.user_attrs
        assert a["epochs_trained"] == a["max_epochs"] == 3 and len(a["curve"]) == 3
        assert t.values[0] == a["curve"][-1] and t.values[1:] == [a["params"], a["macs"]]
        for key in ("config", "seed", "checkpoint", "wall_time_s", "images_per_s", "peak_memory_bytes"):
            assert key in a, key
        assert Path(a["checkpoint"]).exists()
        assert json.loads(a["config"])["model"]["variant"] == "densenet-bc"
    for t in pruned:
        assert t.values is None and 1 <= t.user_attrs["epochs_trained"] < 3
        assert len(t.user_attrs["curve"]) == t.user_attrs["epochs_trained"]
    # Rejected before training, never counted: over the constraint, or a combination that isn't a DenseNet.
    failed = {reason: [t for t in states.get(TrialState.FAIL, []) if t.user_attrs["fail_reason"] == reason]
              for reason in ("over_budget", "invalid")}
    assert failed["over_budget"] and failed["invalid"], "seed 3 samples both"
    assert sum(map(len, failed.values())) == len(states.get(TrialState.FAIL, []))
    for t in failed["over_budget"]:
        assert "curve" not in t.user_attrs                                                    # never trained
        assert "max_params" in t.user_attrs["error"] or "max_memory" in t.user_attrs["error"]
        assert ("max_memory" in t.user_attrs["error"]) == (t.user_attrs["memory"] > 1.6e6)
    # Memory: priced before training, within the constraint for every trained trial, on the path auto chose for it.
    trained = complete + pruned
    assert all(t.user_attrs["memory"] <= 1.6e6 for t in trained)
    assert any(t.user_attrs["memory_efficient"] for t in trained), "seed 3 trains one on the efficient path"
    assert any("max_params" not in t.user_attrs["error"] for t in failed["over_budget"]), "and rejects one on memory"
    for t in trained:
        a = t.user_attrs
        efficient = a["memory_why"].startswith("auto: memory-efficient path")
        assert a["memory_efficient"] == efficient == json.loads(a["config"])["model"]["memory_efficient"]
        assert a["measured_peak_bytes"] > 0
        assert a["precision"].startswith("fp32")
        assert abs(a["memory"] / a["measured_peak_bytes"] - 1) < 0.10, (a["memory"], a["measured_peak_bytes"])
    for t in failed["invalid"]:
        assert t.params["model.depth"] == 13 and "L=13 doesn't fit" in t.user_attrs["error"]
        assert "curve" not in t.user_attrs and "config" not in t.user_attrs
    assert all(t.params["model.depth"] != 13 for t in study.trials if "curve" in t.user_attrs)
    # optuna-dashboard's own loader reads the study
    from optuna_dashboard._storage import get_studies
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path}/study/study.db")
    assert [s.study_name for s in get_studies(storage)] == ["tiny"]
    # Rerunning a finished study trains nothing more, and starts no Ray (no new experiment folder); a different
    # space is refused.
    experiments = sorted((tmp_path / "study" / "ray").iterdir())
    again = dsearch("run", space, "--study-dir", tmp_path / "study")
    assert again.returncode == 0 and st.counted_trials(study) == 6
    assert "study tiny: nothing left to run (6 trials counted" in again.stdout
    assert sorted((tmp_path / "study" / "ray").iterdir()) == experiments
    changed = tmp_path / "other.yaml"
    changed.write_text(space.read_text().replace("max_epochs: 3", "max_epochs: 4"))
    refused = dsearch("run", changed, "--study-dir", tmp_path / "study")
    assert refused.returncode == 2
    assert "budget.max_epochs: 3 → 4" in refused.stderr and refused.stderr.count("\n") == 1


def _wait_for(predicate, timeout):
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return True
        time.sleep(0.5)
    return False


def test_a_gpu_space_on_a_cpu_cluster_fails_at_once_with_the_override(tmp_path):
    space = write_space(tmp_path, text=TINY.replace("gpu: 0", "gpu: 1"))
    proc = dsearch("run", space, "--study-dir", tmp_path / "s", timeout=120)
    assert proc.returncode == 2
    assert "--gpus-per-trial 0" in proc.stderr and proc.stderr.count("\n") == 1
    assert not (tmp_path / "s" / "study.db").exists()


# --- failures, interrupts, resume, concurrent drivers ------------------------------------------

DIVERGING = TINY.replace("train.lr: {type: categorical, choices: [0.1, 0.0001]}",
                         "train.lr: {type: categorical, choices: [0.1, 1.0e+12]}") \
                .replace("seed_trials: [{model.depth: 10, model.growth_rate: 6, train.lr: 0.1}]",
                         "seed_trials: [{model.depth: 10, model.growth_rate: 6, train.lr: 1.0e+12}]") \
                .replace("constraints: {max_params: 12000}", "") \
                .replace("sampler: {type: random, seed: 3}", "sampler: {type: random, seed: 5}")
# Seed 5 draws lr 1e12 for trial 1 and 0.1 for trial 2: two failures (each costs a fresh worker), then a success.
# (In a run of its own, as the test has it, trial 0 fails alone first.)


def test_a_trial_that_diverges_fails_with_its_kind_and_traceback_and_the_search_goes_on(tmp_path):
    """First a run whose every trial fails (a broken setup must not look like a finished search: exit 1, naming the
    first error), then the same study continued past it: the same error again doesn't stop the search either."""
    space, study_dir = write_space(tmp_path, num=1, text=DIVERGING), tmp_path / "s"
    proc = dsearch("run", space, "--study-dir", study_dir, "--quiet")       # trial 0 alone: the seed, lr 1e12
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.startswith("dsearch: error: 1 trial of this run failed and none trained (a setup "
                                  "problem?); trial 0: TrainingDiverged: training diverged") and \
        proc.stderr.count("\n") == 1, proc.stderr
    assert "trials: FAIL(error) 1" in proc.stdout

    space = write_space(tmp_path, num=3, text=DIVERGING)
    proc = dsearch("run", space, "--study-dir", study_dir, "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr and "did not include the specified metric" not in proc.stderr
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{study_dir}/study.db")
    failed = [t for t in study.trials if t.state == TrialState.FAIL]
    assert failed[0].number == 0 and {t.params["train.lr"] for t in failed} == {1e12}
    assert len(failed) >= 2, "the same error again must not stop the search either"
    for t in failed:
        a = t.user_attrs
        assert a["fail_reason"] == "error" and a["error_kind"] == "diverged"
        # nan or ±inf: which comes first at lr 1e12 depends on float rounding (the layout the probe picked)
        assert re.match(r"TrainingDiverged: training diverged: the loss became (nan|-?inf) at epoch 1, ", a["error"])
        assert a["error"].endswith(f"(traceback: {a['traceback']})")
        assert Path(a["traceback"]) == (study_dir / "trials" / str(t.number) / "traceback.txt").resolve()
        assert "Traceback (most recent call last)" in Path(a["traceback"]).read_text()
    assert any(t.state == TrialState.COMPLETE for t in study.trials)
    assert st.counted_trials(study) == 3
    # A crashed trial is never queued again: a rerun has nothing left to do.
    again = dsearch("run", space, "--study-dir", study_dir, "--quiet")
    assert again.returncode == 0, again.stderr
    assert len(optuna.load_study(study_name="tiny", storage=f"sqlite:///{study_dir}/study.db").trials) == 3


LONG = TINY.replace("max_epochs: 3", "max_epochs: 40").replace("grace_period: 1", "grace_period: 40") \
           .replace("constraints: {max_params: 12000}", "")


def _start(space: Path, study_dir: Path, *extra) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "dsearch.cli", "run", str(space), "--study-dir", str(study_dir),
                             "--quiet", *map(str, extra)], start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _running(url: str, epochs: int = 1):
    try:
        trials = optuna.load_study(study_name="tiny", storage=url).get_trials()
    except Exception:
        return None
    return next((t for t in trials if t.state == TrialState.RUNNING and t.user_attrs.get("epochs_trained", 0) >= epochs
                 and t.user_attrs.get("checkpoint")), None)


def test_a_killed_ray_worker_fails_its_trial_and_the_search_goes_on(tmp_path):
    # 50 steps an epoch: the victim is still training when its worker is killed (400 images raced on a quiet machine).
    space, study_dir = write_space(tmp_path, num=2, text=LONG.replace("max_epochs: 40", "max_epochs: 6")
                                   .replace("grace_period: 40", "grace_period: 6")
                                   .replace("synthetic_size: 400", "synthetic_size: 1600")), tmp_path / "s"
    url = f"sqlite:///{study_dir}/study.db"
    proc = _start(space, study_dir)
    try:
        assert _wait_for(lambda: _running(url), 120), "no trial got going"
        victim = _running(url)
        os.kill(victim.user_attrs["worker_pid"], signal.SIGKILL)
        out, err = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, err
    study = optuna.load_study(study_name="tiny", storage=url)
    dead = study.trials[victim.number]
    assert dead.state == TrialState.FAIL and dead.user_attrs["fail_reason"] == "error"
    assert dead.user_attrs["error_kind"] == "worker_died" and "worker process died" in dead.user_attrs["error"]
    assert st.counted_trials(study) == 2 and any(t.state == TrialState.COMPLETE for t in study.trials)


def test_sigterm_stops_a_run_as_a_first_ctrl_c_does_and_exits_143(tmp_path, monkeypatch, capsys):
    """SIGTERM (`kill`, a batch scheduler) takes the first Ctrl-C's path, which a real search goes through in
    tests/test_rerun.py; here in this process, the search faked (one trial in progress), since only the signal
    differs."""
    from dsearch.cli import main
    from dsearch.search import runner

    def search_until_a_signal(space, study, study_dir, data, view, stop, trials, **kw):
        study.ask()                                     # trial 0, in progress
        os.kill(os.getpid(), signal.SIGTERM)
        assert _wait_for(stop, 10), "SIGTERM did not ask the run to stop"
        os.kill(os.getpid(), signal.SIGTERM)            # a second SIGTERM is no second Ctrl-C: the run goes on
        time.sleep(0.2)

    monkeypatch.setattr(runner, "start_ray", lambda *a, **k: None)
    monkeypatch.setattr(runner, "check_resources", lambda *a, **k: None)
    monkeypatch.setattr(runner, "run_search", search_until_a_signal)
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    space, study_dir = write_space(tmp_path, num=2), tmp_path / "s"
    assert main(["run", str(space), "--study-dir", str(study_dir), "--quiet"]) == 143
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before
    assert capsys.readouterr().err == (
        "dsearch: interrupted by SIGTERM: stopped; 1 running trial [0] marked FAIL (interrupted) and queued again; "
        f"continue with: dsearch run {space} --study-dir {study_dir}\n")
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{study_dir}/study.db")
    first, requeued = study.trials
    assert first.state == TrialState.FAIL and first.user_attrs["fail_reason"] == "interrupted"
    assert requeued.state == TrialState.WAITING and requeued.user_attrs["requeued_from"] == 0
