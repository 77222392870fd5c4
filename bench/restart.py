"""From ``kill -9`` of a master holding 1,000,000 queued units to its serving a lease again.

The data dir is made once: a master creates a range sweep of ``--units`` units through the API
and is stopped; the copy is kept in ``--cache`` (default ~/.cache/dockercomp-bench), named by
the unit count and a hash of the store's code (server/store), and reused by later runs, as
creating a million units takes most of a minute. Each run then:

1. copies that data dir and starts a master on it (SQLite store, 127.0.0.1);
2. registers a client, which leases 10 units, so some units and attempts are running;
3. counts units and attempts by state in the SQLite file, then ``kill -9``s the master;
4. starts the master again on the same data dir and times, from the kill, until the client's
   next lease request is answered with units (and, on the way, until /health answers);
5. counts again: every unit and attempt is still there, in the same state, but for the units
   the new lease took (ready -> running) and their new attempts.

Then each run once more **under writes**: a writer (a client in a thread of this process)
leases 50 units and uploads their results in a loop, as fast as the master takes them, for
``--write-s`` seconds; the master is killed in the middle of that, with whatever its
write-ahead log holds (its size is recorded), and restarted. Nothing lost there means every
result the master acknowledged before the kill is a succeeded attempt of a done unit after it.

    .venv/bin/python bench/restart.py [--units 1000000] [--repeat 3] [--write-s 3] [--cache DIR] [--quick]

Writes bench/results/restart.json; the last stdout line holds the medians (target: a lease
served within 5 s of the kill) and whether anything was lost in any run.
"""

import argparse
import glob
import hashlib
import http.client
import os
import shutil
import sqlite3
import tempfile
import threading
import time
from collections import Counter
from typing import Any

import msgpack
from common import (
    API,
    MSGPACK,
    ROOT,
    Master,
    call,
    count_states,
    emit,
    load_average,
    medians,
    record,
    say,
    sweep_job,
    write_result,
)

from dockercomp.protocol.integrity import digest

TARGET_S = 5.0
LEASED_BEFORE = 10  # units the client holds when the master is killed
LEASED_AFTER = 5  # units the first lease after the restart asks for
WRITE_BATCH = 50  # units the writer leases and reports at a time


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--units", type=int, default=1_000_000, help="queued units (default 1000000)")
    parser.add_argument("--repeat", type=int, default=3, help="kills and restarts, each on a fresh copy (default 3)")
    parser.add_argument(
        "--cache", default=os.path.expanduser("~/.cache/dockercomp-bench"), help="where the data dir is kept"
    )
    parser.add_argument("--write-s", type=float, default=3.0, help="seconds of writes before the kill (default 3)")
    parser.add_argument("--output", default="", help="result file (default bench/results/restart.json)")
    parser.add_argument(
        "--quick", action="store_true", help="a smoke run: 2,000 units, one run, nothing kept or written"
    )
    args = parser.parse_args()
    if args.quick:
        args.units, args.repeat, args.write_s = 2_000, 1, 0.5
        args.cache = tempfile.mkdtemp(prefix="dockercomp-bench-restart-")
    params = {"units": args.units, "repeat": args.repeat, "leased_before_kill": LEASED_BEFORE,
              "write_s": args.write_s, "write_batch": WRITE_BATCH}  # fmt: skip
    try:
        template, made_in = _template(args.units, args.cache)
        runs = []
        for i in range(args.repeat):
            run = run_once(template)
            runs.append(run)
            say(
                f"  run {i + 1}: health {run['health_s']} s, lease {run['lease_s']} s after kill -9,"
                f" lost: {run['lost'] or 'nothing'}, load {run['load_average'][0]}"
            )
            written = run["under_writes"] = run_under_writes(template, args.write_s)
            say(
                f"  run {i + 1} under writes: {written['acked']} results acknowledged, WAL {written['wal_mib']} MiB"
                f" at the kill, lease {written['lease_s']} s after it, lost: {written['lost'] or 'nothing'}"
            )
    finally:
        if args.quick:
            shutil.rmtree(args.cache, ignore_errors=True)
    median = medians(runs, ("health_s", "lease_s"))
    median["under_writes"] = medians([run["under_writes"] for run in runs], ("lease_s", "wal_mib", "acked"))
    median["lost_anything"] = any(run["lost"] or run["under_writes"]["lost"] for run in runs)
    if not args.quick:
        content = record("restart", params, runs, median, target_s=TARGET_S, data_dir_made_in_s=made_in)
        write_result("restart", content, args.output)
    emit(median)
    return 0 if not median["lost_anything"] else 1


