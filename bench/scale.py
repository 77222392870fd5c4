"""Many clients against one master: 10,000 simulated clients heartbeating on their interval.

Starts one real master (SQLite store, 127.0.0.1, open enrollment, and ``--register-rate 0
--register-burst CLIENTS``: every simulated client registers from 127.0.0.1, more than the
default 500 machines one address may register at once), creates a range sweep job for the few
clients that work, and runs the clients in ``--procs`` processes, each an asyncio loop speaking
the client protocol (msgpack over HTTP/1.1) on one keep-alive connection per client, as real
daemons hold theirs. Every client registers (at most 64 registrations in flight per process),
then heartbeats every ``heartbeat_interval`` seconds the master gave it (10 s), its first one at
a random moment of the first interval; ``--workers`` of them also lease one unit at a time,
"compute" it for ``--think`` seconds and upload the result, without pause between units.

    .venv/bin/python bench/scale.py [--clients 10000] [--duration 60] [--workers 4] [--procs 2] [--quick]

Recorded: the master's RSS (VmRSS, sampled every second; the largest), heartbeat latency
p50/p99/max (request written to reply read, on the client's own connection), how late
heartbeats were sent against their schedule (the clients' own lag: it should be near 0), lease
latency p50/p99 of the workers, registration rate, and the master's CPU share. Writes
bench/results/scale.json; the last stdout line holds the figures.
"""

import argparse
import asyncio
import multiprocessing
import random
import time
from collections import Counter
from typing import Any

import msgpack
from common import (
    API,
    Master,
    cpu_seconds,
    emit,
    load_average,
    medians,
    ms,
    percentile,
    record,
    say,
    sweep_job,
    vm_rss,
    write_result,
)

from dockercomp.protocol.integrity import digest

TARGET_RSS = 1 << 30
TARGET_HEARTBEAT_P99_MS = 100.0
REGISTERING = 64  # registrations in flight per process


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=10_000, help="simulated clients (default 10000)")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of heartbeats measured (default 60)")
    parser.add_argument("--workers", type=int, default=4, help="clients that also lease and compute (default 4)")
    parser.add_argument("--think", type=float, default=0.05, help="seconds a worker 'computes' a unit (default 0.05)")
    parser.add_argument("--procs", type=int, default=2, help="client processes (default 2)")
    parser.add_argument("--repeat", type=int, default=1, help="runs, each on a fresh master (default 1)")
    parser.add_argument("--output", default="", help="result file (default bench/results/scale.json)")
    parser.add_argument(
        "--quick", action="store_true", help="a smoke run: 100 clients, 1 worker, 4 s, one process, nothing written"
    )
    args = parser.parse_args()
    if args.quick:
        args.clients, args.workers, args.duration, args.procs, args.repeat = 100, 1, 4.0, 1, 1
    if args.clients < 1 or args.procs < 1 or not 0 <= args.workers <= args.clients or args.duration <= 0:
        parser.error("--clients and --procs must be at least 1, --workers from 0 to --clients, --duration above 0")
    params = {"clients": args.clients, "duration_s": args.duration, "workers": args.workers, "think_s": args.think,
              "procs": args.procs, "repeat": args.repeat}  # fmt: skip
    runs = []
    for i in range(args.repeat):
        say(f"scale: {args.clients} clients ({args.workers} working), {args.duration:.0f} s, {args.procs} processes")
        run = run_once(params)
        runs.append(run)
        say(
            f"  run {i + 1}: rss {run['rss_max_mib']:.0f} MiB, heartbeat p50 {run['heartbeat_p50_ms']} ms"
            f" p99 {run['heartbeat_p99_ms']} ms max {run['heartbeat_max_ms']} ms ({run['heartbeats']}),"
            f" lease p50 {run['lease_p50_ms']} ms p99 {run['lease_p99_ms']} ms, registered"
            f" {run['register_per_s']:.0f}/s, master cpu {run['master_cpu_share']:.0%},"
            f" clients cpu {run['clients_cpu_share']:.0%}, load {run['load_average'][0]}"
        )
    median = medians(runs, FIGURES)
    if not args.quick:
        content = record(
            "scale",
            params,
            runs,
            median,
            targets={"rss_bytes": TARGET_RSS, "heartbeat_p99_ms": TARGET_HEARTBEAT_P99_MS},
        )
        write_result("scale", content, args.output)
    emit(median)
    return 0


