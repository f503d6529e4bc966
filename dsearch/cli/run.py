"""`dsearch run`: from a space file to a study that holds every trial, resumable after a kill."""

from __future__ import annotations

import signal
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Iterator, Optional

import typer

from ..errors import RunFailed, RunInterrupted, UserError
from ..search import artifacts
from ..search import record as st
from ..search.storage import STUDY_DB, check_storage, open_storage, storage_url
from ..search.io import SPACE_FILE, check_same_space, dump_space, load_space
from ..search.lock import LOCK_FILE, StudyLease, StudyLock
from ..search.rungs import describe as describe_rungs
from ..search.schema import SearchSpace
from .app import app


def with_overrides(space: SearchSpace, cpus: float | None, gpus: float | None) -> SearchSpace:
    """The space with --cpus-per-trial / --gpus-per-trial applied, validated like the file's own values."""
    from pydantic import ValidationError

    from ..strict import format_validation_error

    update = {k: v for k, v in (("cpu", cpus), ("gpu", gpus)) if v is not None}
    try:
        res = type(space.resources).model_validate({**space.resources.model_dump(), **update})
    except ValidationError as e:
        flag = {"cpu": "--cpus-per-trial", "gpu": "--gpus-per-trial"}[str(e.errors()[0]["loc"][0])]
        raise UserError(f"{flag}: {format_validation_error(e, prefix=['resources'])}") from None
    return space.model_copy(update={"resources": res})


def run_command(space_path: Path, study_dir: Path | None, storage: str | None, ray_address: str | None,
                cpus: float | None, gpus: float | None, quiet: bool = False,
                storage_path: str | None = None) -> dict[str, Any]:
    """Run or continue a search; returns the summary (counts by state, best val_acc, wall time).

    Raises RunInterrupted after SIGINT / SIGTERM, once the running trials are queued again.
    """
    space = with_overrides(load_space(space_path), cpus, gpus)
    if storage:
        check_storage(storage)         # a bad URL or a missing driver: one line, before Ray starts
    study_dir = Path(study_dir or Path("studies") / space.name)
    # A --storage-path holds many studies: each keeps its trials in its own folder there.
    trials = (artifacts.TrialStorage(artifacts.join(storage_path, space.name)) if storage_path
              else artifacts.TrialStorage.of_study(study_dir))
    stored = study_dir / SPACE_FILE
    if stored.exists():
        check_same_space(space, stored)
    elif study_dir.exists() and (study_dir / STUDY_DB).exists():
        raise UserError(f"{study_dir} holds a study but no {SPACE_FILE}; use a new --study-dir")
    again = " ".join([f"dsearch run {space_path} --study-dir {study_dir}"]
                     + [f"{flag} {value}" for flag, value in (("--storage", storage), ("--storage-path", storage_path),
                                                               ("--ray-address", ray_address)) if value])
    return _run(space, study_dir, storage, ray_address, trials, storage_path is None, again, quiet)


def _run(space: SearchSpace, study_dir: Path, storage: str | None, ray_address: str | None,
         trials: artifacts.TrialStorage, default_trials: bool, again: str, quiet: bool) -> dict[str, Any]:
    from ..search import runner
    from ..search.live import LiveView
    from ..training.data import load_data

    t0 = time.time()
    created = not study_dir.exists()
    with StudyLock(study_dir), _undo_failed_start(study_dir, created):
        if storage:
            _check_lease(storage_url(study_dir, storage), space.name)   # before the slow start of Ray
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
            with StudyLease(storage_url(study_dir, storage), space.name) if storage else nullcontext():
                if not (study_dir / SPACE_FILE).exists():
                    tmp = study_dir / (SPACE_FILE + ".tmp")
                    tmp.write_text(dump_space(space))
                    tmp.replace(study_dir / SPACE_FILE)
                requeued = st.fail_interrupted(study)
                if not quiet:
                    b = space.budget
                    print(f"{space.scheduler} on {', '.join(m for m, _ in space.rung_objectives)}: "
                          + describe_rungs(b.milestones, b.max_epochs, b.reduction_factor))
                if requeued and not quiet:
                    print(f"resuming: trials {requeued} were interrupted; they are queued again, to continue "
                          "from their last checkpoints")
                with runner.Interruption() as interruption, \
                        LiveView(space.budget.max_epochs, space.budget.num_samples, enabled=not quiet) as view:
                    try:
                        searcher = runner.run_search(space, study, study_dir, data, view, interruption, trials)
                    finally:
                        stopped = st.fail_interrupted(study)   # never lost: queued again, resumable
        finally:
            import ray

            if ray_address is None:
                ray.shutdown()
    summary = st.summarize(study, time.time() - t0)
    if interruption.signum is not None:
        print_summary(summary)
        name = signal.Signals(interruption.signum).name
        raise RunInterrupted(f"{name}: stopped; {len(stopped)} running trial{'s' * (len(stopped) != 1)} "
                             f"{stopped} marked FAIL (interrupted) and queued again; continue with: {again}",
                             interruption.signum)
    if searcher.failed and not searcher.trained:
        print_summary(summary)
        number, message = searcher.failed[0]
        n = len(searcher.failed)
        raise RunFailed(f"{'all ' if n > 1 else ''}{n} trial{'s' * (n > 1)} of this run failed and none trained "
                        f"(a setup problem?); trial {number}: {message[:300]}")
    return summary


def _check_lease(url: str, name: str) -> None:
    """Refuse at once if a live driver, maybe on another host, runs the study in this database."""
    if name in [s.study_name for s in open_storage(url).get_all_studies()]:
        StudyLease(url, name).check()


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


def print_summary(summary: dict[str, Any]) -> None:
    counts = ", ".join(f"{k} {v}" for k, v in sorted(summary["trials"].items()))
    best = summary["best_val_acc"]
    over = summary["overhead_share"]
    print(f"study {summary['study']}: {summary['wall_time_s']:.0f} s; trials: {counts}; best full-budget "
          f"val_acc: {'n/a' if best is None else f'{best:.4f}'}"
          + ("" if over is None else f"; dsearch+Ray overhead {over:.1%} of trial wall time"))


@app.command()
def run(
    space: Path = typer.Argument(..., help="search space YAML, e.g. spaces/cifar_bc.yaml"),
    study_dir: Optional[Path] = typer.Option(None, "--study-dir", help="default: studies/<name>"),
    storage: Optional[str] = typer.Option(None, "--storage", help="Optuna RDB URL (default: SQLite in the study dir)"),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help="existing Ray cluster (default: local)"),
    storage_path: Optional[str] = typer.Option(
        None, "--storage-path", help="where trials keep folders and checkpoints, in a folder per study: a folder "
        "every node sees, or s3://BUCKET/PATH, gs://BUCKET/PATH (default: STUDY_DIR/ray)"),
    cpus_per_trial: Optional[float] = typer.Option(None, "--cpus-per-trial", help="override resources.cpu"),
    gpus_per_trial: Optional[float] = typer.Option(None, "--gpus-per-trial", help="override resources.gpu"),
    quiet: bool = typer.Option(False, "--quiet", help="no live table"),
) -> None:
    """Run (or continue) a search: Ray Tune + ASHA trials recorded in an Optuna study."""
    # After SIGINT / SIGTERM run_command raises RunInterrupted: main says how to continue, exit 128 + signal.
    print_summary(run_command(space, study_dir, storage, ray_address, cpus_per_trial, gpus_per_trial, quiet,
                              storage_path))
