"""The CLI's error contract, one bad input per row, across every command.

Bad input of any kind is exit status 2 and exactly one line on stderr, `dsearch: error: ...`, without a
traceback, and a study on disk is left byte for byte as it was. Each row runs `python -m dsearch.cli` in a
real process (so whatever a library writes to stderr counts too), with HOME and the working directory in a
scratch folder (no dataset found by accident in ~/.cache/dsearch or ./data). An unexpected exception is
exit status 1, one line naming a log file that holds the traceback (`--verbose`: the traceback itself).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import pickle
import shutil
import signal
import struct
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from optuna.distributions import IntDistribution
from optuna.trial import TrialState, create_trial

from dsearch.cli import main
from dsearch.net.model import build_model
from dsearch.training.config import RunConfig
from studies import new_study

SPACE = """\
name: tiny
data: {name: synthetic, augment: true, val_size: 40, synthetic_size: 120, synthetic_image_size: 8}
budget: {max_epochs: 1, num_samples: 1, grace_period: 1, reduction_factor: 2, max_concurrent_trials: 1}
resources: {cpu: 1, gpu: 0}
sampler: {type: random, seed: 0}
fixed: {model.variant: densenet-bc, model.depth: 10, train.batch_size: 32}
params:
  model.growth_rate: {type: int, low: 2, high: 4}
"""

# The smallest DenseNet-BC on 8×8 synthetic images, as the study's trials and the resumable run use.
RUN = RunConfig(model=dict(variant="densenet-bc", depth=10, growth_rate=4),
                data=dict(name="synthetic", synthetic_image_size=8))
TRAIN_TINY = ["--dataset", "synthetic", "--set", "variant=densenet-bc", "--set", "depth=10", "--set",
              "growth_rate=4", "--set", "data.synthetic_size=64", "--set", "data.val_size=16",
              "--set", "data.synthetic_image_size=8", "--set", "train.batch_size=32", "--epochs", "2"]


# --- the scratch workspace: studies, dataset files, checkpoints, spaces ---------------------------------------

def write_idx(path: Path, arr: np.ndarray) -> None:
    """An unsigned-byte IDX file (MNIST's format), gzipped if the name ends in .gz."""
    data = struct.pack(">HBB", 0, 8, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()
    with (gzip.open if path.suffix == ".gz" else open)(path, "wb") as f:
        f.write(data)


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])


def make_study(study_dir: Path, checkpoints: dict[int, str]) -> None:
    """A hand-made study as `dsearch run` leaves it: study.db (3 COMPLETE trials, checkpoints as given), space.yaml."""
    study_dir.mkdir(parents=True)
    study = new_study("tiny", f"sqlite:///{study_dir / 'study.db'}")
    for number, (acc, params) in enumerate([(0.5, 2666), (0.6, 4000), (0.4, 1500)]):
        attrs = {"epochs_trained": 1, "max_epochs": 1, "curve": [acc],
                 "config": json.dumps(RUN.model_dump(mode="json"))}
        if number in checkpoints:
            attrs["checkpoint"] = checkpoints[number]
        study.add_trial(create_trial(
            state=TrialState.COMPLETE, values=[acc, params, 1e5], params={"model.growth_rate": 4},
            distributions={"model.growth_rate": IntDistribution(2, 4)}, user_attrs=attrs))
    (study_dir / "space.yaml").write_text(SPACE)


