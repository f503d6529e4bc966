"""`--storage postgresql://...` against a real, throwaway PostgreSQL server (conftest.postgres_server).

A shared database holds many studies: `dsearch run` creates or continues the one named in its space whatever
else is there, `pareto` / `export` / `dashboard` take `--storage URL --study NAME` and need no local study
folder (the space comes from the copy stored in the study), and a missing name among several lists them. The
errors of a bad URL or a missing driver are one line, and need no server. The kill-and-resume test runs on
PostgreSQL too: tests/test_search.py::test_killed_driver_resumes_with_interrupted_trials_requeued[postgresql].

The server goes down for 20 s in the middle of that search (issue 21: a database hiccup must not end a search),
and restarts under an idle connection. A database that stays down is tested in-process (tests/test_recovery.py).
"""

import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
from optuna.trial import TrialState

import dsearch
from dsearch.cli import main
from dsearch.search import record as st
from dsearch.search.io import parse_space
from spaces import tiny_space

optuna.logging.set_verbosity(optuna.logging.WARNING)

# As tests/test_search.py's tiny space, smaller still (2 epochs), with a hypervolume reference of its own so
# that `dsearch pareto` shows whether it read the space stored in the study.
TINY = tiny_space(name="NAME", epochs="EPOCHS", grace="GRACE", conc=1, growth_high=8, extra="""\
objectives:
  - {metric: val_acc, direction: maximize, reference: 0.01}
  - {metric: params, direction: minimize, reference: 50000}
  - {metric: macs, direction: minimize, reference: 5.0e7}
""")


def write_space(where: Path, name: str, num: int, epochs: int = 2, grace: int = 1) -> Path:
    path = where / f"{name}.yaml"
    path.write_text(TINY.replace("NAME", name).replace("NUM", str(num)).replace("EPOCHS", str(epochs))
                    .replace("GRACE", str(grace)))
    return path


def dsearch_cli(*args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dsearch.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=kw.pop("timeout", 300), **kw)


def add_other_study(url: str, name: str = "other") -> None:
    """Somebody else's study in the same database."""
    optuna.create_study(study_name=name, storage=url, directions=["maximize"])


def one_line_error(code: int, err: str, *texts: str) -> None:
    assert code == 2, err
    assert err.startswith("dsearch: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    for text in texts:
        assert text in err, err


# --- a search in a shared database --------------------------------------------------------------------------

OUTAGE_S = 20.0


def first_epoch_recorded(url: str, proc: subprocess.Popen, timeout: float = 180) -> None:
    """Wait until a trial of the study in `url` has a recorded epoch (or the run ended: fail)."""
    import psycopg

    end = time.monotonic() + timeout
    while time.monotonic() < end and proc.poll() is None:
        try:
            with psycopg.connect(url, connect_timeout=5) as conn:
                if conn.execute("SELECT 1 FROM trial_user_attributes WHERE key = 'curve' LIMIT 1").fetchone():
                    return
        except psycopg.Error:
            pass                # the study's tables are not there yet
        time.sleep(0.1)
    pytest.fail(f"no epoch recorded (the run exited {proc.poll()}): {proc.stderr.read() if proc.stderr else ''}")


@pytest.fixture(scope="module")
def searched(postgres_server, tmp_path_factory):
    """`dsearch run --storage URL` of a 3-trial space into a database that already holds study `other`; the
    server stops (its connections cut) once the first epoch is recorded, for OUTAGE_S, and starts again."""
    url = postgres_server.new_database("search")
    add_other_study(url)
    work = tmp_path_factory.mktemp("pg_run")
    space = write_space(work, "tiny", num=3)
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "dsearch.cli", "run", str(space), "--storage", url,
                             "--study-dir", str(work / "study"), "--quiet"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        first_epoch_recorded(url, proc)
        postgres_server.stop()
        down, running = time.time(), proc.poll() is None
        try:
            time.sleep(OUTAGE_S)
        finally:
            postgres_server.resume()
        up = time.time()
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    return SimpleNamespace(url=url, space=space, study_dir=work / "study", seconds=time.monotonic() - t0,
                           outage=(down, up), running_at_outage=running, stderr=err)


@pytest.mark.slow
def test_a_20_s_database_outage_mid_search_is_ridden_out_and_every_trial_is_recorded_once(searched):
    """The run was training when the server went down; it waited for it (saying so), went on, and ended with exit
    0: its three trials each trained once (one Ray trial each) and are recorded once, none failed or requeued."""
    down, up = searched.outage
    assert searched.running_at_outage
    assert "does not answer" in searched.stderr and "waiting up to 180 s for it" in searched.stderr
    assert "answers again (after " in searched.stderr
    study = optuna.load_study(study_name="tiny", storage=searched.url)
    trials = study.trials
    assert [t.number for t in trials] == [0, 1, 2]
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials), [t.state for t in trials]
    assert not any(key in t.user_attrs for t in trials for key in ("fail_reason", "requeued_from"))
    assert all(len(t.user_attrs["curve"]) == t.user_attrs["epochs_trained"] for t in trials)
    folders = sorted(p.name.split("-")[1] for p in searched.study_dir.glob("ray/*/trial-*") if p.is_dir())
    assert folders == ["0", "1", "2"]
    assert max(t.datetime_complete.timestamp() for t in trials) > up          # the search went on after it


