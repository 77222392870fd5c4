"""How long creating a job of 1,000,000 units takes, and how long other requests wait meanwhile.

Starts one real master (SQLite store, a fresh data dir, 127.0.0.1) and a probe, a process of
its own sending ``GET /api/v1/health`` every 10 ms on a keep-alive connection (as
tests/api/test_never_stall.py does), then creates a range sweep of ``--units`` units (MAX_SWEEP,
1,000,000: one unit row and one params.json blob each) with one ``POST /jobs``, and times it
from the request sent to the reply read.

    .venv/bin/python bench/create.py [--units 1000000] [--repeat 1] [--quick]

Recorded: the creation's seconds and units/s; the probes that overlapped it: count, p50,
p99 and the worst (targets: under 10 s, no probe over 100 ms). Writes
bench/results/create.json; the last stdout line holds the medians.
"""

import argparse
import time
from typing import Any

from common import Master, Probe, emit, load_average, medians, ms, percentile, record, say, sweep_job, write_result

from dockercomp.protocol.jobfile import MAX_SWEEP

TARGET_S = 10.0
TARGET_PROBE_MS = 100.0
FIGURES = ("create_s", "units_per_s", "probe_p50_ms", "probe_p99_ms", "probe_max_ms", "probes_over_100ms")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--units", type=int, default=MAX_SWEEP, help=f"units of the sweep (default {MAX_SWEEP})")
    parser.add_argument("--repeat", type=int, default=1, help="runs, each on a fresh master (default 1)")
    parser.add_argument("--output", default="", help="result file (default bench/results/create.json)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 20,000 units, nothing written")
    args = parser.parse_args()
    if args.quick:
        args.units, args.repeat = 20_000, 1
    if not 1 <= args.units <= MAX_SWEEP or args.repeat < 1:
        parser.error(f"--units must be from 1 to {MAX_SWEEP}, --repeat at least 1")
    params = {"units": args.units, "repeat": args.repeat, "probe_every_s": 0.010}
    runs = []
    for i in range(args.repeat):
        say(f"create: a sweep of {args.units} units")
        run = run_once(args.units)
        runs.append(run)
        say(
            f"  run {i + 1}: {run['create_s']} s ({run['units_per_s']:.0f} units/s), {run['probes']} probes:"
            f" p50 {run['probe_p50_ms']} ms, p99 {run['probe_p99_ms']} ms, worst {run['probe_max_ms']} ms"
            f" ({run['probes_over_100ms']} over 100 ms),"
            f" load {run['load_average'][0]}"
        )
    median = medians(runs, FIGURES)
    if not args.quick:
        content = record("create", params, runs, median, targets={"create_s": TARGET_S, "probe_ms": TARGET_PROBE_MS})
        write_result("create", content, args.output)
    emit(median)
    return 0


def run_once(units: int) -> dict[str, Any]:
    with Master() as master:
        probe = Probe(master.port)
        try:
            at, started = time.time(), time.perf_counter()
            job = master.post("/jobs", {"job": sweep_job(units, "bench-create")})["job"]
            elapsed = time.perf_counter() - started
            ended = time.time()
        finally:
            samples = probe.stop()
        status = master.get(f"/jobs/{job}")
    if status["units"]["ready"] != units:
        raise RuntimeError(f"the job has {status['units']} units, not {units} ready")
    if any(s < 0 for _, s in samples):
        raise RuntimeError("a probe failed")
    overlapped = [s for sent, s in samples if at <= sent + s and sent <= ended]  # in flight while the job was made
    return {
        "units": units,
        "create_s": round(elapsed, 2),
        "units_per_s": round(units / elapsed, 1),
        "probes": len(overlapped),
        "probe_p50_ms": ms(percentile(overlapped, 50)),
        "probe_p99_ms": ms(percentile(overlapped, 99)),
        "probe_max_ms": ms(max(overlapped)),
        "probes_over_100ms": sum(1 for s in overlapped if s > TARGET_PROBE_MS / 1000),
        "load_average": load_average(),
    }


if __name__ == "__main__":
    raise SystemExit(main())
