"""One real search with rungs, run once uninterrupted (the reference), and what must equal it: the same search
interrupted twice and resumed (the same trials, decisions, curves, seeds, precisions and weights: run again, one trial
at a time, a search is identical, stopped or not), and the search replayed on its own recorded curves (the same
decisions, simulated).

The space has two rungs (epochs 2 and 4 of 8), so a trial can be interrupted right after a rung decision and
between two rungs. One trial at a time makes the order of completions, hence every decision, deterministic.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState

from dsearch.cli import main
from dsearch.search import record as st
from dsearch.search.lock import StudyLock

pytestmark = pytest.mark.slow

SPACE = """
name: rerun
data: {name: synthetic, augment: true, val_size: 100, synthetic_size: 1600, synthetic_image_size: 8}
budget: {max_epochs: 8, num_samples: 6, grace_period: 2, reduction_factor: 2, max_concurrent_trials: 1}
resources: {cpu: 1, gpu: 0}
sampler: {seed: 3}
fixed: {model.variant: densenet-bc, train.batch_size: 32}
params:
  model.depth: {type: int, low: 10, high: 16, step: 6}
  model.growth_rate: {type: int, low: 2, high: 8}
  train.lr: {type: categorical, choices: [0.1, 0.0001]}
seed_trials: [{model.depth: 10, model.growth_rate: 6, train.lr: 0.1}]
"""


def url_of(study_dir: Path) -> str:
    return f"sqlite:///{study_dir}/study.db"


def start(space: Path, study_dir: Path, *extra) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "dsearch.cli", "run", str(space), "--study-dir", str(study_dir),
                             *map(str, extra)], start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def run(space: Path, study_dir: Path, *extra) -> subprocess.CompletedProcess:
    proc = start(space, study_dir, *extra)
    out, err = proc.communicate(timeout=600)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def trials(url: str) -> list:
    return optuna.load_study(study_name="rerun", storage=url).get_trials()


_POLLED: dict[str, optuna.storages.RDBStorage] = {}


def running_at(url: str, epochs: int | None = None):
    """A RUNNING trial with a checkpoint that has reported exactly `epochs` epochs (None: any), or None.

    Polled through one storage per database (one engine, one query for the RUNNING trials): a trial of this tiny
    space spends well under a second per epoch, so each poll must be quick. Only a study not created yet is None;
    any other error fails the test with its cause."""
    storage = _POLLED.setdefault(url, optuna.storages.RDBStorage(url))
    try:
        study_id = storage.get_study_id_from_name("rerun")
    except KeyError:            # the study isn't there yet
        return None
    found = storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,))
    return next((t for t in found if t.user_attrs.get("checkpoint")
                 and (epochs is None or t.user_attrs.get("epochs_trained") == epochs)), None)


def wait_for(predicate, timeout: float, every: float = 0.05):
    end = time.time() + timeout
    while time.time() < end:
        found = predicate()
        if found:
            return found
        time.sleep(every)
    return None


def decisions(study_trials) -> list[tuple]:
    """What the search decided and measured, trial by trial, without the interrupted trials."""
    return [(t.params, t.state.name, t.user_attrs.get("epochs_trained"), t.values, t.user_attrs.get("curve"),
             t.user_attrs.get("seed"), t.user_attrs.get("precision"))
            for t in study_trials if t.user_attrs.get(st.FAIL_REASON) != "interrupted"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, Path, subprocess.CompletedProcess]:
    """The space, and its study run once without interruption."""
    root = tmp_path_factory.mktemp("rerun")
    space = root / "rerun.yaml"
    space.write_text(SPACE)
    proc = run(space, root / "reference")
    assert proc.returncode == 0, proc.stderr
    return space, root / "reference", proc


def test_the_reference_search_used_both_rungs(reference):
    space, study_dir, proc = reference
    assert ("sampler ehvi (the default for several objectives: params and MACs are known before training, so only "
            "val_acc is modelled); moasha on val_acc, params, macs, rungs at epochs 2 (") in proc.stdout
    assert "4 (" in proc.stdout and "(budget.grace_period is given)" in proc.stdout
    found = trials(url_of(study_dir))
    assert len(found) == 6 and st.counted_trials(optuna.load_study(study_name="rerun", storage=url_of(study_dir))) == 6
    states = {(t.state.name, t.user_attrs["epochs_trained"]) for t in found}
    assert ("COMPLETE", 8) in states and ("PRUNED", 2) in states, states


def shared_database(request, tmp_path: Path) -> str:
    """A PostgreSQL database that holds another study too (the test server; in CI always), else SQLite beside."""
    try:
        url = request.getfixturevalue("postgres_server").new_database("rerun")
    except pytest.skip.Exception:
        url = f"sqlite:///{tmp_path / 'shared.db'}"
    optuna.create_study(study_name="other", storage=url)
    return url


def test_a_search_interrupted_after_a_rung_decision_and_killed_between_rungs_decides_as_if_never_stopped(
        reference, tmp_path, request):
    """The study in a database other hosts could reach (--storage: the lease applies), run from a folder; Ctrl-C
    right after a rung decision, then the driver killed between two rungs, then run to the end."""
    from dsearch.training.checkpoint import load_checkpoint

    space, study_dir, _ = reference
    resumed, url = tmp_path / "resumed", shared_database(request, tmp_path)
    proc = start(space, resumed, "--storage", url)
    try:
        assert wait_for(lambda: running_at(url) or proc.poll() is not None, 180) and proc.poll() is None, \
            f"no trial got going: {proc.communicate(timeout=60)[1][-3000:] if proc.poll() is not None else ''}"
        # A second driver on the same database (another study folder, as on another host) refuses.
        second = run(space, tmp_path / "other", "--storage", url, "--quiet")
        assert second.returncode == 2 and "is being run by pid" in second.stderr, second.stderr
        assert not [t for t in trials(url) if t.state == TrialState.FAIL], "the second driver touched the trials"
        # Ctrl-C right after a rung decision: a trial has reported epoch 2 (the first rung) and goes on, as the
        # reference says it does (a trial seen at the rung may be one the rung is stopping: then it is PRUNED).
        goes_on = [(r.params, r.user_attrs["seed"]) for r in trials(url_of(study_dir)) if r.user_attrs["epochs_trained"] > 2]
        victim = wait_for(lambda: (t := running_at(url, 2)) is not None and (t.params, t.user_attrs.get("seed")) in goes_on
                          and t, 300)
        assert victim, "no trial went on from the first rung"
        os.killpg(proc.pid, signal.SIGINT)          # a terminal signals the whole foreground process group
        try:
            out, err = proc.communicate(timeout=180)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(f"still running 180 s after Ctrl-C: {proc.communicate()[1][-3000:]}")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, err
    assert "marked FAIL (interrupted) and queued again; continue with: dsearch run" in err
    found = trials(url)
    first = found[victim.number]
    assert first.state == TrialState.FAIL and first.user_attrs["fail_reason"] == "interrupted"
    # Seen at epoch 2 after its rung decision (it went on); the signal lands within that epoch or the next.
    assert first.user_attrs["epochs_trained"] in (2, 3), first.user_attrs["curve"]
    assert found[-1].state == TrialState.WAITING and found[-1].user_attrs["requeued_from"] == victim.number

    # The driver killed (SIGKILL, with every process it started) between the two rungs, at epoch 3.
    proc = start(space, resumed, "--storage", url)
    try:
        victim2 = wait_for(lambda: running_at(url, 3), 180)
        assert victim2 is not None, "no trial got between the rungs"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert StudyLock(resumed).holder() is None          # the dead driver's lock is stale
    assert trials(url)[victim2.number].state == TrialState.RUNNING   # nobody recorded its end

    done = run(space, resumed, "--storage", url)
    assert done.returncode == 0, done.stderr
    found = trials(url)
    for number in (victim.number, victim2.number):
        t = found[number]
        assert t.state == TrialState.FAIL and t.user_attrs["fail_reason"] == "interrupted"
        requeued = [r for r in found if r.user_attrs.get("requeued_from") == number]
        assert len(requeued) == 1 and requeued[0].params == t.params
        assert requeued[0].user_attrs["seed"] == t.user_attrs["seed"]
    assert st.counted_trials(optuna.load_study(study_name="rerun", storage=url)) == 6
    assert optuna.get_all_study_names(url) == ["other", "rerun"]         # the database's other study untouched
    # Same trials, same states, same epochs, same curves and seeds as the search that was never stopped ...
    reference_trials = trials(url_of(study_dir))
    assert decisions(found) == decisions(reference_trials)
    # ... and the same weights, bit for bit: the line Ctrl-C stopped, against the same trial in the reference.
    line = st.lineages(found)
    last = max((t for t in found if line[t.number] == line[victim.number]), key=lambda t: t.number)
    twin = next(r for r in reference_trials if r.params == last.params and r.user_attrs["seed"] == last.user_attrs["seed"])
    ours, theirs = load_checkpoint(last.user_attrs["checkpoint"]), load_checkpoint(twin.user_attrs["checkpoint"])
    assert ours["model"].keys() == theirs["model"].keys()
    assert all(torch.equal(ours["model"][k], theirs["model"][k]) for k in theirs["model"])
    # The epochs before the interruption kept their measured times; the layout and dtype the line started in.
    before = load_checkpoint(first.user_attrs["checkpoint"])["history"]
    assert len(before) >= 2 and [h["epoch_time"] for h in ours["history"][:len(before)]] == \
        [h["epoch_time"] for h in before]
    assert last.user_attrs["precision"] == first.user_attrs["precision"]
    assert ours["channels_last"] == ("channels_last" in first.user_attrs["precision"])


def test_the_reference_search_replayed_on_itself_with_one_worker_makes_the_same_decisions(reference, tmp_path):
    _, study_dir, _ = reference
    real = [(t.number, t.params, t.state.name, t.user_attrs.get("epochs_trained", 0))
            for t in trials(url_of(study_dir))]
    assert {s for _, _, s, _ in real} >= {"COMPLETE", "PRUNED"}          # the rungs decided something
    trace = tmp_path / "trace.jsonl"
    assert main(["replay", str(study_dir), "--methods", "space", "--seeds", "1", "--workers", "1",
                 "--trace", str(trace), "--jobs", "1"]) == 0
    replayed = [json.loads(x) for x in trace.read_text().splitlines()]
    assert [(x["number"], x["params"], x["state"], x["epochs_trained"]) for x in replayed] == real
