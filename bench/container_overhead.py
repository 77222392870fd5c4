"""Per-unit cost of one trivial function three ways: batch mode (one sandboxed container per
unit: create, start, wait, remove, through the real DockerRunner), service mode (a warm
container of the real ServiceRunner fed the unit over its socket) and in-process (the same
function called here, no container at all).

The function writes ``ok`` to the unit's result: the image is the wordfreq workload's (it
carries the runner library), the command runs the function and nothing else. A service
unit's cost is all the daemon's runner does for it: the unit's directories (its input
linked), the frame each way, the /output bound checked, the result moved, the directories
removed. The first unit of each mode (warm-up: a container start, caches) is not counted.
It needs a Docker engine (scripts/ensure-docker) and builds the offline images once when missing.

    .venv/bin/python bench/container_overhead.py [--runs N] [--service-runs N] [--parallel P] [--quick]

Writes bench/results/container-overhead.json (every run, medians, p90) and prints the medians
as one JSON object on the last line of stdout (batch_ms, service_ms, inprocess_ms).
"""

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from common import emit, record, say, write_result

from dockercomp.client import images
from dockercomp.client.runner import Runner, RunSpec
from dockercomp.client.service import ServiceRunner
from dockercomp.protocol.service import Unit

IMAGE = images.workload_tag("wordfreq")
FUNCTION = "open(OUTPUT + '/result', 'w').write('ok\\n')"  # the trivial function, OUTPUT its directory
BATCH = ("python3", "-c", FUNCTION.replace("OUTPUT", "'/output'"))
SERVICE = (
    "python3", "-c",
    "import sys; sys.path.insert(0, '/app'); from dockercomp_runner import serve; "
    f"sys.exit(serve(lambda unit: {FUNCTION.replace('OUTPUT', 'unit.output')}))",
)  # fmt: skip
TARGET_SERVICE_MS = 2.0


def trivial(unit: Unit) -> None:
    """The function, as the service command runs it."""
    with open(unit.output + "/result", "w") as f:
        f.write("ok\n")


def unit_spec(client: str, work: str, n: int, mode: str) -> RunSpec:
    unit_dir = os.path.join(work, f"{mode}-{n}")
    input_dir, output_dir = os.path.join(unit_dir, "input"), os.path.join(unit_dir, "output")
    os.makedirs(input_dir)
    os.makedirs(output_dir)
    with open(os.path.join(input_dir, "chunk"), "wb") as f:
        f.write(b"a unit's chunk\n")
    return RunSpec(
        client=client, attempt=f"bench-{mode}-{n}", job="bench", unit=f"bench.{n}", image=IMAGE,
        command=BATCH if mode == "batch" else SERVICE, env=(), cpus=1.0, memory=64 << 20, timeout=60.0,
        input_dir=input_dir, output_dir=output_dir, output_limit=8 << 20, mode=mode,
    )  # fmt: skip


def timed(runner: Runner, spec: RunSpec) -> float:
    """Seconds ``runner.run`` takes for one unit (which must succeed and leave its result)."""
    started = time.perf_counter()
    outcome = runner.run(spec, threading.Event())
    elapsed = time.perf_counter() - started
    if outcome.error is not None:
        raise SystemExit(f"{spec.attempt} failed: {outcome.error} {outcome.stderr_tail}")
    with open(os.path.join(spec.output_dir, "result"), "rb") as f:
        if f.read() != b"ok\n":
            raise SystemExit(f"{spec.attempt} left the wrong result")
    return elapsed


def series(runs: int, parallel: int, one: Callable[[int], float]) -> tuple[list[float], float]:
    """The times of ``runs`` units, ``parallel`` at once (after one for warm-up), and the wall time."""
    one(-1)
    wall = time.perf_counter()
    with ThreadPoolExecutor(parallel) as pool:
        times = list(pool.map(one, range(runs)))
    return times, time.perf_counter() - wall