def test_a_connection_the_server_dropped_is_replaced_before_use(postgres_server, monkeypatch):
    """A pooled connection that the server dropped while idle (here: a restart) is found dead and replaced
    before the next use, which succeeds at once: no retry (DSEARCH_DB_RETRY_S=0), not even a failed try."""
    from dsearch.search.storage import open_storage

    url = postgres_server.new_database("preping")
    add_other_study(url)
    monkeypatch.setenv("DSEARCH_DB_RETRY_S", "0")
    for storage in (open_storage(url), open_storage(url, writer=True)):     # a reader's; the driver's
        assert [s.study_name for s in storage.get_all_studies()] == ["other"]       # a connection in the pool
        postgres_server.stop()
        postgres_server.resume()
        assert [s.study_name for s in storage.get_all_studies()] == ["other"]


@pytest.mark.slow
def test_run_creates_its_study_beside_the_others_and_stores_its_space(searched):
    assert optuna.get_all_study_names(searched.url) == ["other", "tiny"]
    study = optuna.load_study(study_name="tiny", storage=searched.url)
    assert study.metric_names == ["val_acc", "params", "macs"]
    assert st.counted_trials(study) == 3
    first = study.trials[0]
    assert first.state == TrialState.COMPLETE and first.params == {"model.depth": 10, "model.growth_rate": 6,
                                                                   "train.lr": 0.1}
    assert first.user_attrs["epochs_trained"] == 2 and len(first.user_attrs["curve"]) == 2
    assert {t.state for t in study.trials} <= {TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL}
    assert optuna.load_study(study_name="other", storage=searched.url).trials == []
    # The local folder holds the space, Ray's folders and the lock; the study itself is in the database.
    assert (searched.study_dir / "space.yaml").is_file() and not (searched.study_dir / "study.db").exists()
    stored = parse_space(st.stored_space_text(searched.url, "tiny"), rules=False)
    assert stored.name == "tiny" and stored.objectives[0].reference == 0.01


@pytest.mark.slow
def test_continuing_with_another_space_is_refused_from_the_copy_in_the_database(searched, tmp_path):
    changed = parse_space(searched.space.read_text().replace("max_epochs: 2", "max_epochs: 3"))
    with pytest.raises(dsearch.UserError, match=r"study 'tiny' in postgresql://.* was started with a different "
                                                r"space: budget\.max_epochs: 2 → 3"):
        st.create_or_load(changed, tmp_path / "elsewhere", searched.url)   # no local space.yaml to compare
    assert st.counted_trials(optuna.load_study(study_name="tiny", storage=searched.url)) == 3


