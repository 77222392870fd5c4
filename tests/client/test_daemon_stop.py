"""Stopping the client daemon (once: finish or release; twice: at once), the master's abort
command, the status a volunteer sees, and `dockercomp client` itself in a real process with
Docker."""

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dockercomp.client import status
from tests.sim import SimClient, create_job, job_units, wait_for, wait_job

from .daemon_stub import WAIT, attempts_in, attempts_of, image_id, job, results

# -- stopping -------------------------------------------------------------------------------


def test_a_first_stop_releases_the_queue_and_lets_running_units_finish(
    fast_master: Any, start_daemon: Callable
) -> None:
    job_id = create_job(fast_master.url, job(), [b"u%d\n" % i for i in range(6)])
    daemon = start_daemon(fast_master, gated=True)
    wait_for(lambda: len(daemon.runner.running) == 2 and len(daemon.daemon.slots.queued()) == 2, WAIT,
             "two running and two queued")  # fmt: skip
    daemon.daemon.stop()
    wait_for(lambda: len(attempts_in(fast_master, job_id, "released")) == 2, WAIT, "the queued grants released")
    assert daemon.thread.is_alive()  # the running units are not abandoned
    daemon.runner.gate.set()
    assert daemon.exit_code() == 0
    assert len(attempts_in(fast_master, job_id, "succeeded")) == 2  # finished and uploaded before the exit
    assert daemon.runner.aborted == [] and len(daemon.daemon.spool) == 0
    assert status.read_status(daemon.daemon.work_dir)["state"] == "stopped"  # type: ignore[index]


def test_running_units_past_the_stop_timeout_are_stopped_and_released(fast_master: Any, start_daemon: Callable) -> None:
    job_id = create_job(fast_master.url, job(), [b"slow\n"])
    daemon = start_daemon(fast_master, gated=True, slots=1, stop_timeout=0.3)
    wait_for(lambda: daemon.runner.running, WAIT, "the unit running")
    daemon.daemon.stop()
    assert daemon.exit_code() == 0
    assert len(daemon.runner.aborted) == 1
    assert len(attempts_in(fast_master, job_id, "released")) == 1


def test_a_second_stop_kills_the_containers_and_releases_at_once(fast_master: Any, start_daemon: Callable) -> None:
    job_id = create_job(fast_master.url, job(), [b"u%d\n" % i for i in range(4)])
    daemon = start_daemon(fast_master, gated=True, stop_timeout=60)
    wait_for(lambda: len(daemon.runner.running) == 2, WAIT, "two running")
    daemon.daemon.stop()
    daemon.daemon.stop()
    began = time.monotonic()
    assert daemon.exit_code() == 130
    assert time.monotonic() - began < 5
    assert sorted(daemon.runner.aborted) == sorted(s.attempt for s in daemon.runner.runs)
    released = attempts_in(fast_master, job_id, "released")
    assert len(released) == 4  # the two that ran and the two queued
    units = {u["state"] for u in job_units(fast_master.url, job_id)}
    assert units == {"ready"}  # all of them are other clients' to take now


def test_an_abort_command_stops_the_attempt_and_nothing_is_reported(fast_master: Any, start_daemon: Callable) -> None:
    job_id = create_job(fast_master.url, job(redundancy={"replicas": 2, "quorum": 1}), [b"raced\n"])
    daemon = start_daemon(fast_master, gated=True, slots=1, prefetch=False)
    wait_for(lambda: daemon.runner.running, WAIT, "our replica running")
    other = SimClient(fast_master.url, name="faster")
    other.register()
    other.work_once()  # the other replica decides the unit: ours is no longer wanted
    wait_for(lambda: daemon.runner.aborted, WAIT, "the abort to reach the container")
    wait_for(lambda: daemon.daemon.counts["aborted"] == 1, WAIT, "the attempt dropped")
    assert wait_job(fast_master.url, job_id, WAIT)["state"] == "done"
    ours = [a for a in attempts_of(fast_master, job_id) if a["client"] == daemon.daemon.identity.client]  # type: ignore[union-attr]
    assert [a["state"] for a in ours] == ["released"] and len(daemon.daemon.spool) == 0


# -- what a volunteer sees ---------------------------------------------------------------------


def test_client_status_shows_what_runs(fast_master: Any, start_daemon: Callable, tmp_path: Path) -> None:
    job_id = create_job(fast_master.url, job(), [b"watched\n"])
    daemon = start_daemon(fast_master, gated=True, slots=1)
    wait_for(lambda: daemon.runner.running, WAIT, "the unit running")
    wait_for(lambda: (s := status.read_status(daemon.daemon.work_dir)) and s["running"], WAIT, "the status file")
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKERCOMP_")}

    def client_status() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "dockercomp", "client", "status", "--work-dir", str(tmp_path / "client")],
            capture_output=True, text=True, env=env, timeout=60,
        )  # fmt: skip

    shown = client_status()
    assert shown.returncode == 0, shown.stderr
    client = daemon.daemon.identity.client  # type: ignore[union-attr]
    for expected in (client, "test-client", fast_master.url, "1 busy of 1", job_id, f"{job_id}.0",
                     image_id(fast_master), "64.0MiB", "running"):  # fmt: skip
        assert expected in shown.stdout, (expected, shown.stdout)
    daemon.runner.gate.set()
    daemon.daemon.stop()
    assert daemon.exit_code() == 0
    shown = client_status()
    assert shown.returncode == 0 and "not running" in shown.stdout and "1 succeeded" in shown.stdout, shown.stdout


# -- the real thing ---------------------------------------------------------------------------


def test_the_cli_daemon_runs_a_job_in_docker_and_stops_cleanly_on_sigterm(
    fast_master: Any, wordfreq_image: str, docker_client: Any, tmp_path: Path
) -> None:
    """`dockercomp client` as a volunteer runs it: the real DockerRunner, signals, exit code."""
    spec = json.loads((Path(__file__).parents[2] / "workloads" / "wordfreq" / "job.json").read_text())
    spec.pop("description", None)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKERCOMP_")}
    push = subprocess.run(
        [sys.executable, "-m", "dockercomp", "images", "push", wordfreq_image, "--server", fast_master.url,
         "--token", fast_master.token],
        capture_output=True, text=True, env=env, timeout=300, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert push.returncode == 0, push.stderr
    job_id = create_job(fast_master.url, spec, [b"the cat and the hat\n", b"The cat sat\n"])
    log_path = tmp_path / "client.log"
    work_dir = tmp_path / "volunteer"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "dockercomp", "client", "--server", fast_master.url, "--work-dir", str(work_dir),
             "--slots", "2", "--memory", "1GiB", "--name", "volunteer", "--allow-unsigned"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
        )  # fmt: skip
    try:
        assert wait_job(fast_master.url, job_id, 60)["state"] == "done", log_path.read_text()
        assert results(fast_master, job_id) == b"the\t3\ncat\t2\nand\t1\nhat\t1\nsat\t1\n"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log_path.read_text()
    assert "Traceback" not in text and "client daemon stopped: exit 0" in text, text
    client = json.loads((work_dir / "identity.json").read_text())["client"]
    assert not docker_client.containers.list(all=True, filters={"label": f"dockercomp.client={client}"})
