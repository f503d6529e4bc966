"""A real two-node Ray cluster on one machine: the worker node sees neither the driver's disk nor the code.

The head runs no trials (0 CPUs); the worker node (127.0.0.2, its own mount namespace, the project checkout and
this test's folders behind empty tmpfs mounts) runs them all. Trial storage is an S3-compatible server on
loopback. See tests/cluster.py for how the second host is made.
"""

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from cluster import s3_server, two_node_cluster
from spaces import tiny_space
from dsearch.search import record as st

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(os.geteuid() != 0, reason="unshare --mount needs root (CAP_SYS_ADMIN)")]

REPO = Path(__file__).resolve().parents[1]

# 8 epochs of 1,600 images (~0.5 s each), rungs at 2 and 4: long enough to be caught running between two reports,
# short enough to train twice here.
SPACE = tiny_space(epochs=8, num=3, grace=2, conc=1).replace("synthetic_size: 400", "synthetic_size: 1600")
RUNGS = (2, 4)


def _dsearch(args, env, timeout=180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dsearch.cli", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=timeout, cwd=REPO)


def _wait_for(predicate, timeout: float) -> bool:
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def test_a_search_on_a_two_node_cluster_with_s3_storage_survives_a_killed_driver(tmp_path, monkeypatch):
    t0 = time.time()
    space = tmp_path / "tiny.yaml"
    space.write_text(SPACE)
    db = tmp_path / "db"
    db.mkdir()
    url = f"sqlite:///{db}/study.db"     # the study: on the driver's disk, which only the driver writes
    with s3_server() as s3, two_node_cluster(hidden=[REPO, tmp_path], env=s3.env, worker_cpus=2) as cluster:
        s3.make_bucket("dsearch")
        storage_path = s3.uri("dsearch", "searches")
        env = dict(cluster.env)
        env.pop("RAY_ADDRESS", None)          # dsearch must join through --ray-address, not the environment
        cluster_args = ["--ray-address", cluster.address, "--quiet"]

        # Trials would save checkpoints in the driver's studies/NAME/ray, which the worker node can't see.
        refused = _dsearch(["run", space, "--study-dir", tmp_path / "local", *cluster_args], env)
        assert refused.returncode == 2, refused.stderr
        print(f"\nrefused: {refused.stderr.strip()}")
        assert refused.stderr.count("\n") == 1 and refused.stderr.startswith("dsearch: error: the default trial "
                                                                            f"storage {tmp_path / 'local' / 'ray'}")
        assert f"node {cluster.worker_ip} " in refused.stderr and "Pass --storage-path" in refused.stderr
        assert not (tmp_path / "local").exists()       # nothing was started, nothing is left

        first_dir = tmp_path / "first"
        run_args = ["--storage", url, "--storage-path", storage_path, *cluster_args]
        proc = subprocess.Popen([sys.executable, "-m", "dsearch.cli", "run", str(space), "--study-dir",
                                 str(first_dir), *run_args], env=env, cwd=REPO, start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

        def finished_one_and_running_one() -> bool:
            try:
                trials = optuna.load_study(study_name="tiny", storage=url).get_trials()
            except Exception:
                return False
            # Running, and not at a rung epoch: one seen there may be one the rung is stopping (then PRUNED).
            return any(t.state.is_finished() and "curve" in t.user_attrs for t in trials) and any(
                t.state == TrialState.RUNNING and t.user_attrs.get("epochs_trained", 0) >= 1
                and t.user_attrs["epochs_trained"] not in RUNGS and t.user_attrs.get("checkpoint") for t in trials)

        try:
            assert _wait_for(finished_one_and_running_one, 150), proc.stderr.read() if proc.poll() is not None \
                else "no trial finished while another ran"
        finally:
            os.killpg(proc.pid, signal.SIGKILL)          # the driver and all it started, no clean-up
            proc.wait()
        before = {t.number: t for t in optuna.load_study(study_name="tiny", storage=url).trials}
        finished = {n: t for n, t in before.items() if t.state.is_finished()}
        interrupted = [t for t in before.values() if t.state == TrialState.RUNNING]
        assert len(interrupted) == 1 and finished
        # The killed driver's lease is taken over at once: its pid no longer runs (this is one machine; from
        # another host it would be once its heartbeat stood still for DSEARCH_LEASE_TIMEOUT_S, tests/test_lock.py).

        # Continue from another study folder (as from another machine): same database, same trial storage.
        again = _dsearch(["run", space, "--study-dir", tmp_path / "second", *run_args], env)
        assert again.returncode == 0, again.stderr
        study = optuna.load_study(study_name="tiny", storage=url)
        for n, t in finished.items():                    # nothing finished is lost or changed
            now = study.trials[n]
            assert (now.state, now.values, now.user_attrs) == (t.state, t.values, t.user_attrs)
        first = study.trials[interrupted[0].number]
        assert first.state == TrialState.FAIL and first.user_attrs["fail_reason"] == "interrupted"
        resumed = next(t for t in study.trials if t.user_attrs.get(st.REQUEUED_FROM) == first.number)
        assert resumed.state in (TrialState.COMPLETE, TrialState.PRUNED)
        assert st.counted_trials(study) == 3

        trained = [t for t in study.trials if "curve" in t.user_attrs]
        for t in trained:
            print(f"trial {t.number} {t.state.name:9} epochs {t.user_attrs['epochs_trained']} node "
                  f"{t.user_attrs.get('node_ip')} {str(t.user_attrs.get('node_id'))[:12]} {t.user_attrs['checkpoint']}")
        for t in trained:                                # every trial ran on the worker node, none on the head
            assert (t.user_attrs["node_ip"], t.user_attrs["node_id"]) == (cluster.worker_ip, cluster.worker_node_id)
            assert t.user_attrs["checkpoint"].startswith("s3://dsearch/searches/tiny/run-")
            assert f"/trial-{t.number}-" in t.user_attrs["checkpoint"]
            assert t.user_attrs["checkpoint"].endswith(f"/checkpoint.pt?endpoint_override={s3.endpoint}"
                                                       "&scheme=http&region=us-east-1")
        assert not (tmp_path / "first" / "ray").exists() and not (tmp_path / "second" / "ray").exists()
        assert any(k.startswith("searches/tiny/") and k.endswith("/checkpoint.pt") for k in s3.list("dsearch"))

        # The requeued trial continued from the interrupted one's checkpoint in the store, not from scratch:
        # its history holds the epochs trained before the kill with their measured times.
        for key, value in s3.env.items():
            monkeypatch.setenv(key, value)
        from dsearch.search.artifacts import read_bytes
        from dsearch.training.checkpoint import load_checkpoint

        old = load_checkpoint(io.BytesIO(read_bytes(first.user_attrs["checkpoint"])))["history"]
        new = load_checkpoint(io.BytesIO(read_bytes(resumed.user_attrs["checkpoint"])))["history"]
        assert len(old) >= 1 and [h["epoch_time"] for h in new[:len(old)]] == [h["epoch_time"] for h in old]
        assert resumed.user_attrs["curve"][:len(old)] == [h["val_acc"] for h in old]

        # The best trial's weights, exported on this machine straight from the object store.
        best = max((t for t in study.trials if t.state == TrialState.COMPLETE), key=lambda t: t.values[0])
        out = tmp_path / "best"
        exported = _dsearch(["export", "--storage", url, "--study", "tiny", "--trial", best.number, "--out", out],
                            env)
        assert exported.returncode == 0, exported.stderr
        import dsearch
        assert dsearch.load_model(out).features is not None
        assert (out / "trial.json").read_text().count(best.user_attrs["checkpoint"]) == 1
    print(f"two-node test: {time.time() - t0:.0f} s")
    assert time.time() - t0 < 600           # a hang guard: 57 s on this project's 2-core hosts
