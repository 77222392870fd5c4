"""Dispatch throughput of one master: how many units per second it hands out and takes back.

Starts a real master process (SQLite store, fresh temporary data dir, 127.0.0.1), creates
a job of tiny chunks, and runs simulated volunteer clients in another process: each client
registers, leases a batch of units, "computes" a tiny deterministic result from each unit's
input hash, and uploads the results as one batch, over keep-alive HTTP with msgpack bodies,
until the job is done. No containers run, so what is measured is the master's dispatch path:
HTTP, message decoding, the store's lease and record_results, and the result blobs.

    .venv/bin/python bench/dispatch.py [--units N] [--clients C] [--batch B] [--replicas R ...]
                                       [--two-masters R ...] [--repeat K] [--fetch-inputs] [--output PATH]
                                       [--quick]

Each scenario (one per --replicas value on one master, quorum = replicas, and one per
--two-masters value on two master processes sharing one SQLite file, the clients split between
them) runs K times on fresh masters and writes bench/results/dispatch-sqlite[-two-masters]
[-replicasR].json with every run and the medians. The last stdout line is the medians of every
scenario as one JSON object.
"""

import argparse
import http.client
import multiprocessing
import os
import sys
import threading
import time
from typing import Any

import msgpack
import xxhash
from common import (  # bench/common.py: a script's own directory is first on sys.path
    API,
    BENCH_IMAGE,
    MSGPACK,
    Master,
    call,
    cpu_seconds,
    emit,
    load_average,
    medians,
    ms,
    percentile,
    record,
    say,
    write_result,
)  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--units", type=int, default=20_000, help="units in the job (default 20000)")
    parser.add_argument("--clients", type=int, default=8, help="simulated clients (default 8)")
    parser.add_argument("--batch", type=int, default=50, help="units per lease and per result upload (default 50)")
    parser.add_argument(
        "--replicas", type=int, nargs="*", default=[1, 2], help="a scenario per value; quorum = replicas (default 1 2)"
    )
    parser.add_argument(
        "--two-masters", type=int, nargs="*", default=[1], metavar="REPLICAS",
        help="a scenario per value on two masters sharing one SQLite file (default 1; none: skip)",
    )  # fmt: skip
    parser.add_argument("--repeat", type=int, default=3, help="runs per scenario, each on a fresh master (default 3)")
    parser.add_argument("--procs", type=int, default=1, help="client processes sharing the clients (default 1)")
    parser.add_argument(
        "--fetch-inputs", action="store_true", help="download each unit's input blob too (off: dispatch only)"
    )
    parser.add_argument("--output", help="result file (default bench/results/dispatch-sqlite[-replicasR].json)")
    parser.add_argument("--note", default="", help="a remark kept with the results (what was measured, and why)")
    parser.add_argument(
        "--quick", action="store_true", help="a smoke run: 400 units, 4 clients, one run each, nothing written"
    )
    args = parser.parse_args()
    if args.quick:
        args.units, args.clients, args.repeat = 400, 4, 1
    scenarios = [(r, 1) for r in args.replicas] + [(r, 2) for r in args.two_masters]
    if args.output and len(scenarios) != 1:
        parser.error("--output names one file: give one scenario with it (one --replicas value, --two-masters none)")
    if args.units < 1 or args.clients < 1 or args.repeat < 1 or args.procs < 1 or not 1 <= args.batch <= 1000:
        parser.error("--units, --clients, --repeat and --procs must be at least 1, --batch from 1 to 1000")
    if not all(1 <= r <= min(16, args.clients) for r, _ in scenarios):
        parser.error("each replicas value must be from 1 to 16, and at most --clients (each needs its own client)")

    figures: dict[str, Any] = {}
    for replicas, masters in scenarios:
        params = {
            "units": args.units, "clients": args.clients, "batch": args.batch, "replicas": replicas,
            "quorum": replicas, "masters": masters, "repeat": args.repeat, "procs": args.procs,
            "fetch_inputs": args.fetch_inputs,
        }  # fmt: skip
        say(f"dispatch, sqlite: {_describe(params)}")
        runs = []
        for i in range(args.repeat):
            run = run_once(params)
            runs.append(run)
            say(
                f"  run {i + 1}: {run['units_per_s']:7.0f} units/s   lease p50 {run['lease_p50_ms']:.1f} ms"
                f" p99 {run['lease_p99_ms']:.1f} ms   results p50 {run['results_p50_ms']:.1f} ms"
                f" p99 {run['results_p99_ms']:.1f} ms   master cpu {run['master_cpu_share']:.0%}"
                f"   load {run['load_average'][0]}"
            )
        median = medians(runs, MEDIANS)
        name = ("dispatch-sqlite" + ("-two-masters" if masters == 2 else "")
                + ("" if replicas == 1 else f"-replicas{replicas}"))  # fmt: skip
        where = "not written (--quick)"
        if not args.quick:
            content = record("dispatch", params, runs, median, store="sqlite", note=args.note)
            where = os.path.relpath(write_result(name, content, args.output or ""))
        say(
            f"  median: {median['units_per_s']:.0f} units/s, lease p50 {median['lease_p50_ms']:.1f} ms p99"
            f" {median['lease_p99_ms']:.1f} ms, results p50 {median['results_p50_ms']:.1f} ms"
            f" p99 {median['results_p99_ms']:.1f} ms  -> {where}"
        )
        key = ("two_masters" if masters == 2 else "one_master") + f"_replicas{replicas}"
        figures[key] = {k: median[k] for k in FIGURES}
    emit(figures)
    return 0


