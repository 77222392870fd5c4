"""A volunteer pauses their machine: a real master, a real daemon process, real containers.
``dockercomp client pause`` freezes the running unit's container (Docker itself says it is
paused), the daemon leases nothing more (the master's units stay ready), ``client status``
says so; ``client resume`` lets it go on and the job completes with the right outputs."""

import time
from typing import Any

import docker
import pytest

from .cluster import Daemons, cli, job_status, job_units, partial_results, submit, wait_for, wait_job

pytestmark = pytest.mark.slow

JOB_WAIT = 120.0


def probe_job(image: str) -> dict[str, Any]:
    return {
        "name": "pause-probe", "image": image, "resources": {"cpus": 1, "memory": "64MiB", "timeout": "60s"},
        "redundancy": {"replicas": 1, "quorum": 1, "max_attempts": 2},
    }  # fmt: skip


def docker_states(docker_client: docker.DockerClient, daemons: Daemons, client: str) -> list[str]:
    """State.Status of the client's containers, as `docker inspect` says."""
    states = []
    for container in daemons.containers(client):
        try:
            states.append(docker_client.api.inspect_container(container["Id"])["State"]["Status"])
        except docker.errors.NotFound:  # it ended meanwhile
            continue
    return states


def attempts(master: Any, job: str) -> list[dict[str, Any]]:
    return [a for u in job_units(master, job) for a in u["attempts"]]


def test_a_paused_client_keeps_its_unit_paused_leases_nothing_and_completes_once_resumed(
    master: Any, daemons: Daemons, probe_image: str, docker_client: docker.DockerClient
) -> None:
    chunks = [b"sleep 3 unit %d\n" % i for i in range(4)]
    daemon = daemons.start(master, "paused-volunteer", slots=1)
    job, _ = submit(master, probe_job(probe_image), chunks)
    wait_for(lambda: "running" in docker_states(docker_client, daemons, daemon.client), 60, "a unit to run")

    paused = cli("client", "pause", "--work-dir", str(daemon.work_dir))
    assert paused.returncode == 0, paused.stderr
    assert "paused: 1 running unit(s) paused" in paused.stdout, paused.stdout
    assert docker_states(docker_client, daemons, daemon.client) == ["paused"]
    shown = cli("client", "status", "--work-dir", str(daemon.work_dir))
    assert "state    paused by the volunteer" in shown.stdout, shown.stdout

    held = len(attempts(master, job))
    ready = job_status(master, job)["units"]["ready"]
    assert held <= 2 and ready >= 2, "one unit runs, at most one more was leased ahead"
    time.sleep(4.0)  # over a dozen heartbeats and lease rounds of this master
    assert len(attempts(master, job)) == held, "a paused client leases nothing"
    assert job_status(master, job)["units"]["ready"] == ready, "the master's units stay ready"
    assert docker_states(docker_client, daemons, daemon.client) == ["paused"], "still paused, not lost"
    assert daemon.status()["state"] == "paused"

    again = cli("client", "pause", "--work-dir", str(daemon.work_dir))
    assert again.returncode == 0 and "paused already" in again.stdout, again.stdout

    resumed = cli("client", "resume", "--work-dir", str(daemon.work_dir))
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed" in resumed.stdout and "still paused" not in resumed.stdout, resumed.stdout
    assert wait_job(master, job, JOB_WAIT)["state"] == "done"
    assert partial_results(master, job) == b"".join(c.upper() for c in chunks)
    assert all(a["state"] == "succeeded" and a["client"] == daemon.client for a in attempts(master, job))
    assert "client paused: by the volunteer" in daemon.log() and "client resumed" in daemon.log()


def test_a_paused_client_stopped_releases_its_paused_unit_at_once_and_starts_paused_again(
    master: Any, daemons: Daemons, probe_image: str, docker_client: docker.DockerClient
) -> None:
    """A paused unit cannot finish: SIGTERM releases it at once (not after stop_timeout). The
    pause is the work directory's, so the daemon started again is still paused."""
    chunks = [b"sleep 3 unit %d\n" % i for i in range(2)]
    daemon = daemons.start(master, "stopped-paused", slots=1)
    job, _ = submit(master, probe_job(probe_image), chunks)
    wait_for(lambda: "running" in docker_states(docker_client, daemons, daemon.client), 60, "a unit to run")
    assert cli("client", "pause", "--work-dir", str(daemon.work_dir)).returncode == 0

    began = time.monotonic()
    assert daemon.stop() == 0
    assert time.monotonic() - began < 10, "the paused unit was not waited for (stop_timeout is 15s)"
    assert not daemons.containers(daemon.client)
    assert "released" in [a["state"] for a in attempts(master, job)]
    assert job_status(master, job)["units"]["ready"] == 2

    again = daemons.start(master, daemon.name, slots=1, work_dir=daemon.work_dir, wait=False)
    again.client = daemon.client
    wait_for(lambda: again.status().get("state") == "paused" and again.status().get("pid") == again.proc.pid,
             30, "the daemon to start paused")  # fmt: skip
    time.sleep(2.0)
    assert job_status(master, job)["units"]["ready"] == 2, "started paused: it leases nothing"
    assert cli("client", "resume", "--work-dir", str(again.work_dir)).returncode == 0
    assert wait_job(master, job, JOB_WAIT)["state"] == "done"


def test_a_suspended_job_has_its_container_paused_and_resumed_by_the_master(
    master: Any, daemons: Daemons, probe_image: str, docker_client: docker.DockerClient
) -> None:
    """The master's side of the same freeze: the scientist suspends the job, the heartbeat
    brings ``pause``, Docker says the container is paused; resume, and the job completes."""
    import requests

    chunks = [b"sleep 3 unit %d\n" % i for i in range(2)]
    daemon = daemons.start(master, "suspended-job", slots=1)
    job, _ = submit(master, probe_job(probe_image), chunks)
    wait_for(lambda: "running" in docker_states(docker_client, daemons, daemon.client), 60, "a unit to run")

    def control(verb: str) -> None:
        response = requests.post(f"{master.api}/jobs/{job}/{verb}", headers=master.headers, timeout=10)
        assert response.status_code == 200, response.text

    control("suspend")
    wait_for(lambda: docker_states(docker_client, daemons, daemon.client) == ["paused"], 10, "the container to pause")
    wait_for(lambda: [a["phase"] for a in daemon.status()["running"]] == ["paused"], 5, "the status to say paused")
    assert daemon.status()["state"] == "running", "the client itself is not paused"
    time.sleep(1.0)
    assert docker_states(docker_client, daemons, daemon.client) == ["paused"]
    control("resume")
    assert wait_job(master, job, JOB_WAIT)["state"] == "done"
    assert partial_results(master, job) == b"".join(c.upper() for c in chunks)
