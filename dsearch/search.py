"""`dsearch run`: from a space file to a study that holds every trial, resumable after a kill."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from . import study as st
from .errors import UserError
from .space import SearchSpace, diff_spaces, dump_space, load_space, parse_space

# Keys that may change between runs of one study: where and how wide it runs, and how many trials.
MAY_CHANGE = ("resources.", "budget.max_concurrent_trials", "budget.num_samples")


def check_same_space(space: SearchSpace, stored: Path) -> None:
    """Refuse to continue a study with a space that differs in what is searched or how it's judged."""
    old = parse_space(stored.read_text(), source=str(stored))
    diffs = [d for d in diff_spaces(old, space) if not d.startswith(MAY_CHANGE)]
    if diffs:
        more = f" (and {len(diffs) - 1} more)" if len(diffs) > 1 else ""
        raise UserError(f"{stored.parent} was started with a different space: {diffs[0]}{more}; "
                        "use the same space, or a new --study-dir")


def with_overrides(space: SearchSpace, cpus: float | None, gpus: float | None) -> SearchSpace:
    """The space with --cpus-per-trial / --gpus-per-trial applied."""
    res = space.resources.model_copy(update={k: v for k, v in (("cpu", cpus), ("gpu", gpus)) if v is not None})
    return space.model_copy(update={"resources": res})


def run_command(space_path: Path, study_dir: Path | None, storage: str | None, ray_address: str | None,
                cpus: float | None, gpus: float | None, quiet: bool = False) -> dict[str, Any]:
    """Run or continue a search; returns the summary (counts by state, best val_acc, wall time)."""
    space = load_space(space_path)
    study_dir = Path(study_dir or Path("studies") / space.name)
    stored = study_dir / st.SPACE_FILE
    if stored.exists():
        check_same_space(space, stored)
    elif study_dir.exists() and (study_dir / st.STUDY_DB).exists():
        raise UserError(f"{study_dir} holds a study but no {st.SPACE_FILE}; use a new --study-dir")
    space = with_overrides(space, cpus, gpus)
    t0 = time.time()
    with st.StudyLock(study_dir):
        from .data import load_data

        data = load_data(space.data)          # errors (missing files) before Ray or the study start
        from . import runner

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
            from .live import LiveView

            with LiveView(space.budget.max_epochs, space.budget.num_samples, enabled=not quiet) as view:
                try:
                    runner.run_search(space, study, study_dir, data, view)
                finally:
                    st.fail_interrupted(study)     # Ctrl-C: running trials are re-queued, never lost
        finally:
            import ray

            if ray_address is None:
                ray.shutdown()
    return summarize(study, time.time() - t0)


def summarize(study: Any, wall: float) -> dict[str, Any]:
    """Counts by state (FAIL by reason), best val_acc, and dsearch+Ray overhead share of trial time."""
    from optuna.trial import TrialState

    counts: dict[str, int] = {}
    best = None
    wall_sum = train_sum = 0.0
    for t in study.get_trials(deepcopy=False):
        key = t.state.name
        if t.state == TrialState.FAIL:
            key = f"FAIL({t.user_attrs.get(st.FAIL_REASON, '?')})"
        counts[key] = counts.get(key, 0) + 1
        curve = [a for a in t.user_attrs.get(st.CURVE, []) if a is not None]
        if t.state == TrialState.COMPLETE and curve:
            best = max(best or 0.0, curve[-1])
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED):
            wall_sum += t.user_attrs.get(st.WALL_TIME_S, 0.0)
            train_sum += t.user_attrs.get(st.TRAIN_TIME_S, 0.0)
    overhead = 1 - train_sum / wall_sum if wall_sum > 0 else None
    return {"study": study.study_name, "wall_time_s": wall, "trials": counts, "best_val_acc": best,
            "overhead_share": overhead}


def print_summary(summary: dict[str, Any]) -> None:
    counts = ", ".join(f"{k} {v}" for k, v in sorted(summary["trials"].items()))
    best = summary["best_val_acc"]
    over = summary["overhead_share"]
    print(f"study {summary['study']}: {summary['wall_time_s']:.0f} s; trials: {counts}; best full-budget "
          f"val_acc: {'n/a' if best is None else f'{best:.4f}'}"
          + ("" if over is None else f"; dsearch+Ray overhead {over:.1%} of trial wall time"))