@dataclass
class Workspace:
    root: Path
    study: Path          # trials 0 (good checkpoint), 1 (garbage checkpoint), 2 (truncated checkpoint)
    file: Path           # a regular file, to put paths below it
    run_out: Path        # a `dsearch train` run of 2 epochs (checkpoint.pt, ...)
    space: Path          # a valid space (SPACE)

    def path(self, name: str) -> Path:
        return self.root / name


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Workspace:
    root = tmp_path_factory.mktemp("errors")
    rng = np.random.default_rng(0)

    # Fashion-MNIST as gz IDX, the images cut in half; MNIST as raw IDX, the images short of their dims.
    for name, suffix in (("fmnist", ".gz"), ("mnist", "")):
        folder = root / name
        folder.mkdir()
        write_idx(folder / f"train-images-idx3-ubyte{suffix}", rng.integers(0, 256, (100, 28, 28), np.uint8))
        write_idx(folder / f"train-labels-idx1-ubyte{suffix}", (np.arange(100) % 10).astype(np.uint8))
        truncate(folder / f"train-images-idx3-ubyte{suffix}", 0.5 if suffix else 0.9)
    # CIFAR-10 python batches (pickles of {"data", "labels"}), batch 3 cut in half.
    (root / "cifar10").mkdir()
    for i in range(1, 6):
        batch = {"data": rng.integers(0, 256, (20, 3072), np.uint8), "labels": list(range(10)) * 2}
        (root / "cifar10" / f"data_batch_{i}").write_bytes(pickle.dumps(batch))
    truncate(root / "cifar10" / "data_batch_3")
    # SVHN .mat files (format 2: X is 32×32×3×N), train cut in half.
    from scipy.io import savemat

    (root / "svhn").mkdir()
    for name in ("train_32x32.mat", "extra_32x32.mat"):
        savemat(root / "svhn" / name, {"X": rng.integers(0, 256, (32, 32, 3, 50), np.uint8),
                                       "y": (np.arange(50) % 10 + 1).reshape(-1, 1)})
    truncate(root / "svhn" / "train_32x32.mat")
    (root / "empty").mkdir()

    # A study whose trials' checkpoints are good, garbage and truncated.
    study = root / "study"
    (root / "ckpt").mkdir()
    torch.manual_seed(0)
    buffer = {"model": build_model(RUN.model).state_dict(), "epoch": 1, "history": []}
    torch.save(buffer, root / "ckpt" / "good.pt")
    (root / "ckpt" / "garbage.pt").write_bytes(b"this is not a checkpoint\n" * 40)
    shutil.copy(root / "ckpt" / "good.pt", root / "ckpt" / "truncated.pt")
    truncate(root / "ckpt" / "truncated.pt")
    make_study(study, {0: str(root / "ckpt" / "good.pt"), 1: str(root / "ckpt" / "garbage.pt"),
                       2: str(root / "ckpt" / "truncated.pt")})

    # A finished 2-epoch `dsearch train` run to resume, and garbage / truncated copies of its folder.
    run_out = root / "run"
    assert main(["train", *TRAIN_TINY, "--out", str(run_out)]) == 0
    for name, damage in (("run-garbage", lambda p: p.write_bytes(b"\x80\x02garbage")),
                         ("run-truncated", truncate)):
        shutil.copytree(run_out, root / name)
        damage(root / name / "checkpoint.pt")

    # Spaces: valid, and a few broken ones (each named by what is wrong).
    space = root / "space.yaml"
    space.write_text(SPACE)
    broken = {
        "syntax": "name: x\ndata: {name: synthetic\n",
        "misspelt": SPACE.replace("budget:", "budgett:"),
        "empty-range": SPACE.replace("low: 2, high: 4", "low: 8, high: 4"),
        "depth": SPACE.replace("model.depth: 10", "model.depth: 11"),
        "type": SPACE.replace("type: int", "type: integer"),
        "duplicate": SPACE + "resources: {cpu: 2}\n",
        "destination": SPACE.replace("  model.growth_rate:", "  model.growth_rat:"),
        "max-epochs": SPACE.replace("max_epochs: 1", "max_epochs: 0"),
        "other-space": SPACE.replace("high: 4", "high: 5"),
        "missing-data": SPACE.replace("{name: synthetic,", f"{{name: cifar100, root: {root / 'empty'},"),
    }
    for name, text in broken.items():
        (root / f"{name}.yaml").write_text(text)
    file = root / "a-file"
    file.write_text("a regular file\n")
    (root / "home").mkdir()
    return Workspace(root=root, study=study, file=file, run_out=run_out, space=space)


