"""Search methods on real Fashion-MNIST: dsearch's default (EHVI) vs MO-ASHA + TPE vs ASHA vs MO-ASHA + random, and
Ray Tune's OptunaSearch + ASHA.

Every method searches bench/search_space.yaml with the same budget (max_epochs, rung, reduction_factor),
num_samples, resources and sampler seed, once per seed (seed s: sampler.seed = s):
  dsearch        dsearch's defaults: the EHVI sampler (no sampler.type) and moasha with the chance floor
  moasha         dsearch, budget.scheduler moasha (a rung ranks on val_acc, params, MACs), TPE
  asha           dsearch, budget.scheduler asha (a rung ranks on val_acc alone), TPE
  moasha-random  dsearch, moasha with sampler.type random
  tune-optuna    Ray Tune's stock OptunaSearch (metric [val_acc, params, macs], mode [max, min, min], the same
                 TPE sampler and seed, the seed trial as points_to_evaluate) with Ray's ASHAScheduler on val_acc
                 (time_attr epoch, max_t, grace_period, reduction_factor of the space), wired by hand: a function
                 trainable that resolves the sampled config and trains it with dsearch's `fit`, reporting
                 val_acc, params and MACs each epoch. Its front is what a user gets: the Optuna study's
                 best_trials, whose values are each trial's LAST report, so a trial ASHA stopped at the rung
                 is there with its epoch-3 val_acc; the table counts those (partial-budget front points).
dsearch methods run as `python -m dsearch.cli run SPACE --study-dir DIR --quiet` subprocesses; tune-optuna
runs in a subprocess of this script (a fresh Ray each time, like the CLI), its study copied to DIR/study.db.

Measured per method and seed: the hypervolume of the front against wall-clock time (seconds since the method's
subprocess started, at each trial's Optuna datetime_complete; the front of full-budget trials completed so far;
for tune-optuna, of its COMPLETE trials as the user sees them), the final hypervolume, front points, front
points at or below the median parameter count (over every trial that trained, all methods and seeds), front
points trained for less than max_epochs, and wall time. Hypervolumes are `normalized_hypervolume` in one box
for everything: `normalization_bounds` of every trained trial's (val_acc, params, MACs), all methods and seeds.
Per method, the median over seeds, and the time to reach asha's median final hypervolume.

Usage: python bench/search.py [--seeds 3] [--methods moasha,asha,moasha-random,tune-optuna]
                              [--work-dir bench/results/search_runs] [--out bench/results/search.json]
                              [--analyse-only] [--rerun] [--smoke]
A finished search (its WORK/METHOD-sSEED.json says rc 0) is reused, so an interrupted run continues where it
stopped (an unfinished one is removed and run again: its timings would be meaningless); --rerun runs all again;
--analyse-only only reads the work dir. --smoke: a tiny version (400 training images, 4 trials) to check the
wiring, into bench/results/search_smoke*.
Writes the JSON (per-seed raw data, HV-vs-time series) and beside it a plotly HTML figure (search.html).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BASE_SPACE = HERE / "search_space.yaml"

# method → (runner, budget.scheduler, sampler.type; None: dsearch's default)
METHODS: dict[str, tuple[str, str, str | None]] = {
    "dsearch": ("dsearch", "moasha", None),
    "moasha": ("dsearch", "moasha", "tpe"),
    "asha": ("dsearch", "asha", "tpe"),
    "moasha-random": ("dsearch", "moasha", "random"),
    "tune-optuna": ("tune", "asha", "tpe"),
}
DSEARCH_METHODS = [m for m, (kind, _, _) in METHODS.items() if kind == "dsearch"]
REFERENCE = "asha"                 # whose median final hypervolume the others race to
SMOKE = {"data.train_subset": 400, "data.val_size": 200, "budget.num_samples": 4}
RUN_TIMEOUT_S = 20 * 60            # one search; SIGTERM (dsearch stops cleanly, Ray shut down) after this
TRAIN_TIME_S = "train_time_s"

# Targets printed at the end.
TIME_SHARE = 0.6                   # moasha reaches asha's median final HV within this share of asha's wall time
SMALL_RATIO = 1.5                  # moasha's front: ≥ this × asha's points at or below the median params


# --------------------------------------------------------------------------------------------- spaces and runs

def method_space(base: dict, method: str, seed: int, smoke: bool) -> dict:
    """The base space for one method and seed: scheduler, sampler type and seed, and a name of its own."""
    _, scheduler, sampler = METHODS[method]
    space = json.loads(json.dumps(base))
    space["name"] = f"search-{method}-s{seed}"
    space["budget"]["scheduler"] = scheduler
    space["sampler"] = {"seed": seed} if sampler is None else {"type": sampler, "seed": seed}
    if smoke:
        for key, value in SMOKE.items():
            section, field = key.split(".")
            space[section][field] = value
    return space


def run_name(method: str, seed: int) -> str:
    return f"{method}-s{seed}"


def meta_path(work: Path, method: str, seed: int) -> Path:
    return work / f"{run_name(method, seed)}.json"


def is_done(work: Path, method: str, seed: int) -> bool:
    p = meta_path(work, method, seed)
    if not p.exists():
        return False
    meta = json.loads(p.read_text())
    return meta.get("rc") == 0 and (work / run_name(method, seed) / "study.db").exists()


def run_one(work: Path, base: dict, method: str, seed: int, smoke: bool) -> dict:
    """One search in a subprocess; its start/end times and exit status in WORK/METHOD-sSEED.json."""
    from dsearch.search.io import load_space

    name = run_name(method, seed)
    study_dir, space_file, log = work / name, work / f"{name}.yaml", work / f"{name}.log"
    for stale in (study_dir, meta_path(work, method, seed)):
        if stale.is_dir():
            shutil.rmtree(stale)
        elif stale.exists():
            stale.unlink()
    space_file.write_text(yaml.safe_dump(method_space(base, method, seed, smoke), sort_keys=False))
    load_space(space_file)          # a bad space: one error here, before any subprocess
    if METHODS[method][0] == "dsearch":
        cmd = [sys.executable, "-m", "dsearch.cli", "run", str(space_file), "--study-dir", str(study_dir), "--quiet"]
    else:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--tune-child", str(space_file), str(study_dir)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    start = time.time()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env)
        try:
            rc = proc.wait(timeout=RUN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGTERM)          # dsearch: stops its trials, shuts its Ray down (exit 143)
            try:
                rc = proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                proc.kill()
                rc = proc.wait()
        except KeyboardInterrupt:
            proc.send_signal(signal.SIGINT)
            proc.wait()
            raise
    end = time.time()
    meta = {"method": method, "seed": seed, "start": start, "end": end, "wall_s": end - start, "rc": rc,
            "command": cmd, "space_file": str(space_file), "study_dir": str(study_dir), "log": str(log)}
    meta_path(work, method, seed).write_text(json.dumps(meta, indent=2) + "\n")
    return meta


# ------------------------------------------------------------------------ tune-optuna: Ray Tune, wired by hand

def tune_trial_name(trial: Any) -> str:
    """trial_N, N the trial's index (0-based, the order the searcher asked Optuna: its trial number)."""
    return f"trial_{int(trial.experiment_tag.split('_', 1)[0]) - 1}"


