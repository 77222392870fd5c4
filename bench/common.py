"""What the benchmarks share: a real master process, HTTP calls to it, the facts recorded with
every result (machine, source, load), percentiles, and writing bench/results/NAME.json.

Every benchmark prints its figures as one JSON object on its last stdout line (``emit``), which
``bench/run.py`` collects."""

import datetime
import http.client
import json
import os
import platform
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from typing import Any

import msgpack
import tornado

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "bench", "results")
API = "/api/v1"
MSGPACK = "application/msgpack"
CLK_TCK = os.sysconf("SC_CLK_TCK")
BENCH_IMAGE = "dockercomp/bench@sha256:" + "0" * 64  # a registry reference by digest: taken without a push


# -- the master --------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Master:
    """One ``python -m dockercomp server`` process on 127.0.0.1 (log level warning).

    ``data_dir`` is made (and removed by ``cleanup``) when not given; ``flags`` go after the
    server's own (``--store``, ``--register-burst`` ...)."""

    def __init__(self, data_dir: str = "", flags: Sequence[str] = (), port: int = 0) -> None:
        self.owns_dir = not data_dir
        self.data_dir = data_dir or tempfile.mkdtemp(prefix="dockercomp-bench-")
        self.flags = list(flags)
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None
        self.profiler: subprocess.Popen | None = None
        self.token = ""

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, wait: bool = True) -> "Master":
        args = [sys.executable, "-m", "dockercomp", "--log-level", "warning", "server", "--host", "127.0.0.1",
                "--port", str(self.port), "--data-dir", self.data_dir, *self.flags]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKERCOMP_")}
        # its output (the operator's token, made on the first start) goes to stderr: stdout is for the figures
        self.proc = subprocess.Popen(args, cwd=self.data_dir, env=env, stdin=subprocess.DEVNULL, stdout=sys.stderr)
        if prefix := os.environ.get("BENCH_PROFILE"):
            self._profile(prefix)
        if wait:
            self.wait_ready()
        return self

    def _profile(self, prefix: str) -> None:
        """Sample the master with py-spy (.venv/bin/py-spy, 100 Hz, every thread, idle time too)
        into PREFIX-PID.txt, collapsed stacks (flamegraph.pl or speedscope read them), until it exits."""
        spy = os.path.join(os.path.dirname(sys.executable), "py-spy")
        out = f"{prefix}-{self.pid}.txt"
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        self.profiler = subprocess.Popen(
            [spy, "record", "--pid", str(self.pid), "--rate", "100", "--threads", "--idle", "--format", "raw",
             "-o", out, "--nonblocking"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        say(f"profiling the master (pid {self.pid}) into {out}")

    def wait_ready(self, timeout: float = 60) -> None:
        """Until /health answers; then the operator's token (the first master on a store writes it)."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the master exited with code {self.proc.returncode}")
            try:
                call(self.port, "GET", f"{API}/health", timeout=2)
                break
            except OSError:
                time.sleep(0.02)
        else:
            raise RuntimeError(f"the master did not answer within {timeout:.0f} s")
        token_file = os.path.join(self.data_dir, "operator.token")
        if not self.token and os.path.exists(token_file):
            with open(token_file) as f:
                self.token = f.read().strip()

    def get(self, path: str, timeout: float = 120) -> Any:
        return call(self.port, "GET", API + path, token=self.token, timeout=timeout)

    def post(self, path: str, body: Any, timeout: float = 600) -> Any:
        return call(self.port, "POST", API + path, json.dumps(body).encode(), "application/json", self.token, timeout)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 30 s."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._profiled()

    def _profiled(self) -> None:
        """Wait for py-spy to write its profile of the master that ended."""
        if self.profiler is not None:
            try:
                self.profiler.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.profiler.terminate()
            self.profiler = None

    def kill(self) -> None:
        """kill -9: no shutdown code runs."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self._profiled()

    def cleanup(self) -> None:
        self.stop()
        if self.owns_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> "Master":
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.cleanup()


def call(
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    ctype: str | None = None,
    token: str = "",
    timeout: float = 120,
) -> Any:
    """One request on a fresh connection; the reply decoded from JSON (or msgpack when sent so)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        headers = {"Accept": "application/json"} | ({"Content-Type": ctype} if ctype else {})
        headers |= {"Authorization": f"Bearer {token}"} if token else {}
        conn.request(method, path, body, headers)
        response = conn.getresponse()
        data = response.read()
        if response.status >= 300:
            raise RuntimeError(f"{method} {path}: HTTP {response.status}: {data[:300]!r}")
        if response.getheader("Content-Type", "").startswith(MSGPACK):
            return msgpack.unpackb(data, raw=False)
        return json.loads(data) if data else None
    finally:
        conn.close()


def sweep_job(units: int, name: str = "bench-sweep") -> dict[str, Any]:
    """A job file of a range sweep of ``units`` units (one number each), for the simulated
    clients that never run its image."""
    return {
        "name": name,
        "image": BENCH_IMAGE,
        "command": ["true"],
        "sweep": {"start": 0, "end": units, "step": 1},
        "redundancy": {"replicas": 1, "quorum": 1, "max_attempts": 3},
        "resources": {"cpus": 1, "memory": "64MiB", "timeout": "10m"},
    }


def count_states(db: str, table: str = "units") -> dict[str, int]:
    """Rows of a table of a master's SQLite file per state, read without writing."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=60) as conn:
        return dict(conn.execute(f"SELECT state, COUNT(*) FROM {table} GROUP BY state ORDER BY state").fetchall())


# -- a probe: how long a cheap request waits while the master works ----------------------------

PROBE = r"""
import http.client, sys, threading, time
port, every = int(sys.argv[1]), float(sys.argv[2])
samples = []
def probe():
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    while True:
        at, started = time.time(), time.perf_counter()
        try:
            conn.request("GET", "/api/v1/health")
            conn.getresponse().read()
            samples.append((at, time.perf_counter() - started))
        except OSError:
            samples.append((at, -1.0))
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        time.sleep(max(0.0, every - (time.perf_counter() - started)))
threading.Thread(target=probe, daemon=True).start()
print("ready", flush=True)
sys.stdin.read()
print(" ".join(f"{a:.6f}:{s:.6f}" for a, s in list(samples)), flush=True)
"""


class Probe:
    """A process of its own (so this one's work is never taken for the master's) sending
    ``GET /health`` every ``every`` seconds on one keep-alive connection; ``stop`` returns
    every request's (time.time() sent, seconds taken; -1 for a failed one)."""

    def __init__(self, port: int, every: float = 0.010) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", PROBE, str(port), str(every)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != "ready":
            raise RuntimeError("the probe did not start")
        time.sleep(0.1)  # a few probes first, so connection set-up is not counted

    def stop(self) -> list[tuple[float, float]]:
        out, _ = self.proc.communicate(timeout=60)
        return [(float(a), float(s)) for a, s in (x.split(":") for x in out.split())]


# -- figures ----------------------------------------------------------------------------------


def percentile(values: Iterable[float], pct: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(1, -(-len(ordered) * pct // 100))
    return ordered[int(rank) - 1]


def ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


def medians(runs: list[dict[str, Any]], keys: Iterable[str]) -> dict[str, Any]:
    return {key: round(statistics.median(run[key] for run in runs), 3) for key in keys}


# -- facts ------------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def vm_rss(pid: int) -> int:
    """Resident bytes of a process (VmRSS in /proc/PID/status)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages, as ``uptime`` shows them."""
    return [round(x, 2) for x in os.getloadavg()]


def machine() -> dict[str, Any]:
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        pass
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {
        "cores": os.cpu_count(),
        "cpu": model,
        "memory_gib": round(memory / (1 << 30), 1),
        "os": platform.platform(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "tornado": tornado.version,
        "msgpack": ".".join(map(str, msgpack.version)),
    }


def source() -> dict[str, Any]:
    """Where the master's code came from (PYTHONPATH may point elsewhere), and when that is
    this repository, its commit and whether the master's code had changes on top of it."""
    where = "import os, dockercomp.server as s; print(os.path.dirname(os.path.realpath(s.__file__)))"
    run = subprocess.run(  # from where the master starts, not here: ./dockercomp would shadow PYTHONPATH
        [sys.executable, "-c", where], cwd=tempfile.gettempdir(), capture_output=True, text=True, check=True
    )
    code = run.stdout.strip()
    found: dict[str, Any] = {"master_code": code}
    if os.path.realpath(code).startswith(os.path.realpath(ROOT) + os.sep):
        git = ["git", "-C", ROOT]
        found["commit"] = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
        changes = subprocess.run([*git, "status", "--porcelain", "--", "server", "protocol", "client", "dockercomp"],
                                 capture_output=True, text=True).stdout  # fmt: skip
        found["uncommitted_changes"] = bool(changes.strip())
    return found


# -- results ------------------------------------------------------------------------------------


def record(
    benchmark: str, params: dict[str, Any], runs: list[dict[str, Any]], median: dict[str, Any], **extra: Any
) -> dict[str, Any]:
    """The result file's content: what ran, where, on what code, under what load, every run."""
    return {
        "benchmark": benchmark,
        "recorded_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "load_average": load_average(),
        "source": source(),
        "machine": machine(),
        "parameters": params,
        **extra,
        "median": median,
        "runs": runs,
    }


def write_result(name: str, content: dict[str, Any], path: str = "") -> str:
    """Write bench/results/NAME.json (or ``path``); the path written."""
    path = path or os.path.join(RESULTS, f"{name}.json")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(content, f, indent=2)
        f.write("\n")
    return path


def emit(figures: dict[str, Any]) -> None:
    """The benchmark's figures as one JSON object on the last line of stdout."""
    print(json.dumps(figures, sort_keys=True), flush=True)


def say(text: str) -> None:
    """Progress, on stderr, so stdout's last line stays the figures."""
    print(text, file=sys.stderr, flush=True)