def snapshot(folder: Path) -> dict[str, str]:
    """sha256 of every file below folder, by relative path."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def dsearch(ws: Workspace, *args, timeout: float = 60) -> tuple[subprocess.CompletedProcess, float]:
    """`python -m dsearch.cli ARGS` in its own process group (killed whole on timeout, returncode None)."""
    env = {k: v for k, v in os.environ.items() if k != "DSEARCH_DATA"}
    env["HOME"] = str(ws.path("home"))
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "dsearch.cli", *map(str, args)], cwd=ws.root, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
        code = proc.returncode
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        code = None
    return subprocess.CompletedProcess(proc.args, code, out, err), time.monotonic() - t0


def in_process(ws: Workspace, *args) -> tuple[subprocess.CompletedProcess, float]:
    """`main(ARGS)` in this process, as `dsearch()` runs it: HOME and the working directory in the scratch folder,
    no DSEARCH_DATA; stdout and stderr captured both as Python writes them and at file descriptor 2."""
    import contextlib
    import io
    import tempfile

    out, err, env, cwd = io.StringIO(), io.StringIO(), dict(os.environ), os.getcwd()
    os.environ.pop("DSEARCH_DATA", None)
    os.environ["HOME"] = str(ws.path("home"))
    os.chdir(ws.root)
    t0 = time.monotonic()
    with tempfile.TemporaryFile() as fd2:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(fd2.fileno(), 2)
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                code = main([str(a) for a in args])
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            os.chdir(cwd)
            os.environ.clear()
            os.environ.update(env)
        fd2.seek(0)
        native = fd2.read().decode(errors="replace")
    return subprocess.CompletedProcess(["dsearch", *map(str, args)], code, out.getvalue(), err.getvalue() + native), \
        time.monotonic() - t0


def assert_one_line_error(proc: subprocess.CompletedProcess, *texts: str) -> None:
    err = proc.stderr
    assert proc.returncode is not None, f"still running after the timeout; stderr: {err[-2000:]}"
    assert "Traceback" not in err, err
    assert err.startswith("dsearch: error: ") and err.count("\n") == 1 and err.endswith("\n"), err
    assert proc.returncode == 2, (proc.returncode, err)
    for text in texts:
        assert text in err, err


# --- the table ----------------------------------------------------------------------------------------------
# id → (argv with `{name}` for ws.path(name), texts the line must hold, the folder it must leave unchanged).

S = "{study}"      # the hand-made study (a protected folder: each case runs on its own copy)
CASES = {
    # dsearch model
    "model-unknown-preset": (["model", "densenet12"], ["unknown preset 'densenet12'", "did you mean"], None),
    "model-impossible-depth": (["model", "--set", "variant=densenet-bc", "--set", "depth=41", "--set",
                                "growth_rate=12"], ["model.depth: L=41 doesn't fit", "nearest valid depths: 40, 46"],
                               None),
    "model-set-yaml-syntax": (["model", "densenet121", "--set", "growth_rate=[12"], ["not valid YAML"], None),
    "model-set-unknown-field": (["model", "--set", "growht_rate=12"], ["did you mean growth_rate?"], None),
    "model-set-no-value": (["model", "--set", "depth"], ["expected key=value"], None),
    "model-bad-input-size": (["model", "densenet121", "--input", "3x0x32"], ["--input '3x0x32'"], None),
    "model-no-preset-nor-set": (["model"], ["give a PRESET or --set options"], None),
    "unknown-option": (["model", "--bogus"], ["No such option: --bogus"], None),
    "unknown-command": (["trian"], ["No such command 'trian'"], None),
    # dsearch train: data
    "train-missing-dataset": (["train", "densenet_bc100_k12", "--dataset", "cifar10", "--data-dir", "{empty}"],
                              ["cifar10 data not found", "--download"], None),
    "train-truncated-idx-gz": (["train", "densenet_bc100_k12", "--dataset", "fashion_mnist", "--data-dir",
                                "{fmnist}"], ["train-images-idx3-ubyte.gz: truncated or corrupt"], None),
    "train-truncated-idx-raw": (["train", "densenet_bc100_k12", "--dataset", "mnist", "--data-dir", "{mnist}"],
                                ["train-images-idx3-ubyte: truncated IDX file"], None),
    "train-truncated-cifar-pickle": (["train", "densenet_bc100_k12", "--dataset", "cifar10", "--data-dir",
                                      "{cifar10}"], ["data_batch_3: truncated or corrupt CIFAR batch"], None),
    "train-truncated-svhn-mat": (["train", "densenet_bc100_k12", "--dataset", "svhn", "--data-dir", "{svhn}"],
                                 ["train_32x32.mat: truncated or corrupt SVHN"], None),
    # dsearch train: settings
    "train-amp-banana": (["train", "densenet_bc100_k12", "--dataset", "synthetic", "--set", "train.amp=banana"],
                         ["train.amp: Input should be 'auto', 'off', 'bf16' or 'fp16' (got 'banana')"], None),
    "train-unknown-dataset": (["train", "densenet_bc100_k12", "--dataset", "synthetc"],
                              ["--dataset 'synthetc': unknown dataset", "did you mean synthetic?"], None),
    "train-unknown-train-key": (["train", "densenet_bc100_k12", "--dataset", "synthetic", "--set", "train.lrr=1"],
                                ["train.lrr: unknown key", "did you mean lr?"], None),
    "train-zero-epochs": (["train", "densenet_bc100_k12", "--dataset", "synthetic", "--epochs", "0"],
                          ["train.epochs: must be ≥ 1, got 0"], None),
    "train-milestones-decreasing": (["train", "densenet_bc100_k12", "--dataset", "synthetic", "--set",
                                     "train.lr_milestones=[0.8, 0.2]"], ["train.lr_milestones: increasing"], None),
    "train-impossible-depth": (["train", "--dataset", "synthetic", "--set", "variant=densenet-bc", "--set",
                                "depth=41"], ["model.depth: L=41 doesn't fit"], None),
    "train-epochs-not-a-number": (["train", "densenet_bc100_k12", "--epochs", "many"],
                                  ["Invalid value for '--epochs'"], None),
    # dsearch train: output folder and --resume
    "train-out-below-a-file": (["train", *TRAIN_TINY, "--out", "{a-file}/sub"], ["is below", "which is a file"],
                               None),
    "train-out-holds-a-run": (["train", *TRAIN_TINY, "--out", "{run}"], ["pass --resume"], "{run}"),
    "train-resume-no-checkpoint": (["train", *TRAIN_TINY, "--out", "{empty}", "--resume"],
                                   ["--resume: no checkpoint.pt in"], "{empty}"),
    "train-resume-garbage-checkpoint": (["train", *TRAIN_TINY, "--out", "{run-garbage}", "--resume"],
                                        ["checkpoint.pt: can't read it"], "{run-garbage}"),
    "train-resume-truncated-checkpoint": (["train", *TRAIN_TINY, "--out", "{run-truncated}", "--resume"],
                                          ["checkpoint.pt: can't read it"], "{run-truncated}"),
    "train-resume-other-lr": (["train", *TRAIN_TINY, "--out", "{run}", "--resume", "--set", "train.lr=0.05"],
                              ["was written by a different run: train.lr 0.1 → 0.05", "a new --out"], "{run}"),
    "train-resume-other-model": (["train", *TRAIN_TINY, "--out", "{run}", "--resume", "--set", "growth_rate=6"],
                                 ["different run: model.growth_rate 4 → 6"], "{run}"),
    "train-resume-fewer-epochs": (["train", *TRAIN_TINY, "--out", "{run}", "--resume", "--epochs", "1"],
                                  ["already holds 2 epochs"], "{run}"),
    "train-resume-longer-changes-lr": (["train", *TRAIN_TINY, "--out", "{run}", "--resume", "--epochs", "8"],
                                       ["train.epochs 2 → 8 changes the lr of epoch 2"], "{run}"),
    # dsearch run: the space file
    "run-no-such-space": (["run", "nope.yaml"], ["nope.yaml: no such file"], None),
    "run-yaml-syntax": (["run", "{syntax.yaml}"], ["syntax.yaml:3: YAML:"], None),
    "run-misspelt-key": (["run", "{misspelt.yaml}"], ["budgett: unknown key (allowed: ", "did you mean budget?"],
                         None),
    "run-empty-range": (["run", "{empty-range.yaml}"], ["params.model.growth_rate.low: empty range"], None),
    "run-impossible-depth": (["run", "{depth.yaml}"], ["model.depth: L=11 doesn't fit"], None),
    "run-unknown-param-type": (["run", "{type.yaml}"], ["'integer' is not int, float or categorical"], None),
    "run-duplicate-key": (["run", "{duplicate.yaml}"], ["duplicate key 'resources'"], None),
    "run-unknown-destination": (["run", "{destination.yaml}"], ["did you mean model.growth_rate?"], None),
    "run-zero-max-epochs": (["run", "{max-epochs.yaml}"], ["budget.max_epochs"], None),
    "run-missing-data": (["run", "{missing-data.yaml}", "--study-dir", "{new-study-missing-data}"],
                         ["cifar100 data not found"], None),
    "run-other-space-on-a-study": (["run", "{other-space.yaml}", "--study-dir", S],
                                   ["was started with a different space", "high: 4 → 5"], S),
    "run-study-dir-below-a-file": (["run", "{space.yaml}", "--study-dir", "{a-file}/sub"], ["a-file"], None),
    # dsearch run: flags that reach Ray (fixes in cli/run.py, search/runner.py, search/record.py)
    "run-negative-cpus": (["run", "{space.yaml}", "--study-dir", "{new-study-cpus}", "--cpus-per-trial", "-3"],
                          ["--cpus-per-trial"], None),
    "run-negative-gpus": (["run", "{space.yaml}", "--study-dir", "{new-study-gpus}", "--gpus-per-trial", "-1"],
                          ["--gpus-per-trial"], None),
    "run-bad-storage-url": (["run", "{space.yaml}", "--study-dir", "{new-study-storage}", "--storage", "foo://x"],
                            ["--storage foo://x"], None),
    "run-bad-storage-path-uri": (["run", "{space.yaml}", "--study-dir", "{new-study-sp}", "--storage-path",
                                  "nope://b/p"], ["nope://b/p/tiny: not a storage URI pyarrow can open"], None),
    "run-storage-path-below-a-file": (["run", "{space.yaml}", "--study-dir", "{new-study-sp2}", "--storage-path",
                                       "{a-file}/trials"], ["--storage-path", "a-file/trials/tiny: can't write"], None),
    "run-unreachable-ray": (["run", "{space.yaml}", "--study-dir", "{new-study-ray}", "--ray-address",
                             "127.0.0.1:1"], ["--ray-address 127.0.0.1:1: nothing answers there"], None),
    # dsearch pareto
    "pareto-unknown-objective": (["pareto", S, "--objectives", "val_acc,flops"], ["unknown objective 'flops'"], S),
    "pareto-objective-twice": (["pareto", S, "--objectives", "val_acc,val_acc"], ["named twice"], S),
    "pareto-bad-reference": (["pareto", S, "--reference", "1,2"], ["--reference '1,2': give 3 finite numbers"], S),
    "pareto-no-study": (["pareto", "{nope}"], ["does not exist"], None),
    "pareto-no-study-db": (["pareto", "{empty}"], ["no study at"], "{empty}"),
    "pareto-csv-below-a-file": (["pareto", S, "--csv", "{a-file}/front.csv"], ["--csv", "can't write"], S),
    "pareto-bad-storage-url": (["pareto", S, "--storage", "foo://x"], ["foo://x"], S),
    # dsearch dashboard
    "dashboard-no-study": (["dashboard", "{nope}"], ["does not exist"], None),
    "dashboard-port-not-a-number": (["dashboard", S, "--port", "http"], ["Invalid value for '--port'"], S),
    # dsearch export
    "export-unknown-trial": (["export", S, "--trial", "7", "--out", "{export-7}"],
                             ["--trial 7: no such trial in study 'tiny' (trials 0..2)"], S),
    "export-garbage-checkpoint": (["export", S, "--trial", "1", "--out", "{export-1}"],
                                  ["garbage.pt: can't read it"], S),
    "export-truncated-checkpoint": (["export", S, "--trial", "2", "--out", "{export-2}"],
                                    ["truncated.pt: can't read it"], S),
    "export-out-below-a-file": (["export", S, "--trial", "0", "--out", "{a-file}/sub"], ["--out", "can't write"], S),
    "export-missing-trial-option": (["export", S, "--out", "{export-x}"], ["Missing option '--trial'"], S),
}


# Cases run as real processes (whatever a library writes to stderr at start-up counts too; each costs ~3 s of
# imports): one per path that loads a heavy library. The others run in-process through main().
PROCESS_CASES = ("train-truncated-idx-gz", "run-other-space-on-a-study", "run-unreachable-ray",
                 "export-garbage-checkpoint")


def resolve(arg: str, folders: dict[str, Path]) -> str:
    """`{name}` → its folder: the case's own copy of a protected one, else ws.path(name)."""
    while "{" in arg:
        start, end = arg.index("{"), arg.index("}")
        arg = arg[:start] + str(folders[arg[start + 1:end]]) + arg[end + 1:]
    return arg


