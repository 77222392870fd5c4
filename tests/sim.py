"""A simulated volunteer that speaks the client protocol over real HTTP (requests + msgpack),
and the few scientist calls tests need to give it work.

The computation is a pure function of a unit's inputs (``compute``), so a test knows every
right answer without running a container. Modes:

- ``honest``: computes and reports the right output;
- ``liar``: reports a wrong output (different for every client and attempt, so liars never
  agree with each other);
- ``vanisher``: leases one batch and is never heard from again.
"""

import itertools
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import msgpack
import requests

from dockercomp.protocol.integrity import digest, verify
from tests.masters import auth

MSGPACK = "application/msgpack"
API = "/api/v1"
T = TypeVar("T")


class ApiError(Exception):
    """The master answered with an error status; ``message`` is its {"error": ...}."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message


def pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False)


def compute(kind: str, inputs: list[bytes]) -> bytes:
    """The right output of a unit: a map unit upper-cases its chunk; the reduce unit counts
    the lines and bytes of all map outputs, in order, and names their hash."""
    if kind == "reduce":
        joined = b"".join(inputs)
        return b"%d lines, %d bytes, %s\n" % (joined.count(b"\n"), len(joined), digest(joined).encode())
    return b"".join(inputs).upper()


def job_file(name: str = "sim", **sections: Any) -> dict[str, Any]:
    """A job file for simulated clients; keyword arguments replace its sections."""
    return {"name": name, "image": "dockercomp/sim", "command": ["sim"], **sections}


def wait_for(check: Callable[[], T | None], timeout: float, what: str, every: float = 0.05) -> T:
    """Poll ``check`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(every)


# -- scientist side ------------------------------------------------------------------------


def put_blob(url: str, data: bytes) -> str:
    blob = digest(data)
    response = requests.put(f"{url}{API}/blobs/{blob}", data=data, headers=auth(url), timeout=30)
    assert response.status_code == 201, response.text
    return blob


def create_job(url: str, job: dict[str, Any], chunks: Iterable[bytes]) -> str:
    """Upload every chunk, then create the job; its id."""
    hashes = [put_blob(url, chunk) for chunk in chunks]
    response = requests.post(f"{url}{API}/jobs", json={"job": job, "chunks": hashes}, headers=auth(url), timeout=30)
    assert response.status_code == 201, response.text
    return response.json()["job"]


def job_status(url: str, job_id: str) -> dict[str, Any]:
    response = requests.get(f"{url}{API}/jobs/{job_id}", headers=auth(url), timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def job_units(url: str, job_id: str) -> list[dict[str, Any]]:
    units: list[dict[str, Any]] = []
    while True:
        response = requests.get(
            f"{url}{API}/jobs/{job_id}/units", params={"offset": len(units)}, headers=auth(url), timeout=30
        )
        assert response.status_code == 200, response.text
        page = response.json()["units"]
        if not page:
            return units
        units += page


def wait_job(url: str, job_id: str, timeout: float = 60.0) -> dict[str, Any]:
    """Wait until the job ends; its status."""

    def ended() -> dict[str, Any] | None:
        status = job_status(url, job_id)
        return status if status["state"] in ("done", "failed", "cancelled") else None

    return wait_for(ended, timeout, f"job {job_id} to end")


# -- the volunteer ---------------------------------------------------------------------------


class SimClient:
    """One simulated client daemon. ``urls`` may name several masters sharing one store: each
    request goes to the next one in turn."""

    def __init__(
        self,
        urls: str | list[str],
        name: str = "sim",
        mode: str = "honest",
        batch: int = 2,
        enroll: str = "",
        heartbeat_every: float = 0.5,
        idle_wait: float = 0.05,
        arch: str = "x86_64",
        slots: int = 2,
    ) -> None:
        assert mode in ("honest", "liar", "vanisher"), mode
        self.urls = itertools.cycle([urls] if isinstance(urls, str) else urls)
        self.name, self.mode, self.batch, self.enroll = name, mode, batch, enroll
        self.heartbeat_every, self.idle_wait, self.arch, self.slots = heartbeat_every, idle_wait, arch, slots
        self.http = requests.Session()
        self.id = self.token = ""
        self.cache: dict[str, bytes] = {}
        self.leased: list[dict[str, Any]] = []  # every grant ever received
        self.acks: list[dict[str, Any]] = []  # every ack for a result
        self.errors: list[str] = []  # what went wrong in run(); empty for a healthy run
        self.vanished = False

    # -- one call of the protocol each -----------------------------------------------------
    def call(self, path: str, body: Any, method: str = "POST") -> Any:
        headers = {"Content-Type": MSGPACK, "Accept": MSGPACK}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        url = f"{next(self.urls)}{API}{path}"
        response = self.http.request(method, url, data=pack(body), headers=headers, timeout=30)
        reply = unpack(response.content) if response.content else None
        if response.status_code >= 400:
            raise ApiError(response.status_code, reply.get("error", "") if isinstance(reply, dict) else str(reply))
        return reply

    def register(self, slots: int | None = None) -> dict[str, Any]:
        """Register, with the volunteer token when given (else as a stranger: open enrollment)."""
        body = {"name": self.name, "slots": slots or self.slots, "host": {"cores": 2, "os": "linux", "arch": self.arch}}
        self.token = self.enroll
        reply = self.call("/clients/register", body)
        self.id, self.token = reply["client"], reply["token"]
        return reply

    def heartbeat(self, running: Iterable[dict[str, Any]] = ()) -> dict[str, Any]:
        containers = [
            {"container": g["attempt"][:12], "attempt": g["attempt"], "unit": g["unit"], "job": g["job"],
             "image": g["image"], "cpus": g["cpus"], "memory": g["memory"], "started_at": time.time()}
            for g in running
        ]  # fmt: skip
        return self.call("/clients/heartbeat", {"slots": self.slots, "busy": len(containers), "containers": containers})

    def lease(self, max_units: int | None = None, **resources: Any) -> list[dict[str, Any]]:
        """Up to ``max_units`` grants; free cpus default to one per unit asked for."""
        n = self.batch if max_units is None else max_units
        body = {"max_units": n, "cpus": float(max(n, 1)), **resources}
        grants = self.call("/lease", body)["attempts"]
        self.leased += grants
        return grants

    def fetch(self, ref: dict[str, Any]) -> bytes:
        """An input by its URL (or as sent in the grant), verified against its hash; each hash
        is downloaded once."""
        if ref.get("data") is not None:
            verify(ref["data"], ref["hash"], f"input {ref['name']}")
            return bytes(ref["data"])
        if ref["hash"] not in self.cache:
            headers = {"Authorization": f"Bearer {self.token}"}
            response = self.http.get(f"{next(self.urls)}{ref['url']}", headers=headers, timeout=30)
            if response.status_code != 200:
                raise ApiError(response.status_code, response.text)
            verify(response.content, ref["hash"], f"input {ref['name']}")
            self.cache[ref["hash"]] = response.content
        return self.cache[ref["hash"]]

    def output(self, grant: dict[str, Any]) -> bytes:
        right = compute(grant["kind"], [self.fetch(ref) for ref in grant["inputs"]])
        if self.mode == "liar":
            return b"wrong answer from %s for %s\n" % (self.id.encode(), grant["attempt"].encode())
        return right

    def report(self, grant: dict[str, Any], output: bytes | None = None) -> dict[str, Any]:
        output = self.output(grant) if output is None else output
        return {"attempt": grant["attempt"], "status": "succeeded", "output_hash": digest(output),
                "output": output, "exit_code": 0, "runtime": 0.01}  # fmt: skip

    def upload(self, reports: list[dict[str, Any]]) -> list[dict[str, Any]]:
        acks = self.call("/results", {"results": reports})["acks"]
        self.acks += acks
        return acks

    def release(self, attempts: list[str]) -> list[dict[str, Any]]:
        return self.call("/release", {"attempts": attempts})["acks"]

    # -- the daemon loop --------------------------------------------------------------------
    def work_once(self) -> int:
        """Lease a batch, compute it and upload the results in one request; how many units."""
        grants = self.lease()
        if grants and self.mode == "vanisher":
            self.vanished = True
            return 0
        if grants:
            self.upload([self.report(g) for g in grants])
        return len(grants)

    def run(self, stop: threading.Event) -> None:
        """Work until ``stop`` is set (or until vanished); errors are kept in ``errors``."""
        try:
            if not self.token:
                self.register()
            last_beat = 0.0
            while not stop.is_set() and not self.vanished:
                if time.monotonic() - last_beat > self.heartbeat_every:
                    self.heartbeat()
                    last_beat = time.monotonic()
                if not self.work_once():
                    stop.wait(self.idle_wait)
        except Exception as exc:
            self.errors.append(repr(exc))


class Fleet:
    """Simulated clients running in threads: ``with Fleet(clients): ...`` stops them at the end
    and fails if any of them hit an error."""

    def __init__(self, clients: list[SimClient]) -> None:
        self.clients = clients
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=c.run, args=(self.stop,), daemon=True) for c in clients]

    def __enter__(self) -> "Fleet":
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(30)
        stuck = [c.name for c, t in zip(self.clients, self.threads, strict=True) if t.is_alive()]
        errors = {c.name: c.errors for c in self.clients if c.errors}
        if exc[0] is None:
            assert not stuck, f"clients did not stop: {stuck}"
            assert not errors, f"clients hit errors: {errors}"
