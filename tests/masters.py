"""Real masters for tests: ``dockercomp server`` as its own process on 127.0.0.1 with a free
port and a fresh data directory, stopped with SIGTERM, its exit and log checked."""

import hashlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

from dockercomp.protocol.integrity import digest

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
    token: str = ""  # the operator's token, from DATA_DIR/operator.token
    verify: bool | str = True  # the CA file its certificate is checked against, when it serves HTTPS

    @property
    def api(self) -> str:
        return f"{self.url}/api/v1"

    @property
    def headers(self) -> dict[str, str]:
        """The operator's Authorization header."""
        return {"Authorization": f"Bearer {self.token}"}

    def key(self, role: str, name: str = "", **extra: Any) -> str:
        """A new token of ``role`` made by the operator (named ``name``, else after the role and a count)."""
        name = name or f"{role}-{time.monotonic_ns()}"
        body = {"name": name, "role": role, **extra}
        response = requests.post(f"{self.api}/keys", json=body, headers=self.headers, timeout=10, verify=self.verify)
        assert response.status_code == 201, response.text
        return response.json()["token"]

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


def start_master(tmp: Path, *flags: str, data_dir: Path | None = None, verify: bool | str = True) -> MasterProcess:
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
    master = MasterProcess(url, proc, data_dir, log_path, args, verify=verify)
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{master.api}/health", timeout=2, verify=verify).status_code == 200:
                token_file = data_dir / "operator.token"
                master.token = token_file.read_text().strip() if token_file.exists() else ""
                return master
        except requests.ConnectionError:
            pass
        time.sleep(0.02)
    master.stop()
    pytest.fail(f"master at {url} does not answer:\n{master.log()}")


def push_stub_image(master: MasterProcess, tag: str = "dockercomp/sim:latest", content: bytes = b"sim") -> str:
    """Push an image record without Docker: a one-file layer and a config naming it. Enough
    for simulated clients, which never load it; real daemons get real images (tests/e2e)."""
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w") as tar:
        info = tarfile.TarInfo("stub.txt")
        info.size = len(content)
        tar.addfile(info, io.BytesIO(content))
    data = layer.getvalue()
    diff_id = f"sha256:{hashlib.sha256(data).hexdigest()}"
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                         "rootfs": {"type": "layers", "diff_ids": [diff_id]}}).encode()  # fmt: skip
    put = {"headers": master.headers | {"Content-Type": "application/octet-stream"}, "timeout": 10,
           "verify": master.verify}  # fmt: skip
    for blob in (data, config):
        assert requests.put(f"{master.api}/blobs/{digest(blob)}", data=blob, **put).status_code == 201
    layer_body = {"size": len(data), "pieces": [digest(data)]}
    response = requests.put(f"{master.api}/layers/{diff_id}", json=layer_body, headers=master.headers, timeout=10,
                            verify=master.verify)  # fmt: skip
    assert response.status_code == 201, response.text
    response = requests.post(f"{master.api}/images", json={"config": digest(config), "tags": [tag]},
                             headers=master.headers, timeout=10, verify=master.verify)  # fmt: skip
    assert response.status_code == 201, response.text
    return response.json()["id"]


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

    def start(
        self,
        *flags: str,
        data_dir: Path | None = None,
        open_enrollment: bool = True,
        token: str = "",
        verify: bool | str = True,
    ) -> MasterProcess:
        """A master; by default anyone may register with it (simulated clients do) and it holds a
        stub image tagged dockercomp/sim (see push_stub_image). ``token``: the operator's, for a
        master that shares the store of one started before (only the first makes one)."""
        flags = (*flags, "--open-enrollment") if open_enrollment else flags
        master = start_master(self.tmp / f"m{len(self.started)}", *flags, data_dir=data_dir, verify=verify)
        self.started.append(master)
        master.token = master.token or token
        OPERATOR_TOKENS[master.url] = master.token
        if not token:
            push_stub_image(master)
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
OPERATOR_TOKENS: dict[str, str] = {}  # master URL -> its operator's token, for helpers given only a URL


def auth(url: str) -> dict[str, str]:
    """The operator's Authorization header for the master at ``url`` (or at the start of it)."""
    token = next((t for u, t in OPERATOR_TOKENS.items() if url.startswith(u)), "")
    return {"Authorization": f"Bearer {token}"} if token else {}