def _template(units: int, cache: str) -> tuple[str, float | None]:
    """The data dir of a master holding one job of ``units`` queued units: made once and kept.
    The seconds making it took, when it was made now."""
    code = hashlib.sha256()
    for path in sorted(glob.glob(os.path.join(ROOT, "server", "store", "**", "*.py"), recursive=True)):
        with open(path, "rb") as f:
            code.update(f.read())
    template = os.path.join(cache, f"restart-{units}-{code.hexdigest()[:12]}")
    if os.path.exists(os.path.join(template, "ready")):
        say(f"restart: {units} queued units, the data dir kept in {template}")
        return template, None
    shutil.rmtree(template, ignore_errors=True)
    os.makedirs(template)
    say(f"restart: making a data dir of {units} queued units in {template} (once)")
    started = time.perf_counter()
    with Master(template) as master:
        master.post("/jobs", {"job": sweep_job(units, "bench-restart")})
    made_in = round(time.perf_counter() - started, 1)
    open(os.path.join(template, "ready"), "w").close()
    say(f"  made in {made_in} s")
    return template, made_in


def run_once(template: str) -> dict[str, Any]:
    data_dir = tempfile.mkdtemp(prefix="dockercomp-bench-restart-")
    shutil.rmtree(data_dir)
    shutil.copytree(template, data_dir)
    db = os.path.join(data_dir, "dockercomp.db")
    master = Master(data_dir, ["--open-enrollment"])
    try:
        master.start()
        client = _register(master.port)
        if len(_lease(master.port, client, LEASED_BEFORE)) != LEASED_BEFORE:
            raise RuntimeError(f"the client did not get {LEASED_BEFORE} units")
        before = _counts(db)
        killed = time.perf_counter()
        master.kill()
        master.start(wait=False)
        _until(lambda: call(master.port, "GET", f"{API}/health", timeout=5) or True)
        health_s = time.perf_counter() - killed
        grants = _until(lambda: _lease(master.port, client, LEASED_AFTER))
        lease_s = time.perf_counter() - killed
        after = _counts(db)
    finally:
        master.stop()
        shutil.rmtree(data_dir, ignore_errors=True)
    expected = before.copy()
    took = len(grants)
    expected["units"] = _moved(expected["units"], "ready", "running", took)
    expected["attempts"] = expected["attempts"] + Counter({"leased": took})
    lost = {kind: _difference(expected[kind], after[kind]) for kind in expected if expected[kind] != after[kind]}
    return {
        "health_s": round(health_s, 3),
        "lease_s": round(lease_s, 3),
        "units_before": dict(before["units"]),
        "attempts_before": dict(before["attempts"]),
        "units_after": dict(after["units"]),
        "attempts_after": dict(after["attempts"]),
        "leased_after_restart": took,
        "lost": lost,
        "load_average": load_average(),
    }


