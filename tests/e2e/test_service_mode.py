"""Service mode end to end: a real master, real daemon processes, real warm containers. The
same job in batch mode and in service mode gives the same bytes, unit by unit and as a whole,
for two shipped workloads, with fewer containers started than units; and a unit whose
function raises, one that hangs past its timeout and one that runs out of memory are each
reported with their own kind while the pool goes on with the others."""

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import docker
import pytest
import requests

from dockercomp.client import images
from dockercomp.client.runner import LABEL_JOB
from dockercomp.protocol.chunking import chunk_inputs
from dockercomp.protocol.jobfile import parse_jobfile
from tests.fixtures.docker import workload_image

from .cluster import Daemons, job_units, sample_text, submit, wait_job, wordfreq_expected

pytestmark = pytest.mark.slow

JOB_WAIT = 150.0
SERVE = ["python3", "/app/serve.py"]


def shipped_job(name: str, **sections: Any) -> dict[str, Any]:
    return json.loads((images.workloads_dir() / name / "job.json").read_text()) | sections


def results(master: Any, job: str) -> bytes:
    response = requests.get(f"{master.api}/jobs/{job}/results", headers=master.headers, timeout=30)
    assert response.status_code == 200, response.text
    return response.content


def starts(docker_client: docker.DockerClient, job: str, since: float) -> int:
    """Containers started for ``job`` (by its label) since then, as the engine's events say."""
    events = docker_client.events(
        since=int(since) - 1, until=int(time.time()) + 1, decode=True,
        filters={"type": "container", "event": "start", "label": f"{LABEL_JOB}={job}"},
    )  # fmt: skip
    return sum(1 for _ in events)


def run_job(master: Any, job: dict[str, Any], chunks: list[bytes]) -> tuple[str, float]:
    began = time.time()
    job_id, _ = submit(master, job, chunks)
    assert wait_job(master, job_id, JOB_WAIT)["state"] == "done"
    return job_id, began


def sample_fasta(path: Path, size: str) -> Path:
    with open(path, "wb") as out:
        script = images.workloads_dir() / "kmers" / "sample.py"
        subprocess.run([sys.executable, str(script), "--size", size, "--seed", "3"], stdout=out, check=True)
    return path


@pytest.mark.parametrize("workload", ["wordfreq", "kmers"])
def test_service_mode_gives_the_bytes_of_batch_mode_with_fewer_containers(
    workload: str, master: Any, daemons: Daemons, docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    image = workload_image(docker_client, workload)
    if workload == "wordfreq":
        data = sample_text(tmp_path / "sample.txt", "96KiB", seed=4)
        chunking = {"by": "lines", "size": "8KiB"}
    else:
        data = sample_fasta(tmp_path / "sample.fa", "96KiB")
        chunking = {"by": "records", "size": "8KiB", "separator": ">"}
    batch_job = shipped_job(workload, image=image, chunking=chunking)
    service_job = batch_job | {"name": f"{workload}-service", "mode": "service", "command": SERVE}
    chunks = list(chunk_inputs([str(data)], parse_jobfile(batch_job).chunking))
    assert len(chunks) >= 8
    daemons.start(master, "warm", slots=2)

    batch, batch_began = run_job(master, batch_job, chunks)
    batch_starts = starts(docker_client, batch, batch_began)
    service, service_began = run_job(master, service_job, chunks)
    service_starts = starts(docker_client, service, service_began)

    assert results(master, service) == results(master, batch)
    if workload == "wordfreq":
        assert results(master, service) == wordfreq_expected(data)
    by_index = {u["index"]: u["output"] for u in job_units(master, batch)}
    units = job_units(master, service)
    assert {u["index"]: u["output"] for u in units} == by_index  # each unit's output hash, map and reduce
    assert len(units) == len(chunks) + 1
    assert batch_starts == len(units)  # one container per unit
    assert service_starts <= 2 + 1 < len(units)  # a warm container per slot at most, and the batch reduce


def test_a_unit_that_raises_hangs_or_runs_out_of_memory_fails_with_its_kind_and_the_pool_goes_on(
    master: Any, daemons: Daemons, docker_client: docker.DockerClient, probe_image: str
) -> None:
    chunks = [b"echo a\n", b"raise\n", b"echo b\n", b"hang\n", b"echo c\n", b"oom\n", b"echo d\n", b"echo e\n"]
    job = {
        "name": "probe-service", "image": probe_image, "mode": "service",
        "command": ["python3", "/app/probe.py", "serve"],
        "redundancy": {"replicas": 1, "quorum": 1, "max_attempts": 1},
        "resources": {"cpus": 1, "memory": "48MiB", "timeout": "3s"},
    }  # fmt: skip
    daemons.start(master, "warm", slots=1)
    began = time.time()
    job_id, _ = submit(master, job, chunks)
    assert wait_job(master, job_id, JOB_WAIT)["state"] == "failed"

    units = {u["index"]: u for u in job_units(master, job_id)}
    failures = {1: ("exit_nonzero", "ValueError: probe: raised as asked"), 3: ("timeout", "timeout of 3s"),
                5: ("oom", "out of memory")}  # fmt: skip
    for index in range(len(chunks)):
        unit = units[index]
        (attempt,) = unit["attempts"]
        if index in failures:
            kind, text = failures[index]
            assert (unit["state"], attempt["error"]) == ("failed", kind), unit
            assert text in attempt["stderr_tail"], unit
        else:
            assert unit["state"] == "done" and attempt["state"] == "succeeded", unit
    assert units[1]["attempts"][0]["exit_code"] == 1
    partial = requests.get(f"{master.api}/jobs/{job_id}/results", params={"partial": 1}, headers=master.headers,
                           timeout=30).content  # fmt: skip
    assert partial == b"".join(c.upper() for i, c in enumerate(chunks) if i not in failures)
    # the first container, then one after the hang and one after the out-of-memory kill at most
    assert starts(docker_client, job_id, began) <= 3