def tune_trainable(config: dict, data: Any = None, space: Any = None) -> None:
    """Resolve the sampled config, train it with dsearch's `fit`, report val_acc, params, MACs each epoch."""
    from ray import tune

    from dsearch.metrics import EPOCH, EPOCH_TIME, MACS, PARAMS, VAL_ACC
    from dsearch.net.cost import count_macs, count_params
    from dsearch.search.sampling import input_size, resolve
    from dsearch.training.loop import fit

    run = resolve(space, config)
    try:            # the same per-trial training seed as dsearch (its Optuna trial number)
        run.train.seed = int(tune.get_context().get_trial_name().rsplit("_", 1)[1])
    except (ValueError, IndexError, AttributeError):
        pass
    run.train.num_threads = max(1, int(space.resources.cpu))
    params, macs = count_params(run.model), count_macs(run.model, input_size(run.data))
    spent = 0.0

    def report(m: dict) -> None:
        nonlocal spent
        spent += m[EPOCH_TIME]
        tune.report({EPOCH: m[EPOCH], VAL_ACC: m[VAL_ACC], PARAMS: params, MACS: macs, TRAIN_TIME_S: spent})

    fit(run, data, callback=report)


def tune_child(space_file: Path, study_dir: Path) -> None:
    """The tune-optuna search (in its own process); its Optuna study copied to study_dir/study.db."""
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    import optuna
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    from dsearch.metrics import EPOCH, MAXIMIZE, VAL_ACC
    from dsearch.search.io import load_space
    from dsearch.search.methods import optuna_distributions
    from dsearch.search.record import make_sampler
    from dsearch.search.sampling import seed_params
    from dsearch.training.data import load_data

    space = load_space(space_file)
    b = space.budget
    study_dir.mkdir(parents=True, exist_ok=True)
    data = load_data(space.data)
    metrics = space.metrics
    modes = ["max" if o.direction == MAXIMIZE else "min" for o in space.objectives]
    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False,
             logging_level="ERROR")
    try:
        # The sampler dsearch makes for `sampler: {type: tpe, seed}` (multivariate TPE, 5 start-up trials):
        # the comparison is of the schedulers and fronts, not of TPE settings.
        searcher = OptunaSearch(space=optuna_distributions(space), metric=metrics, mode=modes,
                                sampler=make_sampler(space.sampler.type, space.sampler.seed),
                                points_to_evaluate=seed_params(space) or None)
        scheduler = ASHAScheduler(time_attr=EPOCH, metric=VAL_ACC, mode="max", max_t=b.max_epochs,
                                  grace_period=b.grace_period, reduction_factor=b.reduction_factor)
        ray_rungs = sorted(int(m) for m, _ in scheduler._brackets[0]._rungs if m < b.max_epochs)  # max_t: stop anyway
        if ray_rungs != b.milestones:
            print(f"warning: Ray's ASHA rungs {ray_rungs} differ from dsearch's {b.milestones}", flush=True)
        trainable = tune.with_resources(tune.with_parameters(tune_trainable, data=data, space=space),
                                        {"cpu": space.resources.cpu, "gpu": space.resources.gpu})
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=b.num_samples,
                                        max_concurrent_trials=b.max_concurrent_trials,
                                        trial_name_creator=tune_trial_name, trial_dirname_creator=tune_trial_name),
            run_config=tune.RunConfig(name="run", storage_path=str((study_dir / "ray").resolve()), verbose=0,
                                      failure_config=tune.FailureConfig(max_failures=0)))
        grid = tuner.fit()
        study = searcher._ot_study          # OptunaSearch's in-memory study: what a user reads best_trials from
        number = {tid: t.number for tid, t in searcher._ot_trials.items()}
        last: dict[int, dict] = {}
        errors = 0
        for result in grid:
            tid = (result.metrics or {}).get("trial_id")
            errors += result.error is not None
            if tid in number:
                last[number[tid]] = result.metrics
        best = sorted(t.number for t in study.best_trials)
        out = optuna.create_study(study_name=space.name, storage=f"sqlite:///{study_dir / 'study.db'}",
                                  directions=study.directions)
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            out.set_metric_names(metrics)
        for t in study.get_trials(deepcopy=True):
            r = last.get(t.number, {})
            t.user_attrs = {**t.user_attrs, "epochs_trained": int(r.get(EPOCH, 0)), "max_epochs": b.max_epochs,
                            TRAIN_TIME_S: float(r.get(TRAIN_TIME_S, 0.0)), "ray_trial_id": r.get("trial_id")}
            out.add_trial(t)
        out.set_user_attr("best_trials", best)
        out.set_user_attr("ray_rungs", ray_rungs)
        out.set_user_attr("errors", errors)
        early = [n for n in best if last.get(n, {}).get(EPOCH, 0) < b.max_epochs]
        print(f"tune-optuna {space.name}: {len(study.trials)} trials, best_trials {best}, "
              f"stopped early among them {early}, errors {errors}", flush=True)
    finally:
        ray.shutdown()


