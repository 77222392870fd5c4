"""The primes workload end to end: a parameter sweep with no input file, submitted with the
scientist's CLI to a real master, computed by real daemons in real containers. The counts
are checked against known values of π(x) and against a sieve run here."""

import json
import os
import subprocess
import sys
from math import isqrt
from pathlib import Path
from typing import Any

import docker
import pytest

from dockercomp.client import images
from dockercomp.protocol.integrity import digest
from dockercomp.protocol.jobfile import RangeSweep, parse_jobfile
from tests.needs import skip_or_fail

from .cluster import Daemons, cli, job_units, wait_job

pytestmark = pytest.mark.slow

JOB_WAIT = 150.0
PI = {10**6: 78_498, 10**7: 664_579, 10**8: 5_761_455}  # known values of π(x)


@pytest.fixture(scope="module")
def primes_image(docker_client: docker.DockerClient) -> str:
    """The primes workload, built offline (the base image first when it is missing)."""
    try:
        return images.build_workload(docker_client, "primes")
    except images.ImageError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"cannot build the primes image: {exc} (CI is set, so this is an error, not a skip)")
        skip_or_fail(f"cannot build the primes image: {exc}")


def is_prime_table(n: int) -> bytearray:
    """A plain sieve of Eratosthenes over 0..n, written here apart from the workload's own
    segmented one: table[k] is 1 when k is prime."""
    table = bytearray([1]) * (n + 1)
    table[0:2] = b"\0\0"
    for p in range(2, isqrt(n) + 1):
        if table[p]:
            table[p * p :: p] = bytes(len(range(p * p, n + 1, p)))
    return table


def sample_job(path: Path, upto: int, units: int) -> Path:
    """The workload's own job file for π(upto) in ``units`` units, as its sample.py writes it."""
    script = images.workloads_dir() / "primes" / "sample.py"
    args = [sys.executable, str(script), "--upto", str(upto), "--units", str(units)]
    with open(path, "wb") as out:
        subprocess.run(args, stdout=out, check=True)
    return path


def test_primes_counts_up_to_ten_million_match_known_values_and_a_sieve_run_here(
    master: Any, daemons: Daemons, primes_image: str, tmp_path: Path
) -> None:
    """Two sweeps at once: the workload's ready job.json (π(10^7) in 10 units) and a job file
    from its sample.py (π(10^6) in 8 units), with no INPUT. Each map unit's count is the
    number of primes in its [START, END) by the sieve here; each result is π(x)."""
    shipped = images.workloads_dir() / "primes" / "job.json"
    assert json.loads(shipped.read_text())["image"] == images.workload_tag("primes") == primes_image
    jobfiles = {10**7: shipped, 10**6: sample_job(tmp_path / "million.json", 10**6, 8)}
    one, two = daemons.start(master, "one", slots=1), daemons.start(master, "two", slots=1)

    jobs = {}
    for upto, jobfile in jobfiles.items():
        submitted = cli("submit", str(jobfile), "--json", master=master)
        assert submitted.returncode == 0, submitted.stderr
        jobs[upto] = json.loads(submitted.stdout)["job"]
    table = is_prime_table(10**7)
    for upto, job in jobs.items():
        assert wait_job(master, job, JOB_WAIT)["state"] == "done"
        out = tmp_path / f"pi-{upto}.txt"
        downloaded = cli("results", job, "-o", str(out), master=master)
        assert downloaded.returncode == 0, downloaded.stderr
        assert out.read_text() == f"{PI[upto]}\n" == f"{table[: upto + 1].count(1)}\n"

        sweep = parse_jobfile(json.loads(jobfiles[upto].read_text())).sweep
        assert sweep is not None
        units = job_units(master, job)
        maps = [u for u in units if u["kind"] == "map"]
        assert len(maps) == len(sweep) and [u["kind"] for u in units].count("reduce") == 1
        for unit in maps:
            params = sweep.params(unit["index"])
            count = table[params["START"] : params["END"]].count(1)
            assert unit["state"] == "done" and unit["output"] == digest(f"{count}\n".encode()), (unit, params)
            (attempt,) = unit["attempts"]
            assert attempt["client"] in (one.client, two.client) and attempt["error"] is None, unit
    computed = {a["client"] for job in jobs.values() for u in job_units(master, job) for a in u["attempts"]}
    assert computed == {one.client, two.client}, "both volunteers computed units"


def test_primes_up_to_a_hundred_million_in_twenty_units(
    master: Any, daemons: Daemons, primes_image: str, tmp_path: Path
) -> None:
    """π(10^8) = 5,761,455, in 20 units of five million numbers, submitted with --wait."""
    jobfile = sample_job(tmp_path / "hundred-million.json", 10**8, 20)
    assert parse_jobfile(json.loads(jobfile.read_text())).sweep == RangeSweep(1, 10**8 + 1, 5_000_000)
    daemons.start(master, "solo", slots=2)
    submitted = cli("submit", str(jobfile), "--wait", "--json", master=master)
    assert submitted.returncode == 0, submitted.stderr
    reply = json.loads(submitted.stdout)
    assert reply["state"] == "done" and reply["units"]["done"] == 21  # 20 map units and the reduce
    out = tmp_path / "pi.txt"
    downloaded = cli("results", reply["job"], "-o", str(out), master=master)
    assert downloaded.returncode == 0, downloaded.stderr
    assert out.read_text() == f"{PI[10**8]}\n"
