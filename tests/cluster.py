"""Throwaway "other machines" for tests: an S3-compatible server and a two-node Ray cluster, on one machine.

`s3_server()` runs moto's S3 server on a free loopback port: object storage that every node can reach.

`two_node_cluster(hidden)` starts a Ray head (0 CPUs: it runs no tasks) and a worker node on 127.0.0.2 (all
of 127.0.0.0/8 is loopback on Linux, so to Ray it is another host; Ray itself replaces the head's 127.0.0.1
with the host's primary IP, and a driver on this machine attaches to the head). The worker node runs in
its own mount namespace (`unshare --mount`, needs root or CAP_SYS_ADMIN) where an empty tmpfs covers each
`hidden` directory (the project checkout, a study folder, ...) and the head's Ray temp dir: whatever the
code under test fails to ship to the cluster (a runtime_env `py_modules`, storage on S3 instead of a local
folder) is missing there, as it would be on a real second host. The interpreter's venv, which may sit
inside the hidden checkout, is bind-mounted back so that the worker node still runs the same Python and Ray;
its editable install of the project then points into the empty tmpfs, so the project's source is not
importable there unless shipped.

Both are context managers that tear everything down, also when the body raises. The test process itself
never becomes a Ray driver: drive the cluster from a subprocess with `cluster.env`.
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

BIN = Path(sys.executable).parent            # the venv's bin dir (not resolved: that would leave the venv)
REGION = "us-east-1"
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))   # loopback, never via a proxy


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, n: int = 3000) -> str:
    try:
        return f"--- {path} ---\n{path.read_text(errors='replace')[-n:]}\n"
    except OSError:
        return ""


def _stop(proc: subprocess.Popen, timeout: float = 10) -> None:
    """SIGTERM the process group led by proc (started with start_new_session), then SIGKILL it if needed."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(wait)
            return


# --- S3 -------------------------------------------------------------------------------------------------------


@dataclass
class S3Server:
    endpoint: str       # "127.0.0.1:PORT"
    env: dict           # what a client process (driver, Ray node) needs in its environment

    def _http(self, method: str, path: str) -> bytes:
        req = urllib.request.Request(f"http://{self.endpoint}/{path}", method=method)
        with _NO_PROXY.open(req, timeout=10) as resp:
            return resp.read()

    def make_bucket(self, name: str) -> None:
        self._http("PUT", name)

    def uri(self, bucket: str, prefix: str = "") -> str:
        """A URI that pyarrow.fs.FileSystem.from_uri (and so Ray's storage_path) resolves to this server."""
        path = f"{bucket}/{prefix.strip('/')}".rstrip("/")
        return f"s3://{path}?endpoint_override={self.endpoint}&scheme=http&region={REGION}"

    def list(self, bucket: str) -> list[str]:
        """All keys in the bucket, sorted."""
        ns = {"s3": "http://s3.amazonaws.com/doc/2006-03-01/"}
        keys, token = [], ""
        while True:
            query = "list-type=2" + (f"&continuation-token={urllib.parse.quote(token)}" if token else "")
            root = ET.fromstring(self._http("GET", f"{bucket}?{query}"))
            keys += [k.text for k in root.iterfind("s3:Contents/s3:Key", ns)]
            token = root.findtext("s3:NextContinuationToken", "", ns)
            if root.findtext("s3:IsTruncated", "false", ns) != "true":
                return sorted(keys)


S3_ENV = {
    "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": REGION,
    "AWS_REGION": REGION,
    "AWS_EC2_METADATA_DISABLED": "true",                                        # no instance-metadata probes
    "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull,   # ignore ~/.aws
    # Else unsigned (credential-less) uploads go aws-chunked with a trailing checksum, which moto stores verbatim.
    "AWS_REQUEST_CHECKSUM_CALCULATION": "when_required", "AWS_RESPONSE_CHECKSUM_VALIDATION": "when_required",
}


def _answers(server: S3Server, proc: subprocess.Popen, deadline: float) -> bool:
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            server._http("GET", "")
            return True
        except OSError:
            time.sleep(0.1)
    return False


