"""Dispatch throughput of one master: how many units per second it hands out and takes back.

Starts one real master process (SQLite store, fresh temporary data dir, 127.0.0.1), creates
a job of tiny chunks, and runs simulated volunteer clients in another process: each client
registers, leases a batch of units, "computes" a tiny deterministic result from each unit's
input hash, and uploads the results as one batch, over keep-alive HTTP with msgpack bodies,
until the job is done. No containers run, so what is measured is the master's dispatch path:
HTTP, message decoding, the store's lease and record_results, and the result blobs.

    .venv/bin/python bench/dispatch.py [--units N] [--clients C] [--batch B] [--replicas R ...]
                                       [--repeat K] [--fetch-inputs] [--output PATH]

Each scenario (one per --replicas value; quorum = replicas) runs K times on a fresh master
and writes bench/results/dispatch-sqlite[-replicasR].json with every run and the medians.
"""

import argparse
import datetime
import http.client
import json
import multiprocessing
import os
import platform
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

import msgpack
import tornado
import xxhash

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "bench", "results")
API = "/api/v1"
MSGPACK = "application/msgpack"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--units", type=int, default=20_000, help="units in the job (default 20000)")
    parser.add_argument("--clients", type=int, default=8, help="simulated clients (default 8)")
    parser.add_argument("--batch", type=int, default=50, help="units per lease and per result upload (default 50)")
    parser.add_argument(
        "--replicas", type=int, nargs="+", default=[1, 2], help="a scenario per value; quorum = replicas (default 1 2)"
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs per scenario, each on a fresh master (default 3)")
    parser.add_argument("--procs", type=int, default=1, help="client processes sharing the clients (default 1)")
    parser.add_argument(
        "--fetch-inputs", action="store_true", help="download each unit's input blob too (off: dispatch only)"
    )
    parser.add_argument("--output", help="result file (default bench/results/dispatch-sqlite[-replicasR].json)")
    parser.add_argument("--note", default="", help="a remark kept with the results (what was measured, and why)")
    args = parser.parse_args()
    if args.output and len(args.replicas) > 1:
        parser.error("--output names one file: give one --replicas value with it")
    if args.units < 1 or args.clients < 1 or args.repeat < 1 or args.procs < 1 or not 1 <= args.batch <= 1000:
        parser.error("--units, --clients, --repeat and --procs must be at least 1, --batch from 1 to 1000")
    if not all(1 <= r <= min(16, args.clients) for r in args.replicas):
        parser.error("each --replicas value must be from 1 to 16, and at most --clients (each needs its own client)")

    for replicas in args.replicas:
        params = {
            "units": args.units, "clients": args.clients, "batch": args.batch, "replicas": replicas,
            "quorum": replicas, "repeat": args.repeat, "procs": args.procs, "fetch_inputs": args.fetch_inputs,
        }  # fmt: skip
        print(f"dispatch, sqlite: {_describe(params)}", flush=True)
        runs = []
        for i in range(args.repeat):
            run = run_once(params)
            runs.append(run)
            print(
                f"  run {i + 1}: {run['units_per_s']:7.0f} units/s   lease p50 {run['lease_p50_ms']:.1f} ms"
                f" p99 {run['lease_p99_ms']:.1f} ms   results p50 {run['results_p50_ms']:.1f} ms"
                f" p99 {run['results_p99_ms']:.1f} ms   master cpu {run['master_cpu_share']:.0%}",
                flush=True,
            )
        record = {
            "benchmark": "dispatch",
            "store": "sqlite",
            "recorded_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "note": args.note,
            "source": _source(),
            "machine": _machine(),
            "parameters": params,
            "median": {key: statistics.median(run[key] for run in runs) for key in MEDIANS},
            "runs": runs,
        }
        suffix = "" if replicas == 1 else f"-replicas{replicas}"
        path = args.output or os.path.join(RESULTS, f"dispatch-sqlite{suffix}.json")
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as f:
            json.dump(record, f, indent=2)
            f.write("\n")
        m = record["median"]
        print(
            f"  median: {m['units_per_s']:.0f} units/s, lease p50 {m['lease_p50_ms']:.1f} ms p99"
            f" {m['lease_p99_ms']:.1f} ms, results p50 {m['results_p50_ms']:.1f} ms p99 {m['results_p99_ms']:.1f} ms"
            f"  -> {os.path.relpath(path)}",
            flush=True,
        )
    return 0


MEDIANS = (
    "units_per_s", "wall_s", "lease_p50_ms", "lease_p99_ms", "results_p50_ms", "results_p99_ms",
    "master_cpu_share",
)  # fmt: skip


def _describe(p: dict[str, Any]) -> str:
    fetch = ", inputs fetched" if p["fetch_inputs"] else ""
    return (
        f"{p['units']} units, {p['clients']} clients, batch {p['batch']}, replicas {p['replicas']}"
        f" quorum {p['quorum']}, {p['repeat']} runs{fetch}"
    )


# -- one run -------------------------------------------------------------------------------


def run_once(params: dict[str, Any]) -> dict[str, Any]:
    """Start a master, create the job, let the clients finish it; the numbers of that run."""
    data_dir = tempfile.mkdtemp(prefix="dockercomp-bench-")
    port = _free_port()
    master = subprocess.Popen(
        [sys.executable, "-m", "dockercomp", "--log-level", "warning", "server", "--host", "127.0.0.1",
         "--port", str(port), "--data-dir", data_dir, "--open-enrollment"],
        cwd=data_dir,
    )  # fmt: skip
    try:
        _wait_ready(port, master)
        with open(os.path.join(data_dir, "operator.token")) as f:
            token = f.read().strip()
        job_id = _create_job(port, params, token)
        ctx = multiprocessing.get_context("spawn")
        queue = ctx.Queue()
        go, abort = ctx.Event(), ctx.Event()
        procs = [
            ctx.Process(target=client_process, args=(port, job_id, n, params, token, go, abort, queue), daemon=True)
            for n in _shares(params["clients"], params["procs"])
        ]
        for p in procs:
            p.start()
        for _ in procs:
            if queue.get(timeout=60) != "ready":
                raise RuntimeError("a client process failed to register")
        cpu_before = _cpu_seconds(master.pid)
        go.set()
        reports = [queue.get(timeout=3600) for _ in procs]
        cpu_after = _cpu_seconds(master.pid)
        for p in procs:
            p.join()
        failed = [r["error"] for r in reports if r["error"]]
        if failed:
            raise RuntimeError(f"a simulated client failed: {failed[0]}")
        job = _get(port, f"{API}/jobs/{job_id}", token)
        return _summarise(params, job, reports, cpu_after - cpu_before)
    finally:
        master.terminate()
        try:
            master.wait(timeout=30)
        except subprocess.TimeoutExpired:
            master.kill()
            master.wait()
        shutil.rmtree(data_dir, ignore_errors=True)


def _shares(clients: int, procs: int) -> list[int]:
    """How many clients each process runs: as even as can be, none empty."""
    return [n for n in (clients // procs + (i < clients % procs) for i in range(procs)) if n]


def _summarise(params: dict[str, Any], job: dict[str, Any], reports: list[dict[str, Any]], cpu: float) -> dict:
    if job["state"] != "done" or job["units"]["done"] != params["units"]:
        raise RuntimeError(f"the job did not finish: {job['state']}, units {job['units']}")
    leases = sorted(x for r in reports for x in r["lease"])
    uploads = sorted(x for r in reports for x in r["results"])
    start = min(r["first_lease"] for r in reports)
    wall = job["finished_at"] - start  # both stamps are this machine's wall clock
    return {
        "units": params["units"],
        "wall_s": round(wall, 3),
        "units_per_s": round(params["units"] / wall, 1),
        "lease_p50_ms": _ms(_percentile(leases, 50)),
        "lease_p99_ms": _ms(_percentile(leases, 99)),
        "results_p50_ms": _ms(_percentile(uploads, 50)),
        "results_p99_ms": _ms(_percentile(uploads, 99)),
        "leases": len(leases),
        "empty_leases": sum(r["empty_leases"] for r in reports),
        "result_uploads": len(uploads),
        "attempts_computed": sum(r["computed"] for r in reports),
        "refused": sum(r["refused"] for r in reports),
        "master_cpu_s": round(cpu, 2),
        "master_cpu_share": round(cpu / wall, 3),
        "clients_cpu_s": round(sum(r["cpu"] for r in reports), 2),
    }


def _percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile of sorted values."""
    if not values:
        return float("nan")
    rank = max(1, -(-len(values) * pct // 100))
    return values[int(rank) - 1]


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


# -- the simulated clients -------------------------------------------------------------------


def client_process(
    port: int, job_id: str, n: int, params: dict[str, Any], token: str, go: Any, abort: Any, queue: Any
) -> None:
    """Run ``n`` clients as threads; report their samples to the parent when all are done.
    When one client fails, ``abort`` stops the others (its leases would hold the job up).
    ``token`` is the operator's, for asking whether the job has ended."""
    clients = [Client(port, job_id, f"bench-{os.getpid()}-{i}", params, token, abort) for i in range(n)]
    try:
        for c in clients:
            c.register()
    except Exception:
        queue.put("failed")
        raise
    queue.put("ready")
    go.wait()
    threads = [threading.Thread(target=c.run) for c in clients]
    cpu = time.process_time()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    errors = [c.error for c in clients if c.error]
    queue.put(
        {
            "error": errors[0] if errors else "",
            "lease": [x for c in clients for x in c.lease_latency],
            "results": [x for c in clients for x in c.results_latency],
            "first_lease": min((c.first_lease for c in clients if c.first_lease), default=0.0),
            "empty_leases": sum(c.empty_leases for c in clients),
            "computed": sum(c.computed for c in clients),
            "refused": sum(c.refused for c in clients),
            "cpu": time.process_time() - cpu,
        }
    )


class Client:
    """One volunteer daemon reduced to its protocol: lease a batch, compute, upload, repeat."""

    def __init__(self, port: int, job_id: str, name: str, params: dict[str, Any], token: str, abort: Any) -> None:
        self.abort = abort
        self.port, self.operator = port, token
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        self.job_id = job_id
        self.name = name
        self.batch = params["batch"]
        self.fetch_inputs = params["fetch_inputs"]
        self.headers = {"Content-Type": MSGPACK, "Accept": MSGPACK}
        self.lease_latency: list[float] = []
        self.results_latency: list[float] = []
        self.first_lease = 0.0
        self.empty_leases = self.computed = self.refused = 0
        self.error = ""

    def register(self) -> None:
        reply = self.call("/clients/register", {"name": self.name, "slots": self.batch})
        self.headers["Authorization"] = f"Bearer {reply['token']}"

    def run(self) -> None:
        try:
            self._loop()
        except Exception as exc:
            self.error = repr(exc)
            self.abort.set()

    def _loop(self) -> None:
        lease = {"max_units": self.batch, "cpus": float(self.batch), "memory": 1 << 40}
        while not self.abort.is_set():
            if not self.first_lease:
                self.first_lease = time.time()
            started = time.perf_counter()
            grants = self.call("/lease", lease)["attempts"]
            if not grants:
                # the reply's retry_after is for real daemons; here the tail is what is being timed
                self.empty_leases += 1
                if self.job_finished():
                    return
                time.sleep(0.05)
                continue
            self.lease_latency.append(time.perf_counter() - started)
            results = [self.compute(g) for g in grants]
            started = time.perf_counter()
            acks = self.call("/results", {"results": results})["acks"]
            self.results_latency.append(time.perf_counter() - started)
            self.computed += len(results)
            self.refused += sum(1 for a in acks if not a["accepted"])

    def compute(self, grant: dict[str, Any]) -> dict[str, Any]:
        """A tiny result that depends only on the input, so replicas agree."""
        (source,) = grant["inputs"]
        if self.fetch_inputs:
            data = self.request("GET", source["url"], None)
            if xxhash.xxh3_128_hexdigest(data) != source["hash"]:
                raise RuntimeError(f"input {source['hash']} does not match its hash")
        output = f"{source['hash']}\n".encode()
        return {
            "attempt": grant["attempt"],
            "status": "succeeded",
            "exit_code": 0,
            "output_hash": xxhash.xxh3_128_hexdigest(output),
            "output": output,
            "runtime": 0.001,
        }

    def job_finished(self) -> bool:
        return _get(self.port, f"{API}/jobs/{self.job_id}", self.operator)["state"] != "running"

    def call(self, path: str, body: Any, method: str = "POST") -> Any:
        payload = None if body is None else msgpack.packb(body, use_bin_type=True)
        return msgpack.unpackb(self.request(method, API + path, payload), raw=False)

    def request(self, method: str, url: str, payload: bytes | None) -> bytes:
        self.conn.request(method, url, payload, self.headers)
        response = self.conn.getresponse()
        data = response.read()
        if response.status >= 300:
            raise RuntimeError(f"{method} {url}: HTTP {response.status}: {data[:200]!r}")
        return data


# -- the master and the job --------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_ready(port: int, master: subprocess.Popen) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if master.poll() is not None:
            raise RuntimeError(f"the master exited with code {master.returncode}")
        try:
            _get(port, f"{API}/health", "")
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("the master did not answer within 30 s")


def _create_job(port: int, params: dict[str, Any], token: str) -> str:
    """Upload N one-line inputs, chunked one line per unit by the master, and create the job.
    Its image is a registry reference by digest, which the master takes without a push: the
    simulated clients never run it."""
    lines = b"".join(b"bench input %08d\n" % i for i in range(params["units"]))
    chunks = _call(port, "POST", f"{API}/chunks?by=lines&size=1", lines, "application/octet-stream", token)["chunks"]
    if len(chunks) != params["units"]:
        raise RuntimeError(f"expected {params['units']} chunks, got {len(chunks)}")
    replicas = params["replicas"]
    job = {
        "name": "bench-dispatch",
        "image": "dockercomp/bench@sha256:" + "0" * 64,
        "command": ["true"],
        "redundancy": {"replicas": replicas, "quorum": replicas, "max_attempts": replicas + 2},
        "resources": {"cpus": 1, "memory": "64MiB", "timeout": "10m"},
    }
    body = json.dumps({"job": job, "chunks": [c["hash"] for c in chunks]}).encode()
    return _call(port, "POST", f"{API}/jobs", body, "application/json", token)["job"]


def _get(port: int, path: str, token: str) -> Any:
    return _call(port, "GET", path, None, None, token)


def _call(port: int, method: str, path: str, body: bytes | None, ctype: str | None, token: str) -> Any:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        headers = {"Accept": "application/json"} | ({"Content-Type": ctype} if ctype else {})
        headers |= {"Authorization": f"Bearer {token}"} if token else {}
        conn.request(method, path, body, headers)
        response = conn.getresponse()
        data = response.read()
        if response.status >= 300:
            raise RuntimeError(f"{method} {path}: HTTP {response.status}: {data[:300]!r}")
        return json.loads(data)
    finally:
        conn.close()


# -- facts ----------------------------------------------------------------------------------------


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def _machine() -> dict[str, Any]:
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


def _source() -> dict[str, Any]:
    """Where the master's code came from (PYTHONPATH may point elsewhere), and when that is
    this repository, its commit and whether the master's code had changes on top of it."""
    where = "import os, dockercomp.server as s; print(os.path.dirname(os.path.realpath(s.__file__)))"
    run = subprocess.run(  # from where the master starts, not here: ./dockercomp would shadow PYTHONPATH
        [sys.executable, "-c", where], cwd=tempfile.gettempdir(), capture_output=True, text=True, check=True
    )
    code = run.stdout.strip()
    source: dict[str, Any] = {"master_code": code}
    if os.path.realpath(code).startswith(os.path.realpath(ROOT) + os.sep):
        git = ["git", "-C", ROOT]
        source["commit"] = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
        changes = subprocess.run([*git, "status", "--porcelain", "--", "server", "protocol", "dockercomp"],
                                 capture_output=True, text=True).stdout  # fmt: skip
        source["uncommitted_changes"] = bool(changes.strip())
    return source


if __name__ == "__main__":
    sys.exit(main())