# -------------------------------------------------------------------------------------------------- analysis

def load_run(work: Path, method: str, seed: int) -> dict:
    """The trials of one finished search, with completion times in seconds since its subprocess started."""
    import optuna
    from optuna.trial import TrialState

    from dsearch.metrics import MACS, PARAMS, VAL_ACC
    from dsearch.search.io import load_space

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    meta = json.loads(meta_path(work, method, seed).read_text())
    space = load_space(meta["space_file"])
    study = optuna.load_study(study_name=space.name, storage=f"sqlite:///{Path(meta['study_dir']) / 'study.db'}")
    trials, counts = [], {}
    for t in study.get_trials(deepcopy=False):
        state = t.state.name
        if state == "FAIL":
            state = f"FAIL({t.user_attrs.get('fail_reason', '?')})"
        counts[state] = counts.get(state, 0) + 1
        if t.state == TrialState.COMPLETE and t.values is not None:
            values = list(t.values)
        elif t.state == TrialState.PRUNED:     # dsearch: stopped at a rung, its last values in user attributes
            values = [t.user_attrs.get(f"last_{m}", t.user_attrs.get(m, math.nan)) for m in (VAL_ACC, PARAMS, MACS)]
        else:
            continue
        if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
            continue
        done = t.datetime_complete.timestamp() - meta["start"] if t.datetime_complete else None
        trials.append({"number": t.number, "state": t.state.name, "val_acc": values[0], "params": values[1],
                       "macs": values[2], "epochs": int(t.user_attrs.get("epochs_trained", 0)), "t": done,
                       TRAIN_TIME_S: float(t.user_attrs.get(TRAIN_TIME_S, 0.0))})
    return {"method": method, "seed": seed, "wall_s": meta["wall_s"], "rc": meta["rc"],
            "max_epochs": space.budget.max_epochs, "counts": counts, "trials": trials,
            "best_trials_reported": study.user_attrs.get("best_trials"), "meta": meta}