@pytest.mark.slow
def test_pareto_from_another_directory_needs_no_study_folder(searched, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["pareto", "--storage", searched.url, "--study", "tiny"]) == 0
    out = capsys.readouterr().out
    assert f"study tiny ({searched.url})" in out
    # The space stored in the study gives the reference point (there is no space.yaml here).
    assert "reference point (val_acc=0.01, params=50000, macs=50000000) [from space.yaml]" in out, out
    assert "dashboard: " in out and f"--storage {searched.url} --study tiny" in out
    assert out.endswith("HTML: studies/tiny/pareto.html\nCSV: studies/tiny/pareto.csv\n")
    rows = (tmp_path / "studies" / "tiny" / "pareto.csv").read_text().splitlines()
    assert rows[0].startswith("trial,state,val_acc,params,macs") and len(rows) >= 2
    assert sorted(p.name for p in (tmp_path / "studies" / "tiny").iterdir()) == ["pareto.csv", "pareto.html", "reuse"]


@pytest.mark.slow
def test_export_needs_no_study_folder(searched, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["export", "--storage", searched.url, "--study", "tiny", "--trial", "0", "--out", "best"]) == 0
    assert "exported trial 0 of tiny (COMPLETE, 2 of 2 epochs)" in capsys.readouterr().out
    assert sum(p.numel() for p in dsearch.load_model(tmp_path / "best").parameters()) > 0


@pytest.mark.slow
@pytest.mark.parametrize("command", [["pareto"], ["export", "--trial", "0", "--out", "x"], ["dashboard"]])
def test_several_studies_and_no_name_list_them(searched, tmp_path, monkeypatch, capsys, command):
    monkeypatch.chdir(tmp_path)
    code = main([*command, "--storage", searched.url])
    one_line_error(code, capsys.readouterr().err, f"{searched.url} holds 2 studies; use --study NAME; "
                                                  "studies: other, tiny")
    code = main([*command, "--storage", searched.url, "--study", "tiyn"])
    one_line_error(code, capsys.readouterr().err, f"--study tiyn: no such study in {searched.url}; "
                                                  "studies: other, tiny; did you mean tiny?")
    assert list(tmp_path.iterdir()) == []


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_dashboard_serves_the_database_without_a_study_folder(searched, tmp_path):
    port = _free_port()
    log = tmp_path / "dashboard.log"
    with open(log, "w") as sink:
        proc = subprocess.Popen([sys.executable, "-m", "dsearch.cli", "dashboard", "--storage", searched.url,
                                 "--study", "tiny", "--port", str(port)], stdout=sink, stderr=subprocess.STDOUT,
                                cwd=tmp_path)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=2) as r:
                    studies = json.load(r)["study_summaries"]
                break
            except OSError:
                assert time.monotonic() < deadline, f"no answer (exit {proc.poll()}): {log.read_text()}"
                time.sleep(0.2)
        ids = {s["study_name"]: s["study_id"] for s in studies}
        assert set(ids) == {"other", "tiny"}
        assert f"/dashboard/studies/{ids['tiny']} " in log.read_text()
    finally:
        proc.terminate()
        proc.wait(timeout=10)


# --- URLs and drivers: one line, exit 2, no server needed ------------------------------------------------

FORMS = ("sqlite:///PATH", "postgresql://USER@HOST:PORT/DB", "mysql+pymysql://")


@pytest.mark.parametrize("url, texts", [
    ("foo://host/db", ["--storage foo://host/db: unknown database 'foo'", *FORMS]),
    ("studies/c10/study.db", ["--storage 'studies/c10/study.db': not a database URL", *FORMS]),
    ("mysql://u@127.0.0.1/db", ["driver (MySQLdb) is not installed", "pip install pymysql"]),
])
def test_bad_storage_urls_are_one_line_errors(tmp_path, url, texts):
    space = write_space(tmp_path, "tiny", num=1)
    for args in (["run", space, "--study-dir", tmp_path / "s", "--quiet"], ["pareto"]):
        proc = dsearch_cli(*args, "--storage", url, timeout=120)
        one_line_error(proc.returncode, proc.stderr, *texts)
    assert not (tmp_path / "s").exists()


