"""What the end-to-end tests drive and check with: real client daemons (each ``python -m
dockercomp client`` in a process of its own, with its own work directory and log file,
running units in real containers of the local Docker engine), the scientist's calls to the
master, and the wordfreq answers computed here without Docker."""

import contextlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import docker
import docker.errors
import requests

from dockercomp.client import images, status
from dockercomp.client.runner import LABEL_CLIENT
from dockercomp.protocol.integrity import digest
from tests.publish import publish, signing_key

STARTED_CLIENTS: set[str] = set()  # the client ids of every daemon this test session started
START_TIMEOUT = 30.0
STOP_TIMEOUT = 30.0
# Short intervals, so a daemon notices a master, retries and reports within a second.
CLIENT_CONFIG = """\
[client]
backoff_base = 0.2
backoff_max = 2.0
status_interval = 0.3
stop_timeout = 15.0
request_timeout = 10.0
"""


def wait_for(check: Any, timeout: float, what: str, every: float = 0.1) -> Any:
    """Poll ``check`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(every)


@dataclass
class DaemonProcess:
    """One ``dockercomp client`` process; its log (stderr) goes to a file."""

    name: str
    work_dir: Path
    log_path: Path
    args: list[str]
    proc: subprocess.Popen[bytes]
    client: str = ""  # its client id, once registered
    killed: bool = False
    docker_host: str = ""  # the engine it runs containers on, when not the local one

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def status(self) -> dict[str, Any]:
        return status.read_status(str(self.work_dir)) or {}

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """SIGTERM, then wait: the exit code, or None when it did not stop (it is killed then)."""
        if self.alive:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                return None
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL: no handler, no finally; its containers keep running."""
        self.killed = True
        self.proc.kill()
        self.proc.wait()


class Daemons:
    """The daemons one test started. ``close`` stops those still running with SIGTERM and
    fails when one did not exit 0, logged a traceback, or left a container behind."""

    def __init__(self, tmp: Path, docker_client: docker.DockerClient) -> None:
        self.tmp = tmp
        self.docker = docker_client
        self.started: list[DaemonProcess] = []
        self.config = tmp / "client.toml"
        self.config.write_text(CLIENT_CONFIG)

    def start(
        self,
        master: Any,
        name: str = "",
        *,
        slots: int = 2,
        work_dir: Path | None = None,
        wait: bool = True,
        docker_host: str = "",
        flags: tuple[str, ...] = (),
    ) -> DaemonProcess:
        """Start a daemon for ``master``; with ``wait``, return once it is registered and
        leasing (its status file names its client id). ``docker_host``: another engine to run
        on (an empty one, say); ``flags``: more command-line flags."""
        n = len(self.started)
        name = name or f"volunteer-{n}"
        work_dir = work_dir or self.tmp / f"client-{n}"
        log_path = self.tmp / f"client-{n}-{time.monotonic_ns()}.log"
        args = [sys.executable, "-m", "dockercomp", "client", "--server", master.url, "--work-dir", str(work_dir)]
        args += ["--slots", str(slots), "--name", name, "--config", str(self.config), "--trust", signing_key()[1]]
        args += flags
        env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKERCOMP_")}
        if docker_host:
            env["DOCKER_HOST"] = docker_host
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        daemon = DaemonProcess(name, work_dir, log_path, args, proc, docker_host=docker_host)
        self.started.append(daemon)
        if wait:
            self.wait_registered(daemon)
        return daemon

    def restart(self, master: Any, old: DaemonProcess) -> DaemonProcess:
        """The same client again: same name, slots and work directory (so the same identity)."""
        assert not old.alive, "stop or kill the daemon first"
        slots = int(old.args[old.args.index("--slots") + 1])
        return self.start(master, old.name, slots=slots, work_dir=old.work_dir)

    def wait_registered(self, daemon: DaemonProcess) -> str:
        def registered() -> str | None:
            if not daemon.alive:
                raise AssertionError(f"daemon {daemon.name!r} exited with {daemon.proc.returncode}:\n{daemon.log()}")
            current = daemon.status()
            if current.get("state") == "running" and current.get("pid") == daemon.proc.pid:
                return str(current.get("client") or "")
            return None

        daemon.client = wait_for(registered, START_TIMEOUT, f"daemon {daemon.name!r} to register")
        STARTED_CLIENTS.add(daemon.client)
        return daemon.client

    def containers(self, client: str) -> list[dict[str, Any]]:
        return labelled_containers(self.docker, client)

    def close(self) -> None:
        failures = []
        for daemon in self.started:
            if daemon.killed:
                continue
            code = daemon.stop()
            log = daemon.log()
            if code != 0:
                failures.append(f"daemon {daemon.name!r} exited with {code} after SIGTERM:\n{log[-4000:]}")
            elif "Traceback" in log:
                failures.append(f"daemon {daemon.name!r} logged a traceback:\n{log[-8000:]}")
        for daemon in self.started:
            if not daemon.client:
                continue
            engine = docker.DockerClient(base_url=daemon.docker_host) if daemon.docker_host else self.docker
            left = labelled_containers(engine, daemon.client)
            for container in left:
                remove_container(engine, container)
            if left:
                failures.append(f"client {daemon.client} left {len(left)} container(s): {describe(left)}")
            if daemon.docker_host:
                engine.close()
        assert not failures, "\n".join(failures)


# -- containers ----------------------------------------------------------------------------------


