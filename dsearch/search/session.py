"""One run of a search on a study, whatever the executor: the lock and the lease, requeueing what a killed
driver left running, the executor's start and its end, and the summary.

`dsearch run` parses its arguments, calls `run_study` and prints what it returns; the Ray executor
(runner.py) trains the trials the engine (engine.py) asks for.
"""

from __future__ import annotations

import signal
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

from ..errors import RunFailed, RunInterrupted
from . import artifacts
from . import record as st
from .io import SPACE_FILE, dump_space
from .lock import LOCK_FILE, StudyLease, StudyLock
from .pricing import describe_share
from .rungs import describe as describe_rungs
from .storage import open_storage, storage_url
from .tracking import end_tracking, start_tracking

if TYPE_CHECKING:
    import optuna

    from .schema import SearchSpace


def run_study(space: "SearchSpace", study_dir: Path, storage: str | None, ray_address: str | None,
              trials: artifacts.TrialStorage, default_trials: bool, again: str,
              say: Callable[[str], None] = print, live: bool = True) -> dict[str, Any]:
    """Run or continue the space's search on its study until num_samples trials are counted; the summary.

    Raises RunInterrupted after SIGINT / SIGTERM and RunFailed when every trial of the run failed, each
    carrying the summary (`.summary`) once the study is in order; `again` is the command that continues it.
    Raises LeaseLost when another driver took the study over (a shared database): the run stopped and left
    every trial as it was, to that driver.
    """
    from . import runner
    from .live import LiveView
    from ..training.data import load_data

    t0 = time.time()
    created = not study_dir.exists()
    lease = None
    with StudyLock(study_dir), _undo_failed_start(study_dir, created):
        if storage:
            lease = _check_lease(storage_url(study_dir, storage), space.name, say)   # before the slow start of Ray
        done = _finished(space, storage, study_dir)
        if done is not None:                  # nothing owed, nothing to requeue: no data, no Ray
            say(f"study {space.name}: nothing left to run ({space.budget.num_samples} trials counted, as "
                "budget.num_samples asks; raise it to search further)")
            return st.summarize(done, time.time() - t0)
        data = load_data(space.data)          # errors (missing files) before Ray or the study start
        if not default_trials:                # a --storage-path this machine can't write: before Ray starts
            artifacts.remove(artifacts.write_probe(trials.location))
        runner.start_ray(ray_address)
        try:
            runner.check_resources(space.resources.cpu, space.resources.gpu)
            if ray_address:       # every node must see where trials save their checkpoints
                runner.check_storage_visible(trials.location, default=default_trials)
            study = st.create_or_load(space, study_dir, storage)
            # A shared database can be reached from other hosts, which the file lock can't see.
            if storage and lease is None:
                lease = StudyLease(storage_url(study_dir, storage), space.name, say=say)
            with lease if lease is not None else nullcontext():
                if not (study_dir / SPACE_FILE).exists():
                    tmp = study_dir / (SPACE_FILE + ".tmp")
                    tmp.write_text(dump_space(space))
                    tmp.replace(study_dir / SPACE_FILE)
                requeued = st.fail_interrupted(study)
                b = space.budget
                say(f"sampler {space.sampler_type} ({space.sampler_why}); {space.scheduler} on "
                    f"{', '.join(m for m, _ in space.rung_objectives)}, "
                    + describe_rungs(space.milestones, b.max_epochs, b.reduction_factor)
                    + f": {space.rung_placement}")
                say(describe_share(space.resources))
                if requeued:
                    say(f"resuming: trials {requeued} were interrupted; they are queued again, to continue "
                        "from their last checkpoints")
                tracker = start_tracking(space, study, storage_url(study_dir, storage), say)
                engine = None
                with runner.Interruption() as interruption, \
                        LiveView(space.budget.max_epochs, space.budget.num_samples, enabled=live) as view:
                    try:
                        engine = runner.run_search(space, study, study_dir, data, view, _Stop(interruption, lease),
                                                   trials, tracker=tracker)
                    except Exception as e:
                        if lease is not None and lease.lost:   # a write to a trial the new holder failed
                            raise lease.lost_error() from e
                        raise
                    finally:
                        # Never lost: queued again, resumable; but once the lease is lost the trials are the
                        # new holder's, which fails and requeues ours itself.
                        lost = lease is not None and lease.lost is not None
                        stopped = [] if lost else st.fail_interrupted(study)
                        end_tracking(tracker, study, t0, interruption.signum is not None or engine is None,
                                     engine is not None and bool(engine.failed) and not engine.trained)
                if lost:
                    raise lease.lost_error()
        finally:
            import ray

            if ray_address is None:
                ray.shutdown()
    summary = st.summarize(study, time.time() - t0)
    if interruption.signum is not None:
        name = signal.Signals(interruption.signum).name
        error = RunInterrupted(f"{name}: stopped; {len(stopped)} running trial{'s' * (len(stopped) != 1)} "
                               f"{stopped} marked FAIL (interrupted) and queued again; continue with: {again}",
                               interruption.signum)
        error.summary = summary
        raise error
    if engine.failed and not engine.trained:
        number, message = engine.failed[0]
        n = len(engine.failed)
        error = RunFailed(f"{'all ' if n > 1 else ''}{n} trial{'s' * (n > 1)} of this run failed and none trained "
                          f"(a setup problem?); trial {number}: {message[:300]}")
        error.summary = summary
        raise error
    return summary


