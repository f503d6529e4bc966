"""The study record: how a trial's end becomes COMPLETE / PRUNED / FAIL, and how failures are described."""

from __future__ import annotations

import math

import pytest
from optuna.trial import TrialState

from dsearch.search import record as st
from dsearch.search.searcher import describe_failure
from dsearch.search.trainable import TrialError, error_kind
from dsearch.training.loop import TrainingDiverged
from studies import new_study


@pytest.fixture
def study():
    return new_study()


def test_full_budget_is_complete_and_a_stopped_trial_is_pruned(study):
    assert st.tell_finished(study, study.ask(), {"val_acc": 0.9, "params": 10, "macs": 20}, 3, 3, {}) == "COMPLETE"
    assert st.tell_finished(study, study.ask(), {"val_acc": 0.5, "params": 10, "macs": 20}, 1, 3, {}) == "PRUNED"
    done, stopped = study.trials
    assert done.state == TrialState.COMPLETE and done.values == [0.9, 10, 20]
    assert stopped.state == TrialState.PRUNED and stopped.user_attrs["last_val_acc"] == 0.5


def test_a_full_budget_trial_with_a_nan_metric_fails_as_diverged_not_pruned(study):
    outcome = st.tell_finished(study, study.ask(), {"val_acc": math.nan, "params": 10, "macs": 20}, 3, 3,
                               {"curve": [0.1, 0.1, math.nan]})
    t = study.trials[0]
    assert outcome == "FAIL" and t.state == TrialState.FAIL
    assert t.user_attrs["fail_reason"] == "error" and t.user_attrs["error_kind"] == "diverged"
    assert t.user_attrs["error"] == "diverged: the full-budget trial ended with val_acc nan"


@pytest.mark.parametrize("exc, kind", [
    (TrainingDiverged("training diverged: the loss became nan"), "diverged"),
    (type("OutOfMemoryError", (RuntimeError,), {})("CUDA out of memory. Tried to allocate 2.00 GiB"), "out_of_memory"),
    (RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 8 GB (out of memory)"),
     "out_of_memory"),
    (MemoryError(), "out_of_memory"),
    (ValueError("a bug"), "exception"),
])
def test_errors_are_sorted_into_kinds(exc, kind):
    assert error_kind(exc) == kind


def test_a_failure_is_read_through_rays_wrappers():
    class RayTaskError(Exception):      # what Ray wraps a trainable's exception in: `.cause` is the original
        def __init__(self, cause):
            self.cause = cause

    err = TrialError("out_of_memory", "OutOfMemoryError: CUDA out of memory", "Traceback ...\nOutOfMemoryError")
    assert describe_failure(RayTaskError(err)) == ("out_of_memory", "OutOfMemoryError: CUDA out of memory",
                                                   "Traceback ...\nOutOfMemoryError")
    died = type("RayActorError", (Exception,), {})("The actor died unexpectedly before finishing this task.")
    kind, message, text = describe_failure(died)
    assert kind == "worker_died" and "worker process died" in message and "died unexpectedly" in text
    # A worker that could not even start on its node: the Python error it raised is the message.
    broken = type("ActorDiedError", (Exception,), {})(
        "The actor died because of an error raised in its creation task, ray::ImplicitFunc.__init__() "
        "(pid=7, ip=10.0.0.7)\n  File \"/x.py\", line 1\nModuleNotFoundError: No module named 'dsearch'")
    assert describe_failure(broken)[:2] == ("worker_died", "the trial's Ray worker failed: ModuleNotFoundError: "
                                                           "No module named 'dsearch'")
    assert describe_failure(None, "Failure # 1\nValueError: x\n") == ("exception", "ValueError: x",
                                                                       "Failure # 1\nValueError: x\n")


SPACE = """
name: s
data: {name: synthetic, synthetic_size: 400, synthetic_image_size: 8}
budget: {max_epochs: 2, num_samples: 3}
sampler: {type: tpe}
constraints: {max_params: MAXP}
fixed: {model.variant: densenet-bc}
params:
  model.depth: {type: int, low: 10, high: 40, step: 6}
  model.growth_rate: {type: int, low: 2, high: 24}
"""


def _searcher(tmp_path, max_params, sampler="tpe"):
    from dsearch.search.engine import Engine
    from dsearch.search.io import parse_space
    from dsearch.search.searcher import StudySearcher

    space = parse_space(SPACE.replace("MAXP", str(max_params)).replace("type: tpe", f"type: {sampler}"))
    (tmp_path / "s").mkdir()
    return space, StudySearcher(Engine(space, st.create_or_load(space, tmp_path / "s"), tmp_path / "s", 1))


def test_samples_rejected_before_training_do_not_use_up_num_samples(tmp_path):
    space, searcher = _searcher(tmp_path, 6000)
    proposals = [searcher.suggest(str(i)) for i in range(3)]
    assert all(isinstance(p, dict) and p["params"] <= 6000 for p in proposals)   # 3 trainable trials proposed
    rejected = [t for t in searcher.engine.study.trials if t.state == TrialState.FAIL]
    assert rejected and all(t.user_attrs["fail_reason"] == "over_budget" for t in rejected)
    assert st.counted_trials(searcher.engine.study) == 3 and st.rejected_trials(searcher.engine.study)["over_budget"] == len(rejected)


