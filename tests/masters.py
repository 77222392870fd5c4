"""Real masters for tests: ``dockercomp server`` as its own process on 127.0.0.1 with a free
port and a fresh data directory, stopped with SIGTERM, its exit and log checked."""

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

LISTENING = re.compile(r"master listening on (https?://[0-9.]+:\d+)")
START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0


@dataclass
class MasterProcess:
    """A master running as a subprocess; its stderr goes to a file so it can be read later."""

    url: str
    proc: subprocess.Popen[bytes]
    data_dir: Path
    log_path: Path
    args: list[str] = field(default_factory=list)

    @property
    def api(self) -> str:
        return f"{self.url}/api/v1"

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int | None:
        """SIGTERM, then wait: the exit code, or None when it did not stop (it is killed then)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                return None
        return self.proc.returncode


def start_master(
    tmp: Path, *flags: str, data_dir: Path | None = None, verify: bool | str = True
) -> MasterProcess:
    """Start ``dockercomp server`` on 127.0.0.1 with a free port; return once it answers
    (``verify``: the CA file its certificate is checked against, when it serves HTTPS)."""
    data_dir = data_dir or tmp / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    tmp.mkdir(parents=True, exist_ok=True)
    log_path = tmp / f"master-{time.monotonic_ns()}.log"
    args = [sys.executable, "-m", "dockercomp", "server", "--host", "127.0.0.1", "--port", "0"]
    args += ["--data-dir", str(data_dir), *flags]
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKERCOMP_")}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
    deadline = time.monotonic() + START_TIMEOUT
    url = None
    while time.monotonic() < deadline:
        text = log_path.read_text(errors="replace")
        match = LISTENING.search(text)
        if match:
            url = match.group(1)
            break
        if proc.poll() is not None:
            pytest.fail(f"master exited with {proc.returncode} at start:\n{text}")
        time.sleep(0.02)
    if url is None:
        proc.kill()
        pytest.fail(f"master did not start within {START_TIMEOUT}s:\n{log_path.read_text(errors='replace')}")
    master = MasterProcess(url, proc, data_dir, log_path, args)
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{master.api}/jobs", timeout=2, verify=verify).status_code == 200:
                return master
        except requests.ConnectionError:
            pass
        time.sleep(0.02)
    master.stop()
    pytest.fail(f"master at {url} does not answer:\n{master.log()}")


def check_clean_exit(master: MasterProcess) -> None:
    code = master.stop()
    log = master.log()
    assert code is not None, f"master {master.url} did not stop within {STOP_TIMEOUT}s of SIGTERM"
    assert code == 0, f"master exited with {code} after SIGTERM:\n{log[-4000:]}"
    assert "Traceback" not in log, f"master logged a traceback:\n{log[-8000:]}"


class Masters:
    """The masters one fixture started; ``close`` stops them all, then fails if any of them did
    not exit with 0 on SIGTERM or logged a traceback."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.started: list[MasterProcess] = []

    def start(self, *flags: str, data_dir: Path | None = None) -> MasterProcess:
        master = start_master(self.tmp / f"m{len(self.started)}", *flags, data_dir=data_dir)
        self.started.append(master)
        return master

    def close(self) -> None:
        failures = []
        for master in self.started:
            try:
                check_clean_exit(master)
            except AssertionError as exc:
                failures.append(str(exc))
        assert not failures, "\n".join(failures)


MasterFactory = Callable[..., MasterProcess]
