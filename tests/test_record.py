"""The study record: how a trial's end becomes COMPLETE / PRUNED / FAIL, and how failures are described."""

from __future__ import annotations

import math
import warnings

import optuna
import pytest
from optuna.trial import TrialState

from dsearch.search import record as st
from dsearch.search.searcher import describe_failure
from dsearch.search.trainable import TrialError, error_kind
from dsearch.training.loop import TrainingDiverged


@pytest.fixture
def study():
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    s = optuna.create_study(directions=["maximize", "minimize", "minimize"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        s.set_metric_names(["val_acc", "params", "macs"])
    return s


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