def labelled_containers(docker_client: docker.DockerClient, client: str | None = None) -> list[dict[str, Any]]:
    """``docker ps -a --filter label=dockercomp.client[=CLIENT]``: one dict per container, as
    the engine lists them (no inspection, so a container removed meanwhile is no error)."""
    label = LABEL_CLIENT if client is None else f"{LABEL_CLIENT}={client}"
    return docker_client.api.containers(all=True, filters={"label": label})


def remove_container(docker_client: docker.DockerClient, container: dict[str, Any]) -> None:
    with contextlib.suppress(docker.errors.NotFound):
        docker_client.api.remove_container(container["Id"], v=True, force=True)


def describe(containers: list[dict[str, Any]]) -> list[str]:
    return [
        f"{c['Id'][:12]} ({c.get('State')}, {LABEL_CLIENT}={(c.get('Labels') or {}).get(LABEL_CLIENT)})"
        for c in containers
    ]


# -- the master's scientist API ---------------------------------------------------------------


def job_status(master: Any, job: str) -> dict[str, Any]:
    response = requests.get(f"{master.api}/jobs/{job}", headers=master.headers, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def wait_job(master: Any, job: str, timeout: float) -> dict[str, Any]:
    """Wait until the job ends; its final status."""

    def ended() -> dict[str, Any] | None:
        current = job_status(master, job)
        return current if current["state"] in ("done", "failed", "cancelled") else None

    try:
        return wait_for(ended, timeout, f"job {job} to end", every=0.2)
    except AssertionError as exc:
        open_units = [
            f"unit {u['id']} {u['state']}: "
            + ", ".join(f"{a['client']} {a['state']} {a['error'] or ''}" for a in u["attempts"])
            for u in job_units(master, job)
            if u["state"] not in ("done", "failed", "cancelled")
        ]
        raise AssertionError(f"{exc}; it is {job_status(master, job)}\n" + "\n".join(open_units)) from None


def job_units(master: Any, job: str) -> list[dict[str, Any]]:
    units: list[dict[str, Any]] = []
    while True:
        params = {"offset": len(units)}
        response = requests.get(f"{master.api}/jobs/{job}/units", params=params, headers=master.headers, timeout=10)
        assert response.status_code == 200, response.text
        page = response.json()["units"]
        if not page:
            return units
        units += page


def clients(master: Any) -> list[dict[str, Any]]:
    response = requests.get(f"{master.api}/clients", headers=master.headers, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()["clients"]


def cli(*args: str, master: Any = None, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """Run ``dockercomp ARGS`` as the scientist would; with ``master``, against it with the
    operator's token (and for ``submit JOBFILE``, the job's image pushed and signed first)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DOCKERCOMP_", "DC_"))}
    if master is not None:
        if args[0] == "submit":
            publish(master, json.loads(Path(args[1]).read_text())["image"])
        args = (*args, "--server", master.url, "--token", master.token)
    return subprocess.run(
        [sys.executable, "-m", "dockercomp", *args], capture_output=True, text=True, timeout=timeout, env=env
    )


# -- wordfreq, computed here ---------------------------------------------------------------------


def wordfreq_module(name: str) -> ModuleType:
    """A module of the wordfreq workload (``words``, ``sample``), loaded from its folder."""
    path = images.workloads_dir() / "wordfreq" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"wordfreq_{name}", path)
    assert spec is not None and spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def wordfreq_expected(text: Path) -> bytes:
    """What the wordfreq job must output for ``text``: every word's count, most frequent first,
    ties by word; counted here in one pass with the workload's own word rules."""
    counts: Counter[str] = wordfreq_module("words").count_file(str(text))
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return "".join(f"{word}\t{count}\n" for word, count in ranked).encode()


def sample_text(path: Path, size: str, seed: int = 1) -> Path:
    """Write the wordfreq workload's sample text (sample.py) to ``path``."""
    script = images.workloads_dir() / "wordfreq" / "sample.py"
    with open(path, "wb") as out:
        subprocess.run([sys.executable, str(script), "--size", size, "--seed", str(seed)], stdout=out, check=True)
    return path


def submit(master: Any, job: dict[str, Any], chunks: list[bytes]) -> tuple[str, list[str]]:
    """Upload each chunk and create the job from a job file as given (extra keys and all),
    its image pushed and signed first; the job id and the chunks' hashes, in unit order."""
    publish(master, job["image"])
    hashes = []
    for chunk in chunks:
        blob = digest(chunk)
        response = requests.put(f"{master.api}/blobs/{blob}", data=chunk, headers=master.headers, timeout=30)
        assert response.status_code == 201, response.text
        hashes.append(blob)
    body = {"job": job, "chunks": hashes}
    response = requests.post(f"{master.api}/jobs", json=body, headers=master.headers, timeout=30)
    assert response.status_code == 201, response.text
    return response.json()["job"], hashes


def partial_results(master: Any, job: str) -> bytes:
    response = requests.get(f"{master.api}/jobs/{job}/results", params={"partial": 1}, headers=master.headers,
                            timeout=30)  # fmt: skip
    assert response.status_code == 200, response.text
    return response.content


def wordfreq_map_output(chunk: bytes, scratch: Path) -> bytes:
    """What wordfreq's map step must write for one chunk: ``word<TAB>count`` sorted by word."""
    scratch.write_bytes(chunk)
    counts = wordfreq_module("words").count_file(str(scratch))
    return "".join(f"{word}\t{count}\n" for word, count in sorted(counts.items())).encode()
