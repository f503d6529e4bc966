import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest
import torch

# Deterministic, small-thread tests on the 2-core CI machine.
torch.set_num_threads(min(2, os.cpu_count() or 1))
# The suite's own host cache (layout probes), shared by every test and the processes they start, as one host's is;
# never the user's ~/.cache/dsearch. A test of the cache itself points DSEARCH_CACHE_DIR at its own folder.
os.environ["DSEARCH_CACHE_DIR"] = tempfile.mkdtemp(prefix="dsearch-test-cache-")
# A CPU trial profiles one training step to measure its peak memory; the profiler's start costs ~1.4 s in each worker
# process, which adds up over the suite's searches. Off here, on where it is checked (test_search.py's tiny search).
os.environ["DSEARCH_MEASURE_CPU_PEAK"] = "0"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(params=["0", "1"], ids=["cpu-without-bf16", "cpu-with-bf16"])
def either_cpu(request, monkeypatch):
    """The test twice: as on a CPU without native bf16 units, and as on one with them ($DSEARCH_ASSUME_NATIVE_BF16),
    where train.amp auto trains in bf16. A test whose numbers depend on what auto picks pins train.amp (and
    train.channels_last); this keeps the ones that once didn't honest on any CI machine. True: with bf16 units.

    The whole suite as on such a CPU: DSEARCH_ASSUME_NATIVE_BF16=1 pytest … (slower here: bf16 is emulated).
    """
    monkeypatch.setenv("DSEARCH_ASSUME_NATIVE_BF16", request.param)
    return request.param == "1"


# --- a throwaway PostgreSQL server (tests/test_postgres.py) -------------------------------------------------------


class PostgresServer:
    """A PostgreSQL server of Debian's binaries, in a temp dir, on 127.0.0.1:port; role `dsearch`, trust auth."""

    ROLE = "dsearch"

    def __init__(self, bindir: Path, root: Path, port: int) -> None:
        self.bindir, self.root, self.port = bindir, root, port
        self.data, self.log = root / "data", root / "server.log"
        self._databases = 0

    def run(self, *args: str, as_owner: bool = False) -> subprocess.CompletedProcess:
        """A PostgreSQL program from bindir; as_owner runs it as the postgres user when we are root."""
        cmd = [str(self.bindir / args[0]), *args[1:]]
        if as_owner and os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=self.root)
        if proc.returncode != 0:
            log = self.log.read_text()[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()}\n{log}")
        return proc

    def sql(self, statement: str) -> None:
        self.run("psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", str(self.port),
                 "-U", "postgres", "-d", "postgres", "-c", statement)

    def start(self) -> None:
        self.run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C",
                 as_owner=True)
        self.resume()
        self.sql(f"CREATE ROLE {self.ROLE} LOGIN")

    def resume(self) -> None:
        """Start the initialised server (again, after `stop`: an outage ends), on the same port."""
        # max_connections: the session's drivers, lease holders and in-process storages share this one server; at
        # the default 100 a late test could find no free slot ("remaining connection slots are reserved").
        options = (f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root} -c max_connections=400 "
                   "-c fsync=off -c synchronous_commit=off -c full_page_writes=off")
        self.run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "-t", "60", "start",
                 as_owner=True)

    def stop(self) -> None:
        """Stop the server ("fast": clients are disconnected at once); `resume` starts it again with its data."""
        if (self.data / "postmaster.pid").exists():
            self.run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop", as_owner=True)

    def new_database(self, prefix: str = "db") -> str:
        """A fresh database owned by the role (PostgreSQL ≥ 15: only the owner may create tables); its URL."""
        self._databases += 1
        name = f"{prefix}_{self._databases}"
        self.sql(f"CREATE DATABASE {name} OWNER {self.ROLE}")
        return f"postgresql://{self.ROLE}@127.0.0.1:{self.port}/{name}"


def _postgres_bindir() -> Path | None:
    """The newest /usr/lib/postgresql/VERSION/bin that has initdb and pg_ctl (Debian's layout)."""
    found = [p.parent for p in Path("/usr/lib/postgresql").glob("*/bin/initdb") if (p.parent / "pg_ctl").exists()]
    return max(found, key=lambda b: [int(x) if x.isdigit() else 0 for x in b.parent.name.split(".")]) \
        if found else None