@dataclass
class Outcome:
    proc: subprocess.CompletedProcess
    seconds: float
    before: dict[str, str]          # the protected folder's files before the command, and after
    after: dict[str, str]
    created: list[str]              # --study-dir {new-study-*} folders that exist afterwards


@pytest.fixture(scope="module")
def table(ws) -> dict[str, Outcome]:
    """Every case run once, three processes at a time; a case that protects a folder gets its own copy of it."""
    from collections import defaultdict
    from concurrent.futures import ThreadPoolExecutor

    class Folders(defaultdict):
        def __missing__(self, name):
            return ws.path(name)

    def one(case: str) -> Outcome:
        argv, _, protected = CASES[case]
        folders = Folders()
        if protected:
            name = protected.strip("{}")
            folders[name] = Path(shutil.copytree(ws.path(name), ws.path("cases") / case / name))
        before = snapshot(folders[protected.strip("{}")]) if protected else {}
        run = dsearch if case in PROCESS_CASES else in_process
        proc, seconds = run(ws, *[resolve(a, folders) for a in argv])
        after = snapshot(folders[protected.strip("{}")]) if protected else {}
        created = [a for a in argv if a.startswith("{new-study") and Path(resolve(a, folders)).exists()]
        return Outcome(proc, seconds, before, after, created)

    with ThreadPoolExecutor(max_workers=len(PROCESS_CASES)) as pool:
        processes = pool.map(one, PROCESS_CASES)     # meanwhile the rest, one at a time in this process
        outcomes = {case: one(case) for case in CASES if case not in PROCESS_CASES}
        outcomes.update(zip(PROCESS_CASES, processes))
    return outcomes


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_exit_2_and_touches_no_study(table, case):
    outcome = table[case]
    assert_one_line_error(outcome.proc, *CASES[case][1])
    assert outcome.after == outcome.before, "the protected folder's files changed"
    assert not outcome.created, f"{outcome.created} created"
    if case == "run-unreachable-ray":
        # The message above is the TCP check's, made before ray.init, which would retry for minutes: a hang guard.
        assert outcome.seconds < 120, f"took {outcome.seconds:.0f} s to give up on 127.0.0.1:1"


