"""Ray Tune edge: start or join Ray, and run the trials a study still owes under ASHA until done or interrupted.

The trainable is in trainable.py (it runs on the workers), the searcher that asks and tells the
study in searcher.py (it runs here, in the driver).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from ..errors import UserError
from ..metrics import VAL_ACC
from . import artifacts
from .engine import Engine
from .searcher import Events, StudySearcher
from .storage import RetryingStorage
from .trainable import study_layout, train_trial

if TYPE_CHECKING:
    import optuna

    from .schema import SearchSpace

CONNECT_TIMEOUT_S = 10.0
PROBE_TIMEOUT_S = 120.0      # every node answers the storage probe within this (a first worker start included)


def code_runtime_env() -> dict:
    """The runtime_env that ships this dsearch package to every worker: nodes need its dependencies, not it."""
    package = Path(__file__).resolve().parents[1]
    return {"py_modules": [str(package)], "excludes": ["__pycache__", "*.pyc"]}


def start_ray(address: str | None, num_cpus: int | None = None) -> None:
    """Connect to a cluster (address) or start a local Ray sized to this machine."""
    import ray

    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")      # verbose=0 then means silent: our view reports
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    # A failed trial is reported by the live view and recorded with its traceback in the study folder.
    os.environ.setdefault("TUNE_PRINT_ALL_TRIAL_ERRORS", "0")
    logging.getLogger("ray.tune.tune").setLevel(logging.CRITICAL)    # "Trials did not complete: [...]"
    # Ctrl-C is ours (Interruption below): Tune's handler would make the first one end fit() normally.
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    if ray.is_initialized():
        return
    if address:
        check_reachable(address)
    kwargs = dict(include_dashboard=False, log_to_driver=False, logging_level="ERROR",
                  configure_logging=True)
    try:
        if address:
            ray.init(address=address, runtime_env=code_runtime_env(), **kwargs)
        else:
            # "local": always a fresh instance, never an unrelated `ray start` cluster found on the machine.
            # Sized by Ray itself unless told: it reads the container's cgroup CPU quota, os.cpu_count() doesn't.
            ray.init(address="local", **({"num_cpus": num_cpus} if num_cpus else {}), **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as e:
        where = f"--ray-address {address}" if address else "a local Ray"
        raise UserError(f"could not start {where}: {str(e).splitlines()[0]}") from None


def check_reachable(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """A HOST:PORT address must accept a TCP connection within timeout s (ray.init would retry for minutes)."""
    if "://" in address or address in ("auto", "local"):
        return      # ray:// client addresses and auto-discovery: ray.init reports those itself
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise UserError(f"--ray-address {address!r}: expected HOST:PORT of a Ray head (e.g. 10.0.0.5:6379), "
                        "ray://HOST:PORT, or auto")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except OSError as e:
        raise UserError(f"--ray-address {address}: nothing answers there ({e.strerror or e.__class__.__name__}"
                        f" within {timeout:g} s); start a head with `ray start --head --port {port}`, or check "
                        "the address") from None


def check_resources(cpu: float, gpu: float) -> None:
    """Fail at once if one trial needs more than the whole cluster has (Ray would wait forever)."""
    import ray

    have = ray.cluster_resources()
    if gpu > have.get("GPU", 0):
        raise UserError(f"each trial asks for {gpu:g} GPU but the Ray cluster has {have.get('GPU', 0):g}; "
                        "run with --gpus-per-trial 0 to train on CPU, or --ray-address a cluster with GPUs")
    if cpu > have.get("CPU", 0):
        raise UserError(f"each trial asks for {cpu:g} CPUs but the Ray cluster has {have.get('CPU', 0):g}; "
                        f"run with --cpus-per-trial {max(1, int(have.get('CPU', 1)))}")


def check_storage_visible(location: str, default: bool) -> None:
    """Refuse trial storage that a node of the cluster can't read: a marker written here must be readable there.

    One zero-CPU task per alive node. A driver-local folder on a multi-node cluster is the usual failure:
    trials on the other nodes would fail when they save their first checkpoint. `default`: the location
    was not given (--storage-path), and the message says so.
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    marker = artifacts.write_probe(location)
    try:
        probe = ray.remote(num_cpus=0, max_retries=0)(artifacts.probe)
        refs = {probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
                .remote(marker): n for n in nodes}
        ready, pending = ray.wait(list(refs), num_returns=len(refs), timeout=PROBE_TIMEOUT_S)
        answers = [(refs[r], ray.get(r)) for r in ready] + [
            (refs[r], f"no answer within {PROBE_TIMEOUT_S:g} s") for r in pending]
    finally:
        artifacts.remove(marker)
    blind = [(n, why) for n, why in answers if why is not None]
    if not blind:
        return
    node, why = blind[0]
    what = "the default trial storage" if default else "--storage-path"
    others = f" and {len(blind) - 1} other{'s' * (len(blind) > 2)}" if len(blind) > 1 else ""
    where = f"node {node['NodeManagerAddress']}{others} (of the cluster's {len(nodes)} nodes)"
    if artifacts.is_uri(location):
        raise UserError(f"{what} {artifacts.describe(location)}: {where} can't read it ({why}); give every node "
                        "the store's credentials and network access")
    raise UserError(f"{what} {artifacts.describe(location)} is on this machine's disk and {where} can't see it; "
                    "trials there could not save checkpoints. Pass --storage-path on storage every node sees: "
                    "s3://BUCKET/PATH, gs://BUCKET/PATH, or a folder mounted at the same path on every node")