def test_ehvi_proposes_only_configurations_within_the_constraints(tmp_path):
    """The same space under EHVI: every candidate is priced before it is proposed, so nothing is rejected."""
    space, searcher = _searcher(tmp_path, 6000, "ehvi")
    proposals = [searcher.suggest(str(i)) for i in range(3)]
    assert all(isinstance(p, dict) and p["params"] <= 6000 for p in proposals)
    assert [t.state for t in searcher.engine.study.trials] == [TrialState.RUNNING] * 3
    assert searcher.suggest("3") == "FINISHED"                   # num_samples trained, the rest still free


@pytest.mark.parametrize("sampler", ["tpe", "ehvi"])
def test_a_space_almost_all_over_the_constraints_stops_after_ten_times_num_samples_rejections(tmp_path, sampler):
    # EHVI prices its candidates first; with none feasible it hands the engine plain draws, rejected as TPE's are.
    space, searcher = _searcher(tmp_path, 100, sampler)           # no DenseNet-BC here has ≤ 100 parameters
    assert searcher.suggest("0") == "FINISHED"
    assert len(searcher.engine.study.trials) == 30 and st.counted_trials(searcher.engine.study) == 0
    assert searcher.engine.infeasible == ("30 of the 30 configurations sampled (100%) were rejected before training "
                                   "(over_budget 30), past the cap of 10 × num_samples; widen the constraints or "
                                   "narrow params to the feasible part of the space")


def test_concurrent_tpe_trials_spread_out_instead_of_all_sampling_the_best_spot(study):
    """The space's TPE counts a running trial as a bad one (constant liar): six trials asked together, none told,
    after ten where x = 0 beats every other value on all three objectives, try other values too (without the liar
    all six would take x = 0)."""
    from optuna.distributions import IntDistribution
    from optuna.trial import create_trial

    x = {"x": IntDistribution(0, 9)}
    for i in range(10):
        study.add_trial(create_trial(params={"x": i}, distributions=x,
                                     values=[0.9 if i == 0 else 0.1 + 0.01 * i, 1000 + i, 1e6 + i]))
    for seed in range(3):
        study.sampler = st.make_sampler("tpe", seed)
        picks = [study.ask(x).params["x"] for _ in range(6)]
        for t in study.get_trials(states=(TrialState.RUNNING,)):
            study.tell(t.number, state=TrialState.FAIL)      # not seen by the next seed's asks
        assert picks.count(0) <= 2 and len(set(picks)) >= 4, (seed, picks)


def test_the_rungs_are_rebuilt_from_each_line_of_trials(study):
    """A requeued trial continues the line of the one it requeues; its longest curve counts, once."""
    from optuna.distributions import FloatDistribution
    from optuna.trial import create_trial

    def add(state, number_attrs, values=None):
        study.add_trial(create_trial(state=state, values=values, params={"x": 0.5},
                                     distributions={"x": FloatDistribution(0, 1)}, user_attrs=number_attrs))

    fixed = {"params": 5000, "macs": 1e6}
    add(TrialState.COMPLETE, {"curve": [0.2, 0.5, 0.6], **fixed}, [0.6, 5000, 1e6])          # 0
    add(TrialState.FAIL, {"curve": [0.3], "fail_reason": "interrupted", "params": 7000, "macs": 2e6})  # 1
    add(TrialState.FAIL, {"fail_reason": "over_budget", "params": 9e9, "macs": 1})            # 2: never trained
    add(TrialState.FAIL, {"curve": [0.3, 0.4], "requeued_from": 1, "fail_reason": "interrupted",
                          "params": 7000, "macs": 2e6})                                        # 3 continues 1
    add(TrialState.PRUNED, {"curve": [0.3, 0.4, 0.45], "requeued_from": 3, "params": 7000, "macs": 2e6})  # 4
    assert st.lineages(study.trials) == {0: 0, 1: 1, 2: 2, 3: 1, 4: 1}
    assert st.rung_history(study) == [(0, [0.2, 0.5, 0.6], fixed),
                                      (1, [0.3, 0.4, 0.45], {"params": 7000, "macs": 2e6})]


def test_a_report_folds_into_the_curve_once_and_a_resumed_one_brings_its_earlier_epochs():
    from dsearch.search.reports import RESUMED_CURVE, extend_curve

    curve: list[float] = []
    assert extend_curve(curve, {"epoch": 3, "val_acc": 0.5, RESUMED_CURVE: [0.1, 0.3]}) and curve == [0.1, 0.3, 0.5]
    assert not extend_curve(curve, {"epoch": 3, "val_acc": 0.5})      # the same epoch again: nothing new
    assert not extend_curve(curve, {"epoch": 4}) and not extend_curve(curve, None)   # no val_acc: not a report
    assert extend_curve(curve, {"epoch": 4, "val_acc": 0.6, RESUMED_CURVE: [9.9]}) and curve == [0.1, 0.3, 0.5, 0.6]