def test_the_table_covers_every_command():
    assert len(CASES) >= 30 and set(PROCESS_CASES) <= set(CASES)
    assert {argv[0] for argv, _, _ in CASES.values()} >= {"model", "train", "run", "pareto", "dashboard", "export"}


# --- a study folder nobody may write: pareto and run refuse it in one line ------------------------------------

@pytest.fixture
def read_only_study(ws, tmp_path):
    """A copy of the study whose folder can't be written to, even by root: `chattr +i` (immutable) where the
    file system has it; else chmod 0555, which only stops a user who isn't root."""
    folder = Path(shutil.copytree(ws.study, tmp_path / "ro"))
    immutable = shutil.which("chattr") and subprocess.run(["chattr", "+i", str(folder)],
                                                          capture_output=True).returncode == 0
    if not immutable:
        folder.chmod(0o555)
    try:
        try:
            (folder / "probe").write_text("")
        except OSError:
            pass
        else:
            pytest.skip("no way to make a folder read-only here (root without chattr)")
        yield folder
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(folder)], check=True)
        folder.chmod(0o755)


@pytest.mark.parametrize("command", ["pareto", "run"])
def test_a_study_folder_without_write_permission_is_one_line(ws, read_only_study, command):
    before = snapshot(read_only_study)
    argv = (["pareto", read_only_study] if command == "pareto"
            else ["run", ws.space, "--study-dir", read_only_study])
    proc, _ = in_process(ws, *argv)
    assert_one_line_error(proc, str(read_only_study))
    assert snapshot(read_only_study) == before