class _Stop:
    """Whether the run must stop: a signal (Ctrl-C, SIGTERM) or a lost lease, which stops it the same way (no new
    trial, the running ones stopped, nothing recorded for them)."""

    def __init__(self, interruption: Callable[[], bool], lease: StudyLease | None) -> None:
        self.interruption, self.lease = interruption, lease

    def __call__(self) -> bool:
        return self.interruption() or (self.lease is not None and self.lease.lost is not None)

    def __reduce__(self):   # Tune pickles the engine that holds this; a copy keeps no thread, no connection
        return (_Stop, (self.interruption, None))


def _finished(space: "SearchSpace", storage: str | None, study_dir: Path) -> "optuna.Study | None":
    """The study, if it exists and owes nothing: num_samples trials counted, none WAITING, none RUNNING (a killed
    driver's RUNNING trials are requeued by a full run); else None. Creates nothing."""
    import optuna
    from optuna.trial import TrialState

    from .storage import STUDY_DB

    if storage is None and not (study_dir / STUDY_DB).exists():
        return None
    url = storage_url(study_dir, storage)
    if space.name not in [s.study_name for s in open_storage(url).get_all_studies()]:
        return None
    study = optuna.load_study(study_name=space.name, storage=url)
    if st.counted_trials(study) < space.budget.num_samples:
        return None
    if any(t.state in (TrialState.WAITING, TrialState.RUNNING) for t in study.get_trials(deepcopy=False)):
        return None
    return study


def _check_lease(url: str, name: str, say: Callable[[str], None]) -> StudyLease | None:
    """Refuse if a live driver, maybe on another host, runs the study in this database; the lease checked
    (None: no study yet), which then takes over a stale lease without watching it again."""
    if name in [s.study_name for s in open_storage(url).get_all_studies()]:
        lease = StudyLease(url, name, say=say)
        lease.check()
        return lease
    return None


@contextmanager
def _undo_failed_start(study_dir: Path, created: bool) -> Iterator[None]:
    """On a failure before the study exists, remove the folder this run made (it holds only the lock file and
    maybe the empty trial storage folder).

    Runs while the lock is held, so a second driver that lost the race never removes the winner's folder.
    """
    try:
        yield
    except BaseException:
        try:
            # Besides the lock, only empty folders (the trial storage the start-up check made) may be there.
            entries = list(study_dir.iterdir())
            if created and all(p.name == LOCK_FILE or (p.is_dir() and not any(p.iterdir())) for p in entries):
                for p in entries:
                    p.rmdir() if p.is_dir() else p.unlink()
                study_dir.rmdir()
        except OSError:
            pass
        raise