MEDIANS = (
    "units_per_s", "wall_s", "lease_p50_ms", "lease_p99_ms", "results_p50_ms", "results_p99_ms",
    "master_cpu_share",
)  # fmt: skip
FIGURES = ("units_per_s", "lease_p50_ms", "lease_p99_ms", "results_p50_ms", "results_p99_ms")


def _describe(p: dict[str, Any]) -> str:
    fetch = ", inputs fetched" if p["fetch_inputs"] else ""
    masters = ", two masters on one store" if p["masters"] == 2 else ""
    return (
        f"{p['units']} units, {p['clients']} clients, batch {p['batch']}, replicas {p['replicas']}"
        f" quorum {p['quorum']}, {p['repeat']} runs{masters}{fetch}"
    )


# -- one run -------------------------------------------------------------------------------


def run_once(params: dict[str, Any]) -> dict[str, Any]:
    """Start the master(s), create the job, let the clients finish it; the numbers of that run.
    A second master shares the first one's data dir (its SQLite file and blob files) on a port
    of its own; client i talks to master i mod 2."""
    first = Master(flags=["--open-enrollment"])
    masters = [first]
    try:
        first.start()
        for _ in range(params["masters"] - 1):
            masters.append(Master(first.data_dir, ["--open-enrollment"]).start())
        ports = [m.port for m in masters]
        token = first.token
        job_id = _create_job(first, params)
        ctx = multiprocessing.get_context("spawn")
        queue = ctx.Queue()
        go, abort = ctx.Event(), ctx.Event()
        procs = []
        offset = 0
        for n in _shares(params["clients"], params["procs"]):
            mine = [ports[(offset + i) % len(ports)] for i in range(n)]
            procs.append(
                ctx.Process(target=client_process, args=(mine, job_id, params, token, go, abort, queue), daemon=True)
            )
            offset += n
        for p in procs:
            p.start()
        for _ in procs:
            if queue.get(timeout=60) != "ready":
                raise RuntimeError("a client process failed to register")
        cpu_before = sum(cpu_seconds(m.pid) for m in masters)
        go.set()
        reports = [queue.get(timeout=3600) for _ in procs]
        cpu_after = sum(cpu_seconds(m.pid) for m in masters)
        for p in procs:
            p.join()
        failed = [r["error"] for r in reports if r["error"]]
        if failed:
            raise RuntimeError(f"a simulated client failed: {failed[0]}")
        job = first.get(f"/jobs/{job_id}")
        return _summarise(params, job, reports, cpu_after - cpu_before)
    finally:
        for m in reversed(masters):
            m.cleanup()