def values_of(trials: list[dict]) -> np.ndarray:
    return np.array([[t["val_acc"], t["params"], t["macs"]] for t in trials], dtype=float).reshape(-1, 3)


def front_of(trials: list[dict]) -> list[dict]:
    from dsearch.analysis.pareto import pareto_mask
    from dsearch.metrics import DEFAULT_OBJECTIVES

    if not trials:
        return []
    return [t for t, on in zip(trials, pareto_mask(values_of(trials), DEFAULT_OBJECTIVES)) if on]


def hv(trials: list[dict], bounds: np.ndarray) -> float:
    from dsearch.analysis.pareto import normalized_hypervolume
    from dsearch.metrics import DEFAULT_OBJECTIVES

    return normalized_hypervolume(values_of(trials), DEFAULT_OBJECTIVES, bounds) if trials else 0.0


def hv_series(pool: list[dict], bounds: np.ndarray) -> list[list[float]]:
    """[[t, hv]]: from (0, 0), the hypervolume of the pool's trials completed by each completion time."""
    timed = sorted((t for t in pool if t["t"] is not None), key=lambda t: t["t"])
    series = [[0.0, 0.0]]
    for i, t in enumerate(timed):
        series.append([t["t"], hv(timed[: i + 1], bounds)])
    return series


def time_to(series: list[list[float]], target: float) -> float:
    """First time the series reaches target (inf if never)."""
    for t, h in series:
        if h >= target - 1e-12:
            return t
    return math.inf


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else math.nan