@contextlib.contextmanager
def s3_server():
    """moto's S3 server on a free loopback port, in its own process group; yields an S3Server."""
    log = Path(tempfile.mkstemp(prefix="moto-", suffix=".log")[1])
    proc = None
    try:
        for attempt in range(3):        # a free port can be taken between the probe and the start
            port = _free_port()
            with log.open("w") as out:
                proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                        stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        start_new_session=True)
            server = S3Server(f"127.0.0.1:{port}", dict(S3_ENV))
            if _answers(server, proc, time.monotonic() + 15):
                break
            exited = proc.poll() is not None       # e.g. the port was taken: try another one
            _stop(proc)
            if attempt == 2 or not exited:
                raise RuntimeError(f"moto server did not answer on 127.0.0.1:{port}\n{_tail(log)}")
        yield server
    finally:
        if proc is not None:
            _stop(proc)
        log.unlink(missing_ok=True)


# --- Ray --------------------------------------------------------------------------------------------------------


@dataclass
class RayCluster:
    address: str            # GCS address, "127.0.0.1:PORT"
    head_ip: str            # the host's primary IP: Ray replaces --node-ip-address 127.0.0.1 with it
    worker_ip: str          # "127.0.0.2"
    worker_node_id: str     # hex, as in ray.get_runtime_context().get_node_id()
    env: dict               # a complete environment for a driver subprocess: os.environ + env + RAY_ADDRESS, ...
    root: Path              # temp dir: head/ and worker/ Ray temp dirs (logs under */session_latest/logs)


# Run by a helper Python (the test process must not import ray): wait until the head and the worker node at
# argv[2] are alive in the GCS at argv[1]; print the worker's node id and the head's IP.
_WAIT_NODES = """
import sys, time
from ray._raylet import GcsClient
address, worker_ip = sys.argv[1:]
gcs = None
while True:
    try:
        gcs = gcs or GcsClient(address=address)
        alive = [n for n in gcs.get_all_node_info(timeout=2).values() if n.state == 0]
    except Exception:
        alive = []
    worker = [n for n in alive if n.node_manager_address == worker_ip]
    head = [n for n in alive if n.node_manager_address != worker_ip]
    if len(alive) == 2 and worker:
        print(worker[0].node_id.hex(), head[0].node_manager_address)
        break
    time.sleep(0.2)
"""


def _session_pids(sessions: set[int]) -> list[int]:
    """Live (not zombie) processes of the given sessions: each node's `ray start` leads one, every Ray process
    of that node (GCS, raylet, agents, workers) inherits it."""
    pids = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                state, _ppid, _pgrp, sid = Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()[:4]
            except (OSError, ValueError):
                continue
            if int(sid) in sessions and state != "Z":
                pids.append(int(entry.name))
    return pids


def _kill_sessions(sessions: set[int]) -> None:
    """SIGKILL every process of the sessions until none is left (no graceful stop: the cluster is thrown away)."""
    deadline = time.monotonic() + 10
    while (pids := _session_pids(sessions)) and time.monotonic() < deadline:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)
    if pids:
        raise RuntimeError(f"Ray cluster processes survived SIGKILL: {pids}")


def _worker_script(hidden: list[Path], head_tmp: Path, root: Path, command: list[str]) -> str:
    """sh for inside `unshare --mount`: cover `hidden` and the head's temp dir, keep the interpreter, run Ray."""
    q = shlex.quote
    covered = sorted({*hidden, head_tmp}, key=lambda p: len(p.parts), reverse=True)   # nested: inner first
    keep = [p for p in dict.fromkeys(map(Path, (sys.prefix, sys.base_prefix)))
            if any(p == h or h in p.parents for h in hidden)]
    lines = ["set -e", "cd /"]      # a cwd inside a hidden dir would still see the real one
    for i, p in enumerate(keep):
        lines += [f"mkdir -p {q(str(root / f'keep{i}'))}", f"mount --bind {q(str(p))} {q(str(root / f'keep{i}'))}"]
    lines += [f"mount -t tmpfs -o size=1m,mode=755 hidden {q(str(p))}" for p in covered]
    for i, p in enumerate(keep):
        lines += [f"mkdir -p {q(str(p))}", f"mount --bind {q(str(root / f'keep{i}'))} {q(str(p))}"]
    return "\n".join([*lines, "exec " + shlex.join(command)])