def _free_loopback_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def postgres_server():
    """A throwaway PostgreSQL server for the session, stopped and removed at its end.

    Debian's server binaries (`make postgres` installs them) run as the postgres user when the tests run as
    root; data and the unix socket live in a temp dir (under $DSEARCH_PG_ROOT if set), TCP on 127.0.0.1 only,
    on a free port. Skipped if the binaries are absent, unless $DSEARCH_REQUIRE_POSTGRES is set (CI).
    """
    def unavailable(reason: str):
        if os.environ.get("DSEARCH_REQUIRE_POSTGRES"):
            pytest.fail(f"{reason} (and $DSEARCH_REQUIRE_POSTGRES is set)")
        pytest.skip(reason)

    bindir = _postgres_bindir()
    if bindir is None:
        unavailable("no PostgreSQL server binaries under /usr/lib/postgresql/*/bin "
                    "(`make postgres` or apt-get install postgresql)")
    if os.geteuid() == 0:
        try:
            import pwd

            owner = pwd.getpwnam("postgres")
        except KeyError:
            unavailable("running as root, and there is no postgres user to run the server as")
        if shutil.which("runuser") is None:
            unavailable("running as root, and there is no runuser to run the server as postgres")
    root = Path(tempfile.mkdtemp(prefix="dsearch-pg-", dir=os.environ.get("DSEARCH_PG_ROOT")))
    if os.geteuid() == 0:
        os.chown(root, owner.pw_uid, owner.pw_gid)
    server = None
    try:
        for attempt in range(3):      # a free port can be taken between the probe and the start
            server = PostgresServer(bindir, root, _free_loopback_port())
            try:
                server.start()
                break
            except RuntimeError:
                server.stop()
                shutil.rmtree(server.data, ignore_errors=True)
                if attempt == 2:
                    raise
        yield server
    finally:
        try:
            if server is not None:
                server.stop()
        finally:
            shutil.rmtree(root, ignore_errors=True)


# --- a real MLflow tracking server (tests/test_mlflow.py) ---------------------------------------------------------


class MlflowServer:
    """`mlflow server` on 127.0.0.1:port with a SQLite backend and a local artifact root, in a temp dir.

    It takes ~10 s to start on the 2-core CI machine, so it is started in the background as soon as the session
    knows a test will use it (pytest_collection_finish), and `mlflow_server` waits for it."""

    def __init__(self) -> None:
        import sys

        self.root = Path(tempfile.mkdtemp(prefix="dsearch-mlflow-"))
        self.port = _free_loopback_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.log = self.root / "server.log"
        mlflow = Path(sys.executable).with_name("mlflow")
        self.proc = subprocess.Popen(
            [str(mlflow), "server", "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
             "--artifacts-destination", str(self.root / "artifacts"), "--host", "127.0.0.1",
             "--port", str(self.port), "--workers", "1"],
            stdout=open(self.log, "w"), stderr=subprocess.STDOUT, cwd=self.root, start_new_session=True,
            # MLflow 3 starts a job runner and eight huey consumers beside the server (each imports mlflow: ~30 s of
            # CPU while the suite runs, then polling); tracking needs none of them.
            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})

    def wait(self, timeout: float = 120.0) -> "MlflowServer":
        import time
        import urllib.request

        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited ({self.proc.returncode}): {self.log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.3)
        raise RuntimeError(f"mlflow server not up after {timeout:.0f} s: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        import signal

        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        shutil.rmtree(self.root, ignore_errors=True)


_MLFLOW: dict = {}


def pytest_collection_finish(session):
    if any("mlflow_server" in getattr(item, "fixturenames", ()) for item in session.items):
        import importlib.util

        if importlib.util.find_spec("mlflow") is not None:
            _MLFLOW["server"] = MlflowServer()


def pytest_unconfigure(config):
    server = _MLFLOW.pop("server", None)
    if server is not None:
        server.stop()


@pytest.fixture(scope="session")
def mlflow_server():
    """The session's MLflow tracking server, up (tests/test_mlflow.py)."""
    server = _MLFLOW.get("server")
    if server is None:
        pytest.fail("mlflow is not installed: it is a test dependency (pip install -e '.[test]')")
    return server.wait()