# --- what is not an error -------------------------------------------------------------------------------------

def test_set_values_are_yaml_1_2_so_off_is_a_string(ws, capsys):
    out = ws.path("amp-off")
    assert main(["train", *TRAIN_TINY, "--epochs", "1", "--set", "train.amp=off", "--out", str(out)]) == 0
    assert json.loads((out / "summary.json").read_text())["config"]["train"]["amp"] == "off"
    from dsearch.cli.app import parse_sets

    assert parse_sets(["a=off", "b=yes", "c=1e-4", "d=010", "e=true", "f=[1, 2]", "g=2024-01-01"]) == \
        {"a": "off", "b": "yes", "c": 1e-4, "d": 10, "e": True, "f": [1, 2], "g": "2024-01-01"}


def test_resume_may_change_where_it_runs_and_extend_a_constant_lr_run(ws, tmp_path, capsys):
    out = tmp_path / "run"
    base = ["train", *TRAIN_TINY, "--set", "train.lr_milestones=[]", "--out", str(out)]
    assert main(base) == 0
    assert main(base + ["--resume", "--epochs", "3", "--set", "train.num_threads=1", "--set",
                        "train.device=cpu"]) == 0
    assert len(torch.load(out / "checkpoint.pt", weights_only=True)["history"]) == 3


