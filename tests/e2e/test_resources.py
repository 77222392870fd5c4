"""Resource matching end to end: a real master, a real daemon of 2 slots, and units that need
more than it has."""

import time
from typing import Any

import pytest

from .cluster import Daemons, cli, job_status, submit, wait_for, wait_job

pytestmark = pytest.mark.slow


def test_a_unit_needing_4_cpus_never_reaches_a_2_slot_client_and_its_job_says_why(
    master: Any, daemons: Daemons, probe_image: str
) -> None:
    volunteer = daemons.start(master, "small", slots=2)
    resources = {"cpus": 4, "memory": "64MiB", "timeout": "30s"}
    job, _ = submit(master, {"name": "big", "image": probe_image, "resources": resources}, [b"echo big\n"])
    why = wait_for(lambda: (job_status(master, job)["unrunnable"] or {}).get("resource") == "cpus"
                   and job_status(master, job)["unrunnable"], 30, "the job to say why it waits")  # fmt: skip
    assert why["message"] == "a unit needs 4 cpus; the largest online client offers 2"
    shown = cli("status", job, master=master)
    assert shown.returncode == 0 and "a unit needs 4 cpus" in shown.stdout, shown
    time.sleep(2)  # the daemon keeps asking for work meanwhile
    assert job_status(master, job)["units"]["ready"] == 1 and not daemons.containers(volunteer.client)
    small, _ = submit(master, {"name": "small", "image": probe_image, "resources": resources | {"cpus": 1}},
                      [b"echo small\n"])  # fmt: skip
    assert wait_job(master, small, 90)["state"] == "done"  # the same daemon runs what fits it
    assert job_status(master, job)["units"]["ready"] == 1