FIGURES = (
    "rss_max_mib", "rss_end_mib", "heartbeat_p50_ms", "heartbeat_p99_ms", "heartbeat_max_ms", "send_lag_p99_ms",
    "lease_p50_ms", "lease_p99_ms", "register_per_s", "master_cpu_share", "heartbeats_per_s",
)  # fmt: skip


def run_once(params: dict[str, Any]) -> dict[str, Any]:
    n = params["clients"]
    flags = ["--open-enrollment", "--register-rate", "0", "--register-burst", str(n + 100)]
    with Master(flags=flags) as master:
        job = master.post("/jobs", {"job": sweep_job(100_000, "bench-scale")})["job"]
        ctx = multiprocessing.get_context("spawn")
        queue = ctx.Queue()
        go = ctx.Event()
        shares = [n // params["procs"] + (i < n % params["procs"]) for i in range(params["procs"])]
        procs = [
            ctx.Process(
                target=client_process,
                args=(master.port, i, share, params["workers"] if i == 0 else 0, params, go, queue),
                daemon=True,
            )
            for i, share in enumerate(shares)
            if share
        ]
        started = time.perf_counter()
        for p in procs:
            p.start()
        for _ in procs:
            if (msg := queue.get(timeout=1800)) != "ready":
                raise RuntimeError(f"a client process failed to register its clients: {msg}")
        registered = time.perf_counter() - started
        say(f"  {n} clients registered in {registered:.1f} s, rss {vm_rss(master.pid) / (1 << 20):.0f} MiB")
        rss: list[int] = []
        cpu = cpu_seconds(master.pid)
        go.set()
        t0, started_at = time.perf_counter(), time.time()
        while time.perf_counter() - t0 < params["duration_s"]:
            rss.append(vm_rss(master.pid))
            time.sleep(1.0)
        reports = [queue.get(timeout=300) for _ in procs]
        if failed := [r for r in reports if not isinstance(r, dict)]:
            raise RuntimeError(f"a client process failed: {failed[0]}")
        cpu = cpu_seconds(master.pid) - cpu
        wall = time.perf_counter() - t0
        rss.append(vm_rss(master.pid))
        for p in procs:
            p.join()
        errors = [e for r in reports for e in r["errors"]]
        if errors:
            raise RuntimeError(f"{len(errors)} requests failed, the first: {errors[0]}")
        done = master.get(f"/jobs/{job}")["units"]["done"]
    beats = [x for r in reports for x in r["heartbeat"]]
    slow = [
        at - started_at for r in reports for at, x in zip(r["heartbeat_at"], r["heartbeat"], strict=True) if x > 0.1
    ]
    leases = [x for r in reports for x in r["lease"]]
    lag = [x for r in reports for x in r["lag"]]
    return {
        "clients": n,
        "register_s": round(registered, 2),
        "register_per_s": round(n / registered, 1),
        "rss_max_mib": round(max(rss) / (1 << 20), 1),
        "rss_end_mib": round(rss[-1] / (1 << 20), 1),
        "heartbeats": len(beats),
        "heartbeats_per_s": round(len(beats) / wall, 1),
        "heartbeat_p50_ms": ms(percentile(beats, 50)),
        "heartbeat_p99_ms": ms(percentile(beats, 99)),
        "heartbeat_max_ms": ms(max(beats, default=float("nan"))),
        "send_lag_p99_ms": ms(percentile(lag, 99)),
        # when the heartbeats over 100 ms were answered: seconds since the first, by the second
        "slow_heartbeats_by_second": dict(sorted(Counter(int(x) for x in slow).items())),
        "leases": len(leases),
        "units_done": done,
        "lease_p50_ms": ms(percentile(leases, 50)),
        "lease_p99_ms": ms(percentile(leases, 99)),
        "master_cpu_s": round(cpu, 2),
        "master_cpu_share": round(cpu / wall, 3),
        "clients_cpu_share": round(sum(r["cpu"] for r in reports) / wall, 3),  # of one core, all processes
        "load_average": load_average(),
    }


# -- the simulated clients: one asyncio loop per process --------------------------------------


def client_process(port: int, index: int, n: int, workers: int, params: dict[str, Any], go: Any, queue: Any) -> None:
    try:
        queue.put(asyncio.run(_clients(port, index, n, workers, params, go, queue)))
    except BaseException as exc:
        queue.put(f"{exc!r}")
        raise


async def _clients(port: int, index: int, n: int, workers: int, params: dict[str, Any], go: Any, queue: Any) -> dict:
    gate = asyncio.Semaphore(REGISTERING)

    async def register(i: int) -> Conn:
        async with gate:
            conn = await Conn.open(port)
            reply = await conn.call("/clients/register", {"name": f"scale-{index}-{i}", "slots": 1})
            conn.token, conn.interval = reply["token"], reply["heartbeat_interval"]
            return conn

    conns = await asyncio.gather(*(register(i) for i in range(n)))
    queue.put("ready")
    await asyncio.get_running_loop().run_in_executor(None, go.wait)
    stats: dict[str, Any] = {"heartbeat": [], "heartbeat_at": [], "lease": [], "lag": [], "errors": []}
    cpu = time.process_time()
    until = time.perf_counter() + params["duration_s"]
    tasks = [asyncio.create_task(_heartbeats(c, until, stats)) for c in conns]
    tasks += [asyncio.create_task(_work(await Conn.open(port, c.token), until, params["think_s"], stats))
              for c in conns[:workers]]  # fmt: skip
    await asyncio.gather(*tasks)
    for c in conns:
        c.close()
    stats["cpu"] = time.process_time() - cpu
    return stats


async def _heartbeats(conn: "Conn", until: float, stats: dict[str, Any]) -> None:
    """Heartbeat on the interval, the first at a random moment of the first one."""
    due = time.perf_counter() + random.uniform(0, conn.interval)
    while due < until:
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        sent = time.perf_counter()
        stats["lag"].append(sent - due)
        try:
            reply = await conn.call("/clients/heartbeat", {"slots": 1, "busy": 0})
            stats["heartbeat"].append(time.perf_counter() - sent)
            stats["heartbeat_at"].append(time.time())
            conn.interval = reply.get("interval", conn.interval)
        except Exception as exc:
            stats["errors"].append(f"heartbeat: {exc!r}")
            return
        due += conn.interval


async def _work(conn: "Conn", until: float, think: float, stats: dict[str, Any]) -> None:
    """Lease one unit, compute it for ``think`` seconds, upload its result; again until ``until``."""
    try:
        while time.perf_counter() < until:
            sent = time.perf_counter()
            grants = (await conn.call("/lease", {"max_units": 1, "cpus": 1.0, "memory": 1 << 30}))["attempts"]
            stats["lease"].append(time.perf_counter() - sent)
            if not grants:
                await asyncio.sleep(1.0)
                continue
            await asyncio.sleep(think)
            output = b"scale\n"
            results = [{"attempt": g["attempt"], "status": "succeeded", "exit_code": 0, "output_hash": digest(output),
                        "output": output, "runtime": think} for g in grants]  # fmt: skip
            await conn.call("/results", {"results": results})
    except Exception as exc:
        stats["errors"].append(f"worker: {exc!r}")
    finally:
        conn.close()


class Conn:
    """One keep-alive HTTP/1.1 connection speaking msgpack, as little of HTTP as the master needs."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, token: str) -> None:
        self.reader, self.writer, self.token = reader, writer, token
        self.interval = 10.0

    @classmethod
    async def open(cls, port: int, token: str = "") -> "Conn":
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
        return cls(reader, writer, token)

    async def call(self, path: str, body: Any) -> Any:
        payload = msgpack.packb(body, use_bin_type=True)
        head = (f"POST {API}{path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/msgpack\r\n"
                f"Accept: application/msgpack\r\nContent-Length: {len(payload)}\r\n")  # fmt: skip
        if self.token:
            head += f"Authorization: Bearer {self.token}\r\n"
        self.writer.write(head.encode() + b"\r\n" + payload)
        status = int((await self.reader.readline()).split()[1])
        length = 0
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        data = await self.reader.readexactly(length)
        if status >= 300:
            raise RuntimeError(f"POST {path}: HTTP {status}: {data[:200]!r}")
        return msgpack.unpackb(data, raw=False)

    def close(self) -> None:
        self.writer.close()


if __name__ == "__main__":
    raise SystemExit(main())
