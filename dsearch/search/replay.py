"""The replay executor: a discrete-event simulation of W workers that trains each sampled configuration by
reading its recorded run from a table (table.py), under a simulated clock.

It drives the same Engine as the Ray executor, in the order Tune does: a free worker asks for a trial;
each epoch's report goes to `decide` (the rung rule), then to `observe` if the trial goes on, or to
`complete` if it stops (a rung, or the full budget). A report carries what a Ray trial's report carries
(epoch, val_acc, params, MACs, epoch and train time). The clock jumps from one report to the next; events
at the same simulated time are taken in the order they were scheduled.
"""

from __future__ import annotations

import heapq
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..metrics import EPOCH, EPOCH_TIME, TRAIN_TIME_S, VAL_ACC
from .schema import KNOWN_BEFORE_TRAINING as COSTS
from . import record as st
from .engine import Engine
from .methods import Method
from .table import Table, config_key

if TYPE_CHECKING:
    from .schema import SearchSpace


@dataclass
class ReplayedTrial:
    """One trial of a replayed search: what was asked, how it ended, when (simulated seconds)."""

    number: int
    params: dict[str, Any]
    state: str                 # COMPLETE, PRUNED, FAIL (rejected before training: not trained, no end)
    epochs: int
    end: float | None
    values: tuple[float, ...] | None      # the objectives at its last report (space order)
    final_acc: float | None = None        # val_acc of its drawn run at the full budget (what it would have reached)
    reason: str | None = None             # FAIL reason


@dataclass
class ReplayRun:
    """A replayed search: its trials in number order, the driver's own time, the simulated end."""

    method: str
    seed: int
    trials: list[ReplayedTrial] = field(default_factory=list)
    driver_s: float = 0.0
    end: float = 0.0
    truncated: int = 0         # trials whose recorded curve ended before the rule stopped them


def replay(table: Table, space: "SearchSpace", method: Method, seed: int, workers: int,
           storage: Any = None, on_ask: Any = None) -> ReplayRun:
    """Replay one search of `space` by `method` with replay seed `seed` (sampler seed = space's + seed) on
    `workers` simulated workers. `storage`: where the replayed study lives (default: in memory).
    `on_ask(engine, seconds)`, if given, is called after each trial is asked with the driver's time so far
    (bench/driver.py reads the time per trial from it)."""
    import optuna

    from .record import new_study

    st._quiet_optuna()
    sampler_seed = None if space.sampler.seed is None else space.sampler.seed + seed
    study = new_study(space, storage or optuna.storages.InMemoryStorage(),
                      method.sampler(space, sampler_seed))
    now = [0.0]

    def admit(run_config: Any, params: dict) -> str | None:
        if table.lookup(params):
            return None
        return f"configuration {config_key(params)} is not in the table"

    t0 = time.perf_counter()
    engine = Engine(space, study, rule=method.rule(space), proposer=method.make_proposer(space, sampler_seed),
                    admit=admit, clock=lambda: now[0])
    out = ReplayRun(method.name, seed)
    occurrences: Counter = Counter()
    runs: dict[int, Any] = {}
    ends: dict[int, float] = {}
    events: list[tuple[float, int, int, int]] = []       # (time, order, trial number, epoch)
    order = 0
    free, asking = workers, True
    max_epochs = space.budget.max_epochs
    while True:
        while asking and free > 0:
            proposal = engine.ask()
            if not isinstance(proposal, dict):
                asking = False
                break
            number = proposal["trial"]
            if on_ask is not None:
                on_ask(engine, time.perf_counter() - t0)
            params = engine.params_of(number)
            key = config_key(params)
            run = table.draw(params, seed, occurrences[key])
            occurrences[key] += 1
            runs[number] = (run, proposal)
            free -= 1
            heapq.heappush(events, (now[0] + run.times[0], order, number, 1))
            order += 1
        if not events:
            break
        at, _, number, epoch = heapq.heappop(events)
        now[0] = at
        run, proposal = runs[number]
        result = {EPOCH: epoch, VAL_ACC: run.curve[epoch - 1], **{m: proposal[m] for m in COSTS if m in proposal},
                  EPOCH_TIME: run.times[epoch - 1], TRAIN_TIME_S: float(sum(run.times[:epoch]))}
        goes_on = engine.decide(number, result)
        if goes_on and epoch < min(max_epochs, len(run.curve)):
            engine.observe(number, result)
            heapq.heappush(events, (at + run.times[epoch], order, number, epoch + 1))
            order += 1
            continue
        out.truncated += goes_on and epoch < max_epochs
        engine.complete(number, result)
        ends[number] = at
        free += 1
    out.driver_s = time.perf_counter() - t0
    out.end = now[0]
    out.trials = _trials(study, space, runs, ends)
    return out


def _trials(study: Any, space: "SearchSpace", runs: dict, ends: dict[int, float]) -> list[ReplayedTrial]:
    full = space.budget.max_epochs
    trials = []
    for t in study.get_trials(deepcopy=False):
        a = t.user_attrs
        values = None
        if t.values is not None:
            values = tuple(t.values)
        elif st.EPOCHS_TRAINED in a and t.state.name == "PRUNED":
            values = tuple(a.get(f"last_{m}", float("nan")) for m in space.metrics)
        run = runs.get(t.number, (None,))[0]
        final = run.curve[full - 1] if run is not None and len(run.curve) >= full else None
        trials.append(ReplayedTrial(t.number, dict(t.params), t.state.name, int(a.get(st.EPOCHS_TRAINED, 0)),
                                    ends.get(t.number), values, final, a.get(st.FAIL_REASON)))
    return trials


_SHARED: dict[str, Any] = {}          # what forked replay workers read: the table and the space


def _one(job: tuple[str, int, int]) -> ReplayRun:
    from .methods import METHODS

    name, seed, workers = job
    return replay(_SHARED["table"], _SHARED["space"], METHODS[name], seed, workers)


def replay_many(table: Table, space: "SearchSpace", methods: list[str], seeds: int, workers: int,
                jobs: int = 1, progress: Any = None) -> dict[str, list[ReplayRun]]:
    """Every method × seeds 0..seeds-1, on `jobs` processes (forked: each gets the table once); `progress()`
    is called after each replayed search. Results per method, in seed order."""
    import multiprocessing as mp

    _SHARED.update(table=table, space=space)
    work = [(m, s, workers) for m in methods for s in range(seeds)]
    out: dict[str, list[ReplayRun]] = {m: [] for m in methods}
    done: dict[tuple[str, int], ReplayRun] = {}
    if jobs <= 1 or len(work) == 1:
        results = map(_one, work)
        pool = None
    else:
        pool = mp.get_context("fork").Pool(jobs)
        results = pool.imap(_one, work, chunksize=1)
    try:
        for job, run in zip(work, results):
            done[job[:2]] = run
            if progress is not None:
                progress()
    finally:
        if pool is not None:
            pool.terminate()
        _SHARED.clear()
    for m in methods:
        out[m] = [done[(m, s)] for s in range(seeds)]
    return out