def _shares(clients: int, procs: int) -> list[int]:
    """How many clients each process runs: as even as can be, none empty."""
    return [n for n in (clients // procs + (i < clients % procs) for i in range(procs)) if n]


def _summarise(params: dict[str, Any], job: dict[str, Any], reports: list[dict[str, Any]], cpu: float) -> dict:
    if job["state"] != "done" or job["units"]["done"] != params["units"]:
        raise RuntimeError(f"the job did not finish: {job['state']}, units {job['units']}")
    leases = [x for r in reports for x in r["lease"]]
    uploads = [x for r in reports for x in r["results"]]
    start = min(r["first_lease"] for r in reports)
    wall = job["finished_at"] - start  # both stamps are this machine's wall clock
    return {
        "units": params["units"],
        "wall_s": round(wall, 3),
        "units_per_s": round(params["units"] / wall, 1),
        "lease_p50_ms": ms(percentile(leases, 50)),
        "lease_p99_ms": ms(percentile(leases, 99)),
        "results_p50_ms": ms(percentile(uploads, 50)),
        "results_p99_ms": ms(percentile(uploads, 99)),
        "leases": len(leases),
        "empty_leases": sum(r["empty_leases"] for r in reports),
        "result_uploads": len(uploads),
        "attempts_computed": sum(r["computed"] for r in reports),
        "refused": sum(r["refused"] for r in reports),
        "master_cpu_s": round(cpu, 2),
        "master_cpu_share": round(cpu / wall, 3),
        "clients_cpu_s": round(sum(r["cpu"] for r in reports), 2),
        "load_average": load_average(),
    }


# -- the simulated clients -------------------------------------------------------------------


def client_process(
    ports: list[int], job_id: str, params: dict[str, Any], token: str, go: Any, abort: Any, queue: Any
) -> None:
    """Run a client per port in ``ports`` (the master it talks to), as threads; report their
    samples to the parent when all are done.
    When one client fails, ``abort`` stops the others (its leases would hold the job up).
    ``token`` is the operator's, for asking whether the job has ended."""
    clients = [Client(port, job_id, f"bench-{os.getpid()}-{i}", params, token, abort) for i, port in enumerate(ports)]
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
        return call(self.port, "GET", f"{API}/jobs/{self.job_id}", token=self.operator)["state"] != "running"

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


# -- the job ------------------------------------------------------------------------------------


def _create_job(master: Master, params: dict[str, Any]) -> str:
    """Upload N one-line inputs, chunked one line per unit by the master, and create the job.
    Its image is a registry reference by digest, which the master takes without a push: the
    simulated clients never run it."""
    lines = b"".join(b"bench input %08d\n" % i for i in range(params["units"]))
    path = f"{API}/chunks?by=lines&size=1"
    chunks = call(master.port, "POST", path, lines, "application/octet-stream", master.token)["chunks"]
    if len(chunks) != params["units"]:
        raise RuntimeError(f"expected {params['units']} chunks, got {len(chunks)}")
    replicas = params["replicas"]
    job = {
        "name": "bench-dispatch",
        "image": BENCH_IMAGE,
        "command": ["true"],
        "redundancy": {"replicas": replicas, "quorum": replicas, "max_attempts": replicas + 2},
        "resources": {"cpus": 1, "memory": "64MiB", "timeout": "10m"},
    }
    return master.post("/jobs", {"job": job, "chunks": [c["hash"] for c in chunks]})["job"]


if __name__ == "__main__":
    sys.exit(main())