def analyse(runs: list[dict]) -> dict:
    """Bounds and median params over everything, then per run and per method (medians over seeds)."""
    from dsearch.analysis.pareto import normalization_bounds
    from dsearch.metrics import DEFAULT_OBJECTIVES

    trained = [t for r in runs for t in r["trials"]]
    if not trained:
        raise SystemExit("no trained trials in the work dir: nothing to analyse")
    bounds = normalization_bounds(values_of(trained), DEFAULT_OBJECTIVES)
    median_params = float(np.median([t["params"] for t in trained]))
    for r in runs:
        full = [t for t in r["trials"] if t["state"] == "COMPLETE" and t["epochs"] >= r["max_epochs"]]
        # dsearch: its COMPLETE trials (full budget by construction; checked). tune-optuna: every COMPLETE trial
        # of OptunaSearch's study, as the user sees it, ASHA-stopped ones included.
        pool = [t for t in r["trials"] if t["state"] == "COMPLETE"]
        front = front_of(pool)
        r["front"] = [{k: t[k] for k in ("number", "val_acc", "params", "macs", "epochs")} for t in front]
        r["front_size"] = len(front)
        r["small_front_points"] = sum(t["params"] <= median_params for t in front)
        r["partial_front_points"] = sum(t["epochs"] < r["max_epochs"] for t in front)
        r["final_hv"] = hv(front, bounds)
        r["final_hv_full_budget"] = hv(front_of(full), bounds)
        r["series"] = hv_series(pool, bounds)
        r["series_full_budget"] = hv_series(full, bounds)
        r["trained_trials"] = len(r["trials"])
        r["full_budget_trials"] = len(full)
        r["trial_train_s"] = sum(t[TRAIN_TIME_S] for t in r["trials"])
        reported = r.get("best_trials_reported")
        if reported is not None and sorted(reported) != sorted(t["number"] for t in front):
            print(f"note: {r['method']} seed {r['seed']}: the front here {sorted(t['number'] for t in front)} differs "
                  f"from best_trials as reported {sorted(reported)}")
    methods = list(dict.fromkeys(r["method"] for r in runs))
    ref_runs = [r for r in runs if r["method"] == REFERENCE]
    target = median([r["final_hv"] for r in ref_runs]) if ref_runs else None
    summary = {}
    for m in methods:
        rs = [r for r in runs if r["method"] == m]
        for r in rs:
            r["time_to_reference_hv"] = time_to(r["series"], target) if target is not None else None
        summary[m] = {
            "seeds": [r["seed"] for r in rs],
            "final_hv": median([r["final_hv"] for r in rs]),
            "final_hv_full_budget": median([r["final_hv_full_budget"] for r in rs]),
            "time_to_reference_hv": median([r["time_to_reference_hv"] for r in rs]) if target is not None else None,
            "front_size": median([r["front_size"] for r in rs]),
            "small_front_points": median([r["small_front_points"] for r in rs]),
            "partial_front_points": median([r["partial_front_points"] for r in rs]),
            "partial_front_points_max": max(r["partial_front_points"] for r in rs),
            "wall_s": median([r["wall_s"] for r in rs]),
            "trial_train_s": median([r["trial_train_s"] for r in rs]),
        }
    targets = {}
    if "moasha" in summary and REFERENCE in summary:
        mo, ref = summary["moasha"], summary[REFERENCE]
        limit = TIME_SHARE * ref["wall_s"]
        targets["moasha_time_to_asha_hv"] = {
            "value_s": mo["time_to_reference_hv"], "limit_s": limit,
            "met": mo["time_to_reference_hv"] is not None and mo["time_to_reference_hv"] <= limit}
        need = SMALL_RATIO * ref["small_front_points"]
        targets["moasha_small_front_points"] = {
            "value": mo["small_front_points"], "asha": ref["small_front_points"], "need": need,
            "met": mo["small_front_points"] >= need and mo["small_front_points"] > 0}
    dsearch_runs = [r for r in runs if METHODS[r["method"]][0] == "dsearch"]
    if dsearch_runs:
        targets["dsearch_partial_front_points"] = {
            "value": sum(r["partial_front_points"] for r in dsearch_runs), "met":
            all(r["partial_front_points"] == 0 for r in dsearch_runs)}
    return {"bounds": bounds.tolist(), "bounds_note": "minimisation form: -val_acc, log10 params, log10 MACs",
            "median_params": median_params, "reference_hv": target, "summary": summary, "targets": targets}


