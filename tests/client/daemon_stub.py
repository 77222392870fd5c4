"""A stub Runner and helpers for testing the client daemon against a real master: the stub
computes each unit from its /input files on the host (sim.compute, so every right answer is
known), can fail in every way a container can, or runs until the test lets it finish."""

import os
import threading
from pathlib import Path
from typing import Any

import requests

from dockercomp.client.daemon import Daemon
from dockercomp.client.runner import Runner, RunOutcome, RunSpec
from dockercomp.client.settings import ClientSettings
from dockercomp.protocol.messages import ContainerInfo, ErrorKind
from tests.sim import compute, job_file, job_units

WAIT = 20.0
RESOURCES = {"cpus": 1, "memory": "64MiB", "timeout": "60s"}


class StubRunner(Runner):
    """Runs a unit by reading its inputs. A chunk that starts with a marker fails that way:
    FAIL (exit 3), OOM, TIMEOUT, IMAGE, DOCKER, NORESULT (exit 0, no result). While ``gate``
    is clear, every run waits for it (or for cancel, then ABORTED)."""

    def __init__(self, gated: bool = False) -> None:
        self.gate = threading.Event()
        if not gated:
            self.gate.set()
        self.lock = threading.Lock()
        self.runs: list[RunSpec] = []
        self.running: dict[str, RunSpec] = {}
        self.most_at_once = 0
        self.aborted: list[str] = []
        self.leftovers: list[str | None] = []

    def run(self, spec: RunSpec, cancel: threading.Event) -> RunOutcome:
        with self.lock:
            self.runs.append(spec)
            self.running[spec.attempt] = spec
            self.most_at_once = max(self.most_at_once, len(self.running))
        try:
            while not self.gate.wait(0.01):
                if cancel.is_set():
                    with self.lock:
                        self.aborted.append(spec.attempt)
                    return RunOutcome(ErrorKind.ABORTED, stderr_tail="aborted")
            names = sorted(os.listdir(spec.input_dir))
            inputs = [Path(spec.input_dir, name).read_bytes() for name in names]
            failure = self._failure(b"".join(inputs))
            if failure is not None:
                return failure
            kind = "map" if names == ["chunk"] else "reduce"
            Path(spec.output_dir, "result").write_bytes(compute(kind, inputs))
            return RunOutcome(None, exit_code=0, runtime=0.01, peak_memory=1 << 20)
        finally:
            with self.lock:
                del self.running[spec.attempt]

    @staticmethod
    def _failure(data: bytes) -> RunOutcome | None:
        if data.startswith(b"FAIL"):
            return RunOutcome(ErrorKind.EXIT_NONZERO, exit_code=3, stderr_tail="Traceback...\nValueError: boom\n")
        if data.startswith(b"OOM"):
            return RunOutcome(ErrorKind.OOM, exit_code=137, stderr_tail="killed: out of memory")
        if data.startswith(b"TIMEOUT"):
            return RunOutcome(ErrorKind.TIMEOUT, stderr_tail="killed after the unit's timeout of 60s")
        if data.startswith(b"IMAGE"):
            return RunOutcome(ErrorKind.IMAGE_MISSING, stderr_tail="image dockercomp/sim is not here")
        if data.startswith(b"DOCKER"):
            return RunOutcome(ErrorKind.DOCKER_UNAVAILABLE, stderr_tail="no Docker engine answers")
        if data.startswith(b"NORESULT"):
            return RunOutcome(None, exit_code=0)
        return None

    def containers(self) -> list[ContainerInfo]:
        with self.lock:
            return [
                ContainerInfo(s.attempt[:12], s.attempt, s.unit, s.job, s.image, s.cpus, s.memory, "running", 1.0)
                for s in self.running.values()
            ]

    def available_images(self) -> list[str]:
        return ["dockercomp/sim:latest"]

    def remove_leftovers(self, client: str | None = None) -> int:
        self.leftovers.append(client)
        return 0


class Running:
    """A daemon run() in a thread; ``exit_code()`` joins it."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.code: int | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        self.code = self.daemon.run()

    def exit_code(self, timeout: float = WAIT) -> int | None:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the daemon did not stop"
        return self.code

    @property
    def runner(self) -> StubRunner:
        assert isinstance(self.daemon.runner, StubRunner)
        return self.daemon.runner


class Daemons:
    """Daemons with stub runners, started in threads and stopped at once by ``close`` if they
    still run: ``start(master, slots=2, gated=True, work_dir=...)``."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.started: list[Running] = []

    def start(self, master: Any, *, gated: bool = False, runner: StubRunner | None = None, **kw: Any) -> Running:
        options: dict[str, Any] = {
            "server": master.url, "work_dir": str(self.tmp_path / "client"), "slots": 2, "memory": "1GiB",
            "backoff_base": 0.05, "backoff_max": 0.3, "status_interval": 0.2, "request_timeout": 5.0,
            "name": "test-client", "allow_unsigned": True,
        } | kw  # fmt: skip
        settings = ClientSettings(**options)
        settings.validate()
        running = Running(Daemon(settings, runner or StubRunner(gated)))
        self.started.append(running)
        return running

    def close(self) -> None:
        for running in self.started:
            if running.thread.is_alive():
                running.runner.gate.set()
                running.daemon.stop()
                running.daemon.stop()
                running.exit_code()


def attempts_of(master: Any, job: str) -> list[dict[str, Any]]:
    return [a | {"unit": u["id"]} for u in job_units(master.url, job) for a in u["attempts"]]


def attempts_in(master: Any, job: str, state: str) -> list[dict[str, Any]]:
    return [a for a in attempts_of(master, job) if a["state"] == state]


def results(master: Any, job: str) -> bytes:
    response = requests.get(f"{master.api}/jobs/{job}/results", headers=master.headers, timeout=10)
    assert response.status_code == 200, response.text
    return response.content


def image_id(master: Any, ref: str = "dockercomp/sim:latest") -> str:
    """The id of an image the master holds (jobs name their image by it)."""
    response = requests.get(f"{master.api}/images/{ref}", headers=master.headers, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()["id"]


def job(name: str = "sim", *, reduce: bool = False, **sections: Any) -> dict[str, Any]:
    spec = job_file(name, resources=RESOURCES, **sections)
    if reduce:
        spec["reduce"] = {"command": ["sim-reduce"]}
    return spec
