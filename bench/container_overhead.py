"""Per-unit overhead of batch mode: one sandboxed container per unit (create, start, wait,
remove) through the real DockerRunner, for a unit that does nothing.

This is the baseline the warm-container ("service") mode must beat. It needs a Docker
engine (scripts/ensure-docker) and builds the offline base image once when missing.

    .venv/bin/python bench/container_overhead.py [--runs N] [--parallel P]

Writes bench/results/container-overhead.json (every run, median, p90) and prints a summary.
"""

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

from dockercomp.client import images
from dockercomp.client.docker_runner import DockerRunner
from dockercomp.client.runner import RunSpec

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "bench", "results")


def one_unit(runner: DockerRunner, client: str, work: str, n: int) -> float:
    """Seconds from asking the runner to run a `true` container until it is removed."""
    unit_dir = os.path.join(work, str(n))
    os.makedirs(os.path.join(unit_dir, "input"))
    os.makedirs(os.path.join(unit_dir, "output"))
    spec = RunSpec(
        client=client, attempt=f"bench-{n}", job="bench", unit=f"bench.{n}", image=images.BASE_IMAGE,
        command=("true",), env=(), cpus=1.0, memory=64 << 20, timeout=60.0,
        input_dir=os.path.join(unit_dir, "input"), output_dir=os.path.join(unit_dir, "output"),
    )  # fmt: skip
    started = time.perf_counter()
    outcome = runner.run(spec, threading.Event())
    elapsed = time.perf_counter() - started
    if outcome.error is not None:
        raise SystemExit(f"unit {n} failed: {outcome.error} {outcome.stderr_tail}")
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20, help="units to run (default 20)")
    parser.add_argument("--parallel", type=int, default=1, help="units at once (default 1)")
    parser.add_argument("--output", default=os.path.join(RESULTS, "container-overhead.json"))
    args = parser.parse_args()

    docker_client = images.connect()
    images.ensure_base_image(docker_client)
    runner = DockerRunner(docker_client)
    client = f"bench-{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory(prefix="dockercomp-bench-") as work:
        one_unit(runner, client, work, -1)  # warm-up: the first start pays for caches
        wall = time.perf_counter()
        with ThreadPoolExecutor(args.parallel) as pool:
            times = list(pool.map(lambda n: one_unit(runner, client, work, n), range(args.runs)))
        wall = time.perf_counter() - wall
    times.sort()
    summary = {
        "median_s": round(statistics.median(times), 4),
        "p90_s": round(times[int(0.9 * (len(times) - 1))], 4),
        "min_s": round(times[0], 4),
        "units_per_s": round(args.runs / wall, 2),
    }
    record = {
        "benchmark": "container_overhead",
        "recorded_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "docker": docker_client.version().get("Version"),
            "storage_driver": docker_client.info().get("Driver"),
        },
        "parameters": {"runs": args.runs, "parallel": args.parallel, "image": images.BASE_IMAGE, "command": "true"},
        "summary": summary,
        "runs_s": [round(t, 4) for t in times],
    }
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(record, f, indent=2)
        f.write("\n")
    print(
        f"batch mode, {args.runs} units, {args.parallel} at once: median {summary['median_s'] * 1000:.0f} ms per unit "
        f"(p90 {summary['p90_s'] * 1000:.0f} ms), {summary['units_per_s']} units/s -> {args.output}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