# --- not the user's fault: exit 1, one line, the traceback in a log file --------------------------------------

def _boom(*args, **kwargs):
    raise RuntimeError("boom: something inside went wrong\nsecond line of the message")


def test_an_unexpected_exception_is_one_line_exit_1_with_the_traceback_in_a_log(monkeypatch, capsys):
    import dsearch.cli.model as model_cli

    monkeypatch.setattr(model_cli, "describe_command", _boom)
    assert main(["model", "densenet121"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith("dsearch: error: RuntimeError: boom: something inside went wrong (a bug or an "
                          "unexpected failure; the traceback is in "), err
    log = Path(err.rsplit("the traceback is in ", 1)[1].rstrip(")\n"))
    try:
        text = log.read_text()
        assert "Traceback (most recent call last)" in text and "_boom" in text and "second line" in text
    finally:
        log.unlink()


def test_verbose_prints_the_traceback_instead(monkeypatch, capsys):
    import dsearch.cli.model as model_cli

    monkeypatch.setattr(model_cli, "describe_command", _boom)
    assert main(["--verbose", "model", "densenet121"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("Traceback (most recent call last)") and "in _boom" in err
    assert err.splitlines()[-1] == ("dsearch: error: RuntimeError: boom: something inside went wrong (a bug or "
                                    "an unexpected failure; the traceback is above)")


def test_eof_error_is_not_an_interrupt_and_ctrl_c_is(monkeypatch, capsys):
    import dsearch.cli.model as model_cli

    def eof(*args, **kwargs):
        raise EOFError("Compressed file ended before the end-of-stream marker was reached")

    monkeypatch.setattr(model_cli, "describe_command", eof)
    assert main(["model", "densenet121"]) == 1              # click would make it Abort, exit 130
    err = capsys.readouterr().err
    assert err.startswith("dsearch: error: EOFError: Compressed file ended") and err.count("\n") == 1, err
    Path(err.rsplit("the traceback is in ", 1)[1].rstrip(")\n")).unlink()

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(model_cli, "describe_command", interrupt)
    assert main(["model", "densenet121"]) == 130
    assert capsys.readouterr().err == "dsearch: error: interrupted\n"