class Interruption:
    """SIGINT / SIGTERM while installed: the first asks the run to stop (trials are stopped, not recorded),
    a second SIGINT stops at once (KeyboardInterrupt). `signum` is the first signal, or None."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def __call__(self) -> bool:
        return self.signum is not None

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = self.signum or signum

    def __enter__(self) -> "Interruption":
        for sig in self.SIGNALS:
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def run_search(space: "SearchSpace", study: "optuna.Study", study_dir: Path, data: Any, view: Any,
               interruption: Callable[[], bool], storage: artifacts.TrialStorage,
               max_concurrent: int | None = None, tracker: Any = None) -> Engine:
    """Run the trials the study still owes (num_samples minus counted) on Ray Tune, until done or interrupted.

    `tracker` hears what the study is told (tracking.py). Ray keeps trial folders and checkpoints in `storage` (TrialStorage.of_study: the study folder's ray/). Returns the
    engine, which counts the trials this run trained and those that failed. Raises DatabaseUnreachable once the
    study's database stopped answering (its trials left RUNNING, resumable); `interruption()` (Ctrl-C, a lost
    lease) also ends a wait for it.
    """
    from ray import tune

    r = space.resources
    threads = max(1, int(r.cpu))
    engine = Engine(space, study, study_dir, threads, interrupted=interruption, storage=storage, tracker=tracker)
    searcher = StudySearcher(engine)
    ends = lambda: interruption() or engine.unreachable is not None     # noqa: E731
    b = space.budget
    layout = study_layout(space, study, data)      # CPU trials' memory layout, decided once per study
    engine.cpu_channels_last = bool(layout and layout["channels_last"])     # what their memory is priced in
    trainable = tune.with_resources(tune.with_parameters(train_trial, data=data, layout=layout),
                                    {"cpu": r.cpu, "gpu": r.gpu})
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(search_alg=searcher, scheduler=rung_scheduler(engine), metric=VAL_ACC,
                                    mode="max", num_samples=-1, trial_dirname_creator=trial_dirname,
                                    max_concurrent_trials=max_concurrent or b.max_concurrent_trials,
                                    # A trial's worker process takes ~5 s to start (Ray, torch, dsearch): a
                                    # finished trial's worker trains the next one (fit() sets every seed and
                                    # thread count itself, so a trial doesn't depend on what ran there before).
                                    reuse_actors=True),
        run_config=tune.RunConfig(
            name=f"run-{time.strftime('%Y%m%d-%H%M%S')}", **storage.ray_storage(),
            verbose=0, callbacks=[Events(searcher, view)], stop=_stopper(ends),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            failure_config=tune.FailureConfig(max_failures=0)),
    )
    waits = study._storage if isinstance(study._storage, RetryingStorage) else None
    if waits is not None:
        waits.give_up = interruption
    try:
        tuner.fit()
    finally:
        searcher.flush_errors()           # nothing once the database is unreachable: the engine writes no more
        if waits is not None:
            waits.give_up = None
    if engine.unreachable is not None:
        raise engine.unreachable
    if engine.infeasible:
        raise UserError(engine.infeasible)
    return engine


def rung_scheduler(engine: Engine) -> Any:
    """A Ray Tune scheduler that stops trials (never pauses them) by the engine's rung decisions."""
    from ray.tune.schedulers import FIFOScheduler, TrialScheduler

    class RungScheduler(FIFOScheduler):
        def set_search_properties(self, metric, mode, **spec) -> bool:
            return True

        def on_trial_result(self, tune_controller, trial, result: dict) -> str:
            goes_on = engine.decide(trial.config["trial"], result)
            return TrialScheduler.CONTINUE if goes_on else TrialScheduler.STOP

        def debug_string(self) -> str:
            return f"RungScheduler: {engine.space.milestones}"

        # Tune pickles its scheduler into the experiment folder, as it does the searcher (whose state is the
        # study): the engine holds the study and what stops the run (a signal handler, the lease's thread).
        def __reduce__(self):
            return (FIFOScheduler, ())

    return RungScheduler()


def trial_dirname(trial: Any) -> str:
    """trial-<study trial number>-<Ray trial id>: short, and names the study's trial (Ray's default lists the config)."""
    return f"trial-{trial.config.get('trial')}-{trial.trial_id}"


def _stopper(interruption: Callable[[], bool]) -> Any:
    """A Tune Stopper that ends the run once `interruption()` is true (a signal, a lost lease, the database gone)."""
    from ray.tune.stopper import Stopper

    class StopOnSignal(Stopper):
        def __call__(self, trial_id: str, result: dict) -> bool:
            return False

        def stop_all(self) -> bool:
            return interruption()

        def __reduce__(self):   # Tune pickles its stoppers; a copy elsewhere never stops anything
            return (Stopper.__new__, (Stopper,))

    return StopOnSignal()