def inprocess(work: str, runs: int) -> list[float]:
    times = []
    for n in range(-1, runs):
        output = os.path.join(work, f"inprocess-{n}")
        os.mkdir(output)
        unit = Unit(id=f"bench-inprocess-{n}", job="bench", unit=f"bench.{n}", input=work, output=output)
        started = time.perf_counter()
        trivial(unit)
        elapsed = time.perf_counter() - started
        if n >= 0:
            times.append(elapsed)
    return times


def summary(times: list[float], wall: float) -> dict[str, Any]:
    ordered = sorted(times)
    return {
        "median_ms": round(statistics.median(ordered) * 1000, 3),
        "p90_ms": round(ordered[int(0.9 * (len(ordered) - 1))] * 1000, 3),
        "min_ms": round(ordered[0] * 1000, 3),
        "units_per_s": round(len(ordered) / wall, 1) if wall > 0 else None,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20, help="batch units (default 20)")
    parser.add_argument("--service-runs", type=int, default=500, help="service and in-process units (default 500)")
    parser.add_argument("--parallel", type=int, default=1, help="units at once (default 1)")
    parser.add_argument("--output", default="", help="the result file (default bench/results/container-overhead.json)")
    parser.add_argument("--quick", action="store_true", help="5 batch and 100 service units (a smoke run)")
    args = parser.parse_args()
    if args.quick:
        args.runs, args.service_runs = min(args.runs, 5), min(args.service_runs, 100)

    docker_client = images.connect()
    images.build_workload(docker_client, "wordfreq")  # the base image first, when missing
    client = f"bench-{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory(prefix="dockercomp-bench-") as work:
        runner = ServiceRunner(
            docker_client, root=os.path.join(work, "service"), idle_timeout=600.0, max_containers=args.parallel
        )
        try:
            say(f"batch mode: {args.runs} units, {args.parallel} at once")
            batch, batch_wall = series(
                args.runs, args.parallel, lambda n: timed(runner, unit_spec(client, work, n, "batch"))
            )
            say(f"service mode: {args.service_runs} units, {args.parallel} at once")
            service, service_wall = series(
                args.service_runs, args.parallel, lambda n: timed(runner, unit_spec(client, work, n, "service"))
            )
            containers = runner.warm_containers()
        finally:
            runner.close()
        say(f"in-process: {args.service_runs} calls")
        local = inprocess(work, args.service_runs)
    figures = {
        "batch_ms": summary(batch, batch_wall)["median_ms"],
        "service_ms": summary(service, service_wall)["median_ms"],
        "inprocess_ms": summary(local, sum(local))["median_ms"],
    }
    figures["service_target_ms"] = TARGET_SERVICE_MS
    figures["service_meets_target"] = figures["service_ms"] <= TARGET_SERVICE_MS
    figures["batch_over_service"] = round(figures["batch_ms"] / figures["service_ms"], 1)
    params = {
        "runs": args.runs, "service_runs": args.service_runs, "parallel": args.parallel, "image": IMAGE,
        "function": FUNCTION, "batch_command": list(BATCH), "service_command": list(SERVICE),
        "service_containers": containers, "docker": docker_client.version().get("Version"),
        "storage_driver": docker_client.info().get("Driver"), "bounded_output_fs": os.geteuid() == 0,
    }  # fmt: skip
    content = record(
        "container_overhead",
        params,
        runs=[],
        median=figures,
        batch=summary(batch, batch_wall) | {"runs_ms": [round(t * 1000, 3) for t in batch]},
        service=summary(service, service_wall) | {"runs_ms": [round(t * 1000, 3) for t in service]},
        inprocess=summary(local, sum(local)),
    )
    path = write_result("container-overhead", content, args.output)
    say(
        f"per unit, median: batch {figures['batch_ms']:.1f} ms, service {figures['service_ms']:.2f} ms "
        f"({containers} warm container(s)), in-process {figures['inprocess_ms']:.3f} ms -> {path}"
    )
    emit(figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