def test_a_missing_postgresql_driver_is_a_one_line_error(tmp_path):
    # As if dsearch[postgres] weren't installed: the driver module can't be imported.
    hide = "import sys; sys.modules['psycopg'] = None; from dsearch.cli import main; sys.exit(main(sys.argv[1:]))"
    space = write_space(tmp_path, "tiny", num=1)
    for args in (["run", space, "--study-dir", tmp_path / "s"], ["pareto", "--study", "tiny"]):
        proc = subprocess.run([sys.executable, "-c", hide, *map(str, args), "--storage",
                               "postgresql://dsearch:secret@127.0.0.1:5432/db"], capture_output=True, text=True,
                              timeout=120)
        one_line_error(proc.returncode, proc.stderr, "--storage postgresql://dsearch:***@127.0.0.1:5432/db: "
                       "its postgresql driver (psycopg) is not installed; pip install 'dsearch[postgres]'")
        assert "secret" not in proc.stderr
    assert not (tmp_path / "s").exists()


def test_an_unreachable_server_and_no_study_at_all_are_one_line_errors(capsys):
    url = f"postgresql://dsearch@127.0.0.1:{_free_port()}/db"     # nothing listens there
    one_line_error(main(["pareto", "--storage", url]), capsys.readouterr().err,
                   f"{url}: can't open the database (", "Connection refused")
    one_line_error(main(["pareto"]), capsys.readouterr().err, "no study given", "--storage URL --study NAME")


# --- the run lease on PostgreSQL: compare-and-set (tests/test_lock.py has the rest, on SQLite) --------------------

def test_eight_drivers_race_for_the_lease_one_takes_it_and_a_driver_whose_lease_was_taken_writes_nothing(
        postgres_server):
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from dsearch.errors import UserError
    from dsearch.search.lock import LEASE_ATTR, StudyLease

    url = postgres_server.new_database("lease")
    optuna.create_study(study_name="s", storage=url)
    drivers = [StudyLease(url, "s", timeout_s=1.2, host=f"host-{i}") for i in range(8)]   # beats every 0.2 s
    start = threading.Barrier(len(drivers))

    def take(lease: StudyLease) -> bool:
        start.wait()
        try:
            lease.acquire()
            return True
        except UserError:
            return False

    with ThreadPoolExecutor(len(drivers)) as pool:
        won = list(pool.map(take, drivers))
    assert won.count(True) == 1
    winner = drivers[won.index(True)]
    try:
        storage = optuna.storages.get_storage(url)
        study_id = storage.get_study_id_from_name("s")
        assert storage.get_study_system_attrs(study_id)[LEASE_ATTR]["token"] == winner.me["token"]
        # Another driver's lease written over the winner's: its next beat finds it, and writes nothing.
        other = {"host": "host-x", "pid": 4242, "token": "x" * 16, "beat": 1, "heartbeat": 0.5}
        storage.set_study_system_attr(study_id, LEASE_ATTR, other)
        time.sleep(0.6)                 # three of the winner's heartbeats
        assert storage.get_study_system_attrs(study_id)[LEASE_ATTR] == other
        assert winner.lost == "pid 4242 on host host-x took it over"
    finally:
        winner.release()
    assert storage.get_study_system_attrs(study_id)[LEASE_ATTR] == other


def test_status_reads_a_live_drivers_lease_on_postgresql_and_writes_nothing(postgres_server, capsys, tmp_path,
                                                                           monkeypatch):
    import os

    from dsearch.search.lock import LEASE_ATTR, StudyLease
    from studies import new_study

    monkeypatch.chdir(tmp_path)
    url = postgres_server.new_database("status")
    new_study("s", url).enqueue_trial({"x": 1})
    lease = StudyLease(url, "s", host="gpu-box-7")        # as a driver on another host: beats every 10 s
    lease.acquire()
    try:
        storage = optuna.storages.get_storage(url)
        written = storage.get_study_system_attrs(storage.get_study_id_from_name("s"))[LEASE_ATTR]
        assert main(["status", "--storage", url, "--study", "s", "--json"]) == 0
        status = json.loads(capsys.readouterr().out)
        assert storage.get_study_system_attrs(storage.get_study_id_from_name("s"))[LEASE_ATTR] == written
    finally:
        lease.release()
    assert status["driver"] == {**status["driver"], "source": "lease", "host": "gpu-box-7", "pid": os.getpid(),
                                "alive": True, "beat": 1, "heartbeat": written["heartbeat"], "released": False}
    assert status["counts"]["WAITING"] == 1 and status["front_size"] == 0 and list(tmp_path.iterdir()) == []
    assert main(["status", "--storage", url, "--study", "s", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["driver"]["released"] is True