def run_under_writes(template: str, write_s: float) -> dict[str, Any]:
    """Kill the master while a writer leases and reports as fast as it can; every result it
    acknowledged must be there after the restart."""
    data_dir = tempfile.mkdtemp(prefix="dockercomp-bench-restart-")
    shutil.rmtree(data_dir)
    shutil.copytree(template, data_dir)
    db = os.path.join(data_dir, "dockercomp.db")
    master = Master(data_dir, ["--open-enrollment"])
    acked: list[str] = []
    try:
        master.start()
        token = _register(master.port, WRITE_BATCH)
        writer = threading.Thread(target=_write, args=(master.port, token, acked), daemon=True)
        writer.start()
        time.sleep(write_s)
        wal_mib = os.path.getsize(db + "-wal") / (1 << 20) if os.path.exists(db + "-wal") else 0.0
        killed = time.perf_counter()
        master.kill()
        writer.join(timeout=60)
        master.start(wait=False)
        _until(lambda: _lease(master.port, token, LEASED_AFTER) is not None)  # answered (the job may be done)
        lease_s = time.perf_counter() - killed
        found = _succeeded(db, acked)
    finally:
        master.stop()
        shutil.rmtree(data_dir, ignore_errors=True)
    missing = len(acked) - found
    return {"acked": len(acked), "wal_mib": round(wal_mib, 1), "lease_s": round(lease_s, 3),
            "lost": {"acknowledged_results": missing} if missing else {}}  # fmt: skip


def _write(port: int, token: str, acked: list[str]) -> None:
    """Lease and report WRITE_BATCH units at a time until the master goes away; the attempts
    whose results it accepted go into ``acked``."""
    output = b"0\n"
    try:
        while grants := _lease(port, token, WRITE_BATCH):
            reports = [{"attempt": g["attempt"], "status": "succeeded", "exit_code": 0,
                        "output_hash": digest(output), "output": output} for g in grants]  # fmt: skip
            acks = _msgpack(port, "/results", {"results": reports}, token)["acks"]
            acked.extend(a["attempt"] for a in acks if a["accepted"])
    except (OSError, RuntimeError, http.client.HTTPException):
        return  # killed


def _succeeded(db: str, attempts: list[str]) -> int:
    """How many of these attempts are succeeded attempts of done units in the SQLite file."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=60) as conn:
        found = 0
        for low in range(0, len(attempts), 500):
            ids = attempts[low : low + 500]
            found += conn.execute(
                "SELECT COUNT(*) FROM attempts AS a JOIN units AS u ON u.id = a.unit_id WHERE a.state = 'succeeded'"
                f" AND u.state = 'done' AND a.id IN ({', '.join('?' * len(ids))})", ids,
            ).fetchone()[0]  # fmt: skip
    return found


def _counts(db: str) -> dict[str, Counter]:
    return {"units": Counter(count_states(db, "units")), "attempts": Counter(count_states(db, "attempts"))}


def _moved(counts: Counter, src: str, dest: str, n: int) -> Counter:
    moved = counts.copy()
    moved[src] -= n
    moved[dest] += n
    return +moved


def _difference(expected: Counter, actual: Counter) -> dict[str, int]:
    """Per state, how many more were expected than found (negative: more found)."""
    return {s: expected[s] - actual[s] for s in sorted(set(expected) | set(actual)) if expected[s] != actual[s]}


def _register(port: int, slots: int = LEASED_BEFORE) -> str:
    reply = _msgpack(port, "/clients/register", {"name": "bench-restart", "slots": slots}, "")
    return reply["token"]


def _lease(port: int, token: str, n: int) -> list[dict[str, Any]]:
    return _msgpack(port, "/lease", {"max_units": n, "cpus": float(n), "memory": 1 << 40}, token)["attempts"]


def _msgpack(port: int, path: str, body: Any, token: str) -> Any:
    return call(port, "POST", API + path, msgpack.packb(body, use_bin_type=True), MSGPACK, token, timeout=30)


def _until(attempt: Any, timeout: float = 120) -> Any:
    """Call ``attempt`` until it answers something true (an OSError is not an answer yet)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if answer := attempt():
                return answer
        except OSError:
            pass
        time.sleep(0.01)
    raise RuntimeError(f"the master did not answer within {timeout:.0f} s of the restart")


if __name__ == "__main__":
    raise SystemExit(main())
