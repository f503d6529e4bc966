"""The search through the real Ray Tune path (local Ray, num_cpus=2): states, attrs, resume, cluster."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from dsearch.search import record as st
from dsearch.search.lock import StudyLock

pytestmark = pytest.mark.slow

# Trial 0 (seeded, lr 0.1) trains first; with one trial at a time ASHA then stops any trial whose
# rung-1 val_acc falls below the median of those seen there, e.g. the lr 1e-4 ones.
TINY = """
name: tiny
data: {name: synthetic, augment: true, val_size: 100, synthetic_size: 400, synthetic_image_size: 8}
budget: {max_epochs: 3, num_samples: NUM, grace_period: 1, reduction_factor: 2, max_concurrent_trials: CONC}
resources: {cpu: 1, gpu: 0}
sampler: {type: random, seed: 3}
constraints: {max_params: 12000}
fixed: {model.variant: densenet-bc, train.batch_size: 32}
params:
  model.depth: {type: int, low: 10, high: 16, step: 6}
  model.growth_rate: {type: int, low: 2, high: 12}
  train.lr: {type: categorical, choices: [0.1, 0.0001]}
seed_trials: [{model.depth: 10, model.growth_rate: 6, train.lr: 0.1}]
"""


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


def test_tiny_search_records_complete_pruned_and_rejected_trials(tmp_path):
    space = write_space(tmp_path)
    proc = dsearch("run", space, "--study-dir", tmp_path / "study", "--quiet")
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
    for t in states.get(TrialState.FAIL, []):
        assert t.user_attrs["fail_reason"] == "over_budget" and "max_params" in t.user_attrs["error"]
        assert "curve" not in t.user_attrs        # never trained
    # optuna-dashboard's own loader reads the study
    from optuna_dashboard._storage import get_studies
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path}/study/study.db")
    assert [s.study_name for s in get_studies(storage)] == ["tiny"]
    # Rerunning a finished study trains nothing more; a different space is refused.
    again = dsearch("run", space, "--study-dir", tmp_path / "study", "--quiet")
    assert again.returncode == 0 and st.counted_trials(study) == 6
    changed = tmp_path / "other.yaml"
    changed.write_text(space.read_text().replace("max_epochs: 3", "max_epochs: 4"))
    refused = dsearch("run", changed, "--study-dir", tmp_path / "study")
    assert refused.returncode == 2
    assert "budget.max_epochs: 3 → 4" in refused.stderr and refused.stderr.count("\n") == 1


def test_invalid_sampled_combinations_are_recorded_and_never_trained(tmp_path):
    text = TINY.replace("model.depth: {type: int, low: 10, high: 16, step: 6}",
                        "model.depth: {type: int, low: 10, high: 16, step: 3}")   # 13 doesn't fit BC
    text = text.replace("constraints: {max_params: 12000}", "")
    proc = dsearch("run", write_space(tmp_path, num=8, conc=2, text=text), "--study-dir", tmp_path / "s", "--quiet")
    assert proc.returncode == 0, proc.stderr
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path}/s/study.db")
    invalid = [t for t in study.trials if t.user_attrs.get("fail_reason") == "invalid"]
    assert invalid, "seed 3 samples depth 13 at least once"
    for t in invalid:
        assert t.params["model.depth"] == 13 and "L=13 doesn't fit" in t.user_attrs["error"]
        assert "curve" not in t.user_attrs and "config" not in t.user_attrs
    trained = [t for t in study.trials if "curve" in t.user_attrs]
    assert all(t.params["model.depth"] != 13 for t in trained)


def _wait_for(predicate, timeout):
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return True
        time.sleep(0.5)
    return False


def test_killed_driver_resumes_with_interrupted_trials_requeued(tmp_path):
    text = TINY.replace("max_epochs: 3", "max_epochs: 12").replace("grace_period: 1", "grace_period: 12")
    space = write_space(tmp_path, num=3, conc=1, text=text.replace("constraints: {max_params: 12000}", ""))
    study_dir = tmp_path / "study"
    proc = subprocess.Popen([sys.executable, "-m", "dsearch.cli", "run", str(space), "--study-dir", str(study_dir),
                             "--quiet"], start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"sqlite:///{study_dir}/study.db"

    def running_with_progress():
        try:
            trials = optuna.load_study(study_name="tiny", storage=url).get_trials()
        except Exception:
            return False
        return any(t.state == TrialState.RUNNING and t.user_attrs.get("epochs_trained", 0) >= 1 for t in trials)

    try:
        assert _wait_for(running_with_progress, 120), "no trial got going"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)     # the driver and everything it started
        proc.wait()
    study = optuna.load_study(study_name="tiny", storage=url)
    interrupted = [t for t in study.trials if t.state == TrialState.RUNNING]
    assert len(interrupted) == 1
    assert StudyLock(study_dir).holder() is None       # the dead driver's lock is stale

    again = dsearch("run", space, "--study-dir", study_dir, "--quiet")
    assert again.returncode == 0, again.stderr
    study = optuna.load_study(study_name="tiny", storage=url)
    first = study.trials[interrupted[0].number]
    assert first.state == TrialState.FAIL and first.user_attrs["fail_reason"] == "interrupted"
    requeued = [t for t in study.trials if t.user_attrs.get("requeued_from") == first.number]
    assert len(requeued) == 1 and requeued[0].params == first.params
    assert requeued[0].state == TrialState.COMPLETE
    assert st.counted_trials(study) == 3
    assert sum(t.state == TrialState.COMPLETE for t in study.trials) == 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_search_on_a_separate_ray_head_through_ray_address(tmp_path):
    port = _free_port()
    ray = str(Path(sys.executable).with_name("ray"))
    # Ray ≥ 2.59 turns token auth on for `ray start` when ~/.ray/auth_token exists but doesn't send it
    # from ray.init(address=...) (ray-project/ray#64755); this loopback test cluster runs without it.
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    head = subprocess.Popen([ray, "start", "--head", "--block", "--num-cpus", "2", "--port", str(port),
                             "--node-ip-address", "127.0.0.1", "--include-dashboard", "false",
                             "--disable-usage-stats"], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        proc = dsearch("run", write_space(tmp_path, num=2), "--study-dir", tmp_path / "s", "--quiet",
                       "--ray-address", f"127.0.0.1:{port}", env=env)
        assert proc.returncode == 0, proc.stderr
        study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path}/s/study.db")
        assert sum(t.state == TrialState.COMPLETE for t in study.trials) >= 1
    finally:
        os.killpg(head.pid, signal.SIGTERM)      # this head only, not other Ray instances
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()


def test_a_gpu_space_on_a_cpu_cluster_fails_at_once_with_the_override(tmp_path):
    space = write_space(tmp_path, text=TINY.replace("gpu: 0", "gpu: 1"))
    proc = dsearch("run", space, "--study-dir", tmp_path / "s", timeout=120)
    assert proc.returncode == 2
    assert "--gpus-per-trial 0" in proc.stderr and proc.stderr.count("\n") == 1
    assert not (tmp_path / "s" / "study.db").exists()