def grid_band(rs: list[dict], grid: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Median, min and max over seeds of each run's HV step function on the time grid."""
    rows = []
    for r in rs:
        ts = np.array([p[0] for p in r["series"]])
        hs = np.array([p[1] for p in r["series"]])
        rows.append(hs[np.searchsorted(ts, grid, side="right") - 1])
    rows = np.array(rows)
    return np.median(rows, axis=0), rows.min(axis=0), rows.max(axis=0)


def write_figure(runs: list[dict], result: dict, path: Path, title: str) -> None:
    import plotly.graph_objects as go

    colors = {"moasha": "#1f77b4", "asha": "#d62728", "moasha-random": "#2ca02c", "tune-optuna": "#9467bd"}
    end = max(r["wall_s"] for r in runs)
    grid = np.linspace(0.0, end, 400)
    fig = go.Figure()
    for m in result["summary"]:
        rs = [r for r in runs if r["method"] == m]
        mid, lo, hi = grid_band(rs, grid)
        c = colors.get(m, "#7f7f7f")
        rgb = tuple(int(c[i:i + 2], 16) for i in (1, 3, 5))
        fig.add_trace(go.Scatter(x=np.concatenate([grid, grid[::-1]]), y=np.concatenate([hi, lo[::-1]]),
                                 fill="toself", fillcolor=f"rgba{rgb + (0.15,)}", line={"width": 0},
                                 hoverinfo="skip", showlegend=False, legendgroup=m, name=f"{m} min–max"))
        fig.add_trace(go.Scatter(x=grid, y=mid, mode="lines", line={"color": c, "shape": "hv"}, legendgroup=m,
                                 name=f"{m} (median of {len(rs)} seed{'s' * (len(rs) != 1)})"))
    if result["reference_hv"] is not None:
        fig.add_hline(y=result["reference_hv"], line_dash="dot", line_color="#888",
                      annotation_text=f"{REFERENCE} median final HV", annotation_position="bottom right")
    fig.update_layout(title=title, xaxis_title="wall-clock time since the method started (s)",
                      yaxis_title="normalised hypervolume (val_acc, log params, log MACs)", template="plotly_white",
                      legend={"orientation": "h", "y": -0.2})
    path.write_text(fig.to_html(include_plotlyjs=True, full_html=True))


def fmt_s(x: float | None) -> str:
    if x is None:
        return "n/a"
    return "never" if math.isinf(x) else f"{x:.0f}"


def print_table(result: dict) -> None:
    print(f"\nmedian over seeds; HV normalised in one box (all methods, seeds); median params "
          f"{result['median_params']:,.0f}; {REFERENCE} median final HV "
          f"{'n/a' if result['reference_hv'] is None else format(result['reference_hv'], '.4f')}")
    head = (f"{'method':<14} {'final HV':>8} {'HV full':>8} {'t→asha HV s':>11} {'front':>5} {'small':>5} "
            f"{'partial':>7} {'wall s':>7} {'train s':>7}")
    print(head)
    print("-" * len(head))
    for m, s in result["summary"].items():
        print(f"{m:<14} {s['final_hv']:>8.4f} {s['final_hv_full_budget']:>8.4f} "
              f"{fmt_s(s['time_to_reference_hv']):>11} {s['front_size']:>5g} {s['small_front_points']:>5g} "
              f"{s['partial_front_points']:>7g} {s['wall_s']:>7.0f} {s['trial_train_s']:>7.0f}")
    print("(HV full: the front of full-budget trials only, = final HV for dsearch; small: front points at or below "
          "the median params; partial: front points trained < max_epochs; train s: trials' training time, summed)")
    t = result["targets"]
    if t:
        print("\ntargets:")
    if "moasha_time_to_asha_hv" in t:
        x = t["moasha_time_to_asha_hv"]
        print(f"  moasha reaches asha's median final HV in ≤ {TIME_SHARE:.0%} of asha's wall time: "
              f"{fmt_s(x['value_s'])} s vs ≤ {x['limit_s']:.0f} s → {'MET' if x['met'] else 'NOT met'}")
    if "moasha_small_front_points" in t:
        x = t["moasha_small_front_points"]
        print(f"  moasha's front has ≥ {SMALL_RATIO:g}× asha's small-model points: {x['value']:g} vs "
              f"{x['asha']:g} (need ≥ {x['need']:g}) → {'MET' if x['met'] else 'NOT met'}")
    if "dsearch_partial_front_points" in t:
        x = t["dsearch_partial_front_points"]
        print(f"  0 partial-budget trials on any dsearch front: {x['value']} → {'MET' if x['met'] else 'NOT met'}")


def jsonable(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, np.generic):
        return jsonable(x.item())
    return x


# ------------------------------------------------------------------------------------------------------ main

def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=3, help="sampler seeds 0..N-1 (default 3)")
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated subset of {', '.join(METHODS)}")
    p.add_argument("--work-dir", type=Path, default=None, help="study folders (default bench/results/search_runs)")
    p.add_argument("--out", type=Path, default=None, help="JSON (default bench/results/search.json); .html beside it")
    p.add_argument("--analyse-only", action="store_true", help="run nothing; analyse the finished searches found")
    p.add_argument("--rerun", action="store_true", help="run every search again, even those already finished")
    p.add_argument("--smoke", action="store_true", help="a tiny version (400 images, 4 trials) to check the wiring")
    p.add_argument("--tune-child", nargs=2, metavar=("SPACE", "DIR"), help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.tune_child:
        tune_child(Path(a.tune_child[0]), Path(a.tune_child[1]))
        return
    methods = [m.strip() for m in a.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        p.error(f"--methods: unknown {unknown} (known: {', '.join(METHODS)})")
    suffix = "_smoke" if a.smoke else ""
    work = (a.work_dir or HERE / "results" / f"search{suffix}_runs").resolve()
    out = (a.out or HERE / "results" / f"search{suffix}.json").resolve()
    work.mkdir(parents=True, exist_ok=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    base = yaml.safe_load(BASE_SPACE.read_text())

    t0 = time.time()
    if not a.analyse_only:
        for seed in range(a.seeds):              # seeds outermost: background load falls on every method alike
            for m in methods:
                if is_done(work, m, seed) and not a.rerun:
                    print(f"{run_name(m, seed):<20} already done (reused)", flush=True)
                    continue
                meta = run_one(work, base, m, seed, a.smoke)
                status = "ok" if meta["rc"] == 0 else f"FAILED rc {meta['rc']} (see {meta['log']})"
                print(f"{run_name(m, seed):<20} {meta['wall_s']:6.0f} s  {status}", flush=True)
        print(f"searches: {time.time() - t0:.0f} s in all", flush=True)

    runs = []
    for seed in range(a.seeds):
        for m in methods:
            if is_done(work, m, seed):
                runs.append(load_run(work, m, seed))
            else:
                print(f"{run_name(m, seed)}: no finished search in {work}, left out")
    if not runs:
        raise SystemExit(f"no finished searches in {work}")
    print(f"\n{'run':<20} {'wall s':>6} {'trained':>7} {'full':>4}  trials by state")
    result = analyse(runs)
    for r in runs:
        print(f"{run_name(r['method'], r['seed']):<20} {r['wall_s']:>6.0f} {r['trained_trials']:>7} "
              f"{r['full_budget_trials']:>4}  {', '.join(f'{k} {v}' for k, v in sorted(r['counts'].items()))}; "
              f"final HV {r['final_hv']:.4f}, front {r['front_size']}, partial {r['partial_front_points']}")
    print_table(result)

    import optuna
    import ray
    import torch

    space = method_space(base, methods[0], 0, a.smoke)
    doc = {"space": {k: space[k] for k in ("data", "budget", "resources", "constraints", "params", "seed_trials")},
           "methods": {m: dict(zip(("runner", "scheduler", "sampler"), METHODS[m])) for m in methods},
           "seeds": a.seeds, "smoke": a.smoke, "work_dir": str(work), "cpus": os.cpu_count(),
           "versions": {"ray": ray.__version__, "optuna": optuna.__version__, "torch": torch.__version__},
           "written": datetime.now().isoformat(timespec="seconds"), **result,
           "runs": [{k: v for k, v in r.items() if k != "meta"} | {"log": r["meta"]["log"]} for r in runs]}
    out.write_text(json.dumps(jsonable(doc), indent=2) + "\n")
    html = out.with_suffix(".html")
    write_figure(runs, result, html, f"Hypervolume against time: {len(methods)} methods × {a.seeds} seeds"
                 f"{' (smoke)' if a.smoke else ''}, Fashion-MNIST")
    print(f"\n→ {out}\n→ {html}")


if __name__ == "__main__":
    main()
