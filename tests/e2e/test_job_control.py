"""Job control end to end: the scientist's commands against a real master, a real daemon,
and Docker itself as the witness: containers paused after suspend, running after resume,
gone after cancel; a held job starts nothing until released."""

import json
import time
from pathlib import Path
from typing import Any

import pytest

from .cluster import Daemons, cli, clients, job_status, partial_results, submit, wait_for, wait_job

pytestmark = pytest.mark.slow


def probe_job(image: str, **sections: Any) -> dict[str, Any]:
    resources = {"cpus": 1, "memory": "64MiB", "timeout": "60s"}
    return {"name": "control", "image": image, "resources": resources,
            "redundancy": {"replicas": 1, "quorum": 1, "max_attempts": 2}} | sections  # fmt: skip


def states(daemons: Daemons, client: str) -> list[str]:
    """What Docker says of this client's containers."""
    return sorted(c["State"] for c in daemons.containers(client))


def reported(master: Any) -> list[dict[str, Any]]:
    """The containers the master's clients reported in their last heartbeat."""
    return [c for client in clients(master) for c in client["containers"]]


def control(master: Any, verb: str, job: str) -> dict[str, Any]:
    done = cli(verb, job, "--json", master=master)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_suspend_resume_and_cancel_as_docker_sees_them(master: Any, daemons: Daemons, probe_image: str) -> None:
    """Two units that sleep 4 s are suspended for 6 s: Docker reports their containers paused,
    the other units are not started and the sleepers do not finish; resumed, they run again
    and finish. The two that hang are cancelled: their containers are removed, and what was
    done stays downloadable."""
    volunteer = daemons.start(master, "volunteer", slots=2)
    chunks = [b"sleep 4 first\n", b"sleep 4 second\n", b"hang third\n", b"hang fourth\n"]
    job, _ = submit(master, probe_job(probe_image), chunks)
    wait_for(lambda: states(daemons, volunteer.client) == ["running", "running"], 60, "two containers to run")

    status = control(master, "suspend", job)
    assert (status["state"], status["drmaa2"]) == ("suspended", "Suspended")
    wait_for(lambda: states(daemons, volunteer.client) == ["paused", "paused"], 30, "Docker to report them paused")
    wait_for(lambda: [c["state"] for c in reported(master)] == ["paused", "paused"], 15, "the heartbeat to say so")
    time.sleep(6)  # longer than the sleepers need: paused, they do not finish, and nothing else starts
    assert states(daemons, volunteer.client) == ["paused", "paused"]
    assert job_status(master, job)["units"]["done"] == 0

    assert control(master, "resume", job)["state"] == "running"
    wait_for(lambda: job_status(master, job)["units"]["done"] == 2, 60, "the sleepers to finish after resume")
    wait_for(lambda: states(daemons, volunteer.client) == ["running", "running"], 60, "the hanging units to run")

    status = control(master, "cancel", job)
    assert (status["state"], status["drmaa2"], status["units"]["cancelled"]) == ("cancelled", "Failed", 2)
    wait_for(lambda: not daemons.containers(volunteer.client), 30, "Docker to have no container of the job left")
    assert partial_results(master, job) == b"SLEEP 4 FIRST\nSLEEP 4 SECOND\n"
    refused = cli("resume", job, master=master)
    assert refused.returncode == 2 and "cancelled" in refused.stderr, refused


def test_a_held_job_starts_nothing_until_released(
    master: Any, daemons: Daemons, probe_image: str, tmp_path: Path
) -> None:
    jobfile = tmp_path / "job.json"
    jobfile.write_text(json.dumps(probe_job(probe_image, chunking={"by": "lines", "size": 1})))
    data = tmp_path / "input.txt"
    data.write_bytes(b"echo one\necho two\n")
    volunteer = daemons.start(master, "volunteer", slots=2)
    submitted = cli("submit", str(jobfile), str(data), "--hold", "--json", master=master)
    assert submitted.returncode == 0, submitted.stderr
    job = json.loads(submitted.stdout)["job"]
    status = control(master, "status", job)
    assert (status["state"], status["drmaa2"], status["units"]["suspended"]) == ("held", "QueuedHeld", 2)
    time.sleep(3)  # the daemon asks for work all along
    assert job_status(master, job)["units"]["suspended"] == 2 and not daemons.containers(volunteer.client)
    assert control(master, "release", job)["drmaa2"] in ("Queued", "Running")
    assert wait_job(master, job, 90)["state"] == "done"
    assert partial_results(master, job) == b"ECHO ONE\nECHO TWO\n"
