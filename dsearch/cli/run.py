"""`dsearch run`: from a space file to a study that holds every trial, resumable after a kill."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Optional

import typer

from ..errors import UserError
from ..search import record as st
from ..search.io import SPACE_FILE, check_same_space, dump_space, load_space
from ..search.lock import StudyLock
from ..search.schema import SearchSpace
from .app import app


def with_overrides(space: SearchSpace, cpus: float | None, gpus: float | None) -> SearchSpace:
    """The space with --cpus-per-trial / --gpus-per-trial applied."""
    res = space.resources.model_copy(update={k: v for k, v in (("cpu", cpus), ("gpu", gpus)) if v is not None})
    return space.model_copy(update={"resources": res})


def run_command(space_path: Path, study_dir: Path | None, storage: str | None, ray_address: str | None,
                cpus: float | None, gpus: float | None, quiet: bool = False) -> dict[str, Any]:
    """Run or continue a search; returns the summary (counts by state, best val_acc, wall time)."""
    space = load_space(space_path)
    study_dir = Path(study_dir or Path("studies") / space.name)
    stored = study_dir / SPACE_FILE
    if stored.exists():
        check_same_space(space, stored)
    elif study_dir.exists() and (study_dir / st.STUDY_DB).exists():
        raise UserError(f"{study_dir} holds a study but no {SPACE_FILE}; use a new --study-dir")
    space = with_overrides(space, cpus, gpus)
    t0 = time.time()
    with StudyLock(study_dir):
        from ..search import runner
        from ..search.live import LiveView
        from ..training.data import load_data

        data = load_data(space.data)          # errors (missing files) before Ray or the study start
        runner.start_ray(ray_address)
        try:
            runner.check_resources(space.resources.cpu, space.resources.gpu)
            study = st.create_or_load(space, study_dir, storage)
            if not stored.exists():
                tmp = stored.with_suffix(".tmp")
                tmp.write_text(dump_space(space))
                tmp.replace(stored)
            requeued = st.fail_interrupted(study)
            if requeued and not quiet:
                print(f"resuming: trials {requeued} were interrupted; their parameters are queued again")
            with LiveView(space.budget.max_epochs, space.budget.num_samples, enabled=not quiet) as view:
                try:
                    runner.run_search(space, study, study_dir, data, view)
                finally:
                    st.fail_interrupted(study)     # Ctrl-C: running trials are re-queued, never lost
        finally:
            import ray

            if ray_address is None:
                ray.shutdown()
    return st.summarize(study, time.time() - t0)


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
    cpus_per_trial: Optional[float] = typer.Option(None, "--cpus-per-trial", help="override resources.cpu"),
    gpus_per_trial: Optional[float] = typer.Option(None, "--gpus-per-trial", help="override resources.gpu"),
    quiet: bool = typer.Option(False, "--quiet", help="no live table"),
) -> None:
    """Run (or continue) a search: Ray Tune + ASHA trials recorded in an Optuna study."""
    print_summary(run_command(space, study_dir, storage, ray_address, cpus_per_trial, gpus_per_trial, quiet))