@contextlib.contextmanager
def two_node_cluster(hidden, env: dict | None = None, worker_cpus: int = 2):
    """A Ray head (0 CPUs) and a worker node on 127.0.0.2 (worker_cpus CPUs) that cannot see `hidden`.

    hidden: existing absolute directories the worker node must not see (not /tmp, which holds the nodes' temp
    dirs). env: added to both nodes' environment (e.g. S3Server.env). Yields a RayCluster; the worker node is
    the only one that can run tasks. Waits ≤ 60 s for both nodes; teardown SIGKILLs both nodes' sessions.
    """
    hidden = [Path(h) for h in hidden]
    tmp = Path("/tmp")      # short: Ray's unix socket paths (under the temp dirs) must stay under 107 chars
    for h in hidden:
        if not (h.is_absolute() and h.is_dir()) or h == tmp or h in tmp.parents:
            raise ValueError(f"hidden paths must be existing absolute directories other than /tmp, /: {h}")
    root = Path(tempfile.mkdtemp(prefix="rc", dir=tmp))
    head_tmp, worker_tmp = root / "head", root / "worker"
    head_tmp.mkdir(), worker_tmp.mkdir()
    # Token auth (on by default when ~/.ray/auth_token exists) is off: nodes and drivers need no shared token.
    node_env = {**os.environ, **(env or {}), "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    port = _free_port()
    address = f"127.0.0.1:{port}"
    common = ["--block", "--num-gpus", "0", "--disable-usage-stats", "--object-store-memory", str(200 << 20),
              "--min-worker-port", "0", "--max-worker-port", "0"]   # 0: workers take OS-assigned ports
    head_cmd = [str(BIN / "ray"), "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port),
                "--num-cpus", "0", "--temp-dir", str(head_tmp), *common, "--include-dashboard", "false",
                "--dashboard-port", str(_free_port())]     # its API server runs anyway, by default on 8265
    if importlib.util.find_spec("grpc"):    # with ray[client] the head serves Ray Client, by default on 10001
        head_cmd += ["--ray-client-server-port", str(_free_port())]
    worker_cmd = [str(BIN / "ray"), "start", "--address", address, "--node-ip-address", "127.0.0.2",
                  "--num-cpus", str(worker_cpus), "--temp-dir", str(worker_tmp), *common]
    procs, logs = [], [root / "head.out", root / "worker.out"]
    try:
        for cmd, log in ((head_cmd, logs[0]),
                         (["unshare", "--mount", "--propagation", "private", "sh", "-c",
                           _worker_script(hidden, head_tmp, root, worker_cmd)], logs[1])):
            with log.open("w") as out:
                procs.append(subprocess.Popen(cmd, env=node_env, cwd=root, stdout=out, stderr=subprocess.STDOUT,
                                              stdin=subprocess.DEVNULL, start_new_session=True))
        with tempfile.TemporaryFile() as out:
            waiter = subprocess.Popen([sys.executable, "-c", _WAIT_NODES, address, "127.0.0.2"], env=node_env,
                                      cwd=root, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
            deadline = time.monotonic() + 60
            while waiter.poll() is None and time.monotonic() < deadline and all(p.poll() is None for p in procs):
                time.sleep(0.1)
            if waiter.poll() is None:
                _stop(waiter, 1)
            out.seek(0)
            result = out.read().decode(errors="replace").strip()
        if waiter.returncode != 0:
            raylets = [*head_tmp.glob("session_*/logs/raylet.out"), *worker_tmp.glob("session_*/logs/raylet.out")]
            raise RuntimeError(f"Ray cluster did not come up with 2 nodes (exit codes {[p.poll() for p in procs]})"
                               f"\n{result[-2000:]}\n" + "".join(map(_tail, [*logs, *raylets])))
        worker_node_id, head_ip = result.splitlines()[-1].split()
        yield RayCluster(address=address, head_ip=head_ip, worker_ip="127.0.0.2", worker_node_id=worker_node_id,
                         env={**node_env, "RAY_ADDRESS": address}, root=root)
    finally:
        try:
            _kill_sessions({p.pid for p in procs})
        finally:
            for proc in procs:
                proc.wait()
        shutil.rmtree(root, ignore_errors=True)
