"""The scientist's Python API, which the CLI is a thin layer over::

    from dockercomp import Master
    master = Master("https://master.example:8443", token=...)
    job = master.submit("job.json", ["data.txt"])   # chunked here, only new chunks uploaded
    job.wait(progress=True)                          # a bar on a terminal and in Jupyter
    open("out", "wb").write(job.results())
    squares = list(master.map("dockercomp/square", ["python3", "/app/square.py"], range(100)).outputs())

``Master`` is a session with one master (its low-level calls answer with the master's JSON);
``Job`` follows one job, ``JobStatus`` is its state. A refusal is a MasterError saying why
(``bad_input`` when the fault is the caller's); a bad job file or input a ProtocolError."""

import io
import json
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import requests

from dockercomp import terminal
from dockercomp.protocol.chunking import chunk_files, chunk_inputs, chunk_stream
from dockercomp.protocol.errors import ProtocolError
from dockercomp.protocol.images import PIECE_SIZE
from dockercomp.protocol.integrity import digest
from dockercomp.protocol.jobfile import JobSpec, parse_jobfile
from dockercomp.protocol.transport import (
    Transport,
    ca_problem,
    certificate_problem,
    error_message,
    plain_http_refusal,
    printable,
)

TERMINAL_JOB = ("done", "failed", "cancelled")
UNIT_PAGE = 500  # units a request asks for when it walks a job's units


JobFile = str | os.PathLike[str] | dict[str, Any] | JobSpec
"""A job file: its path, its decoded JSON, or the JobSpec parse_jobfile made of it."""
Input = str | os.PathLike[str] | bytes
"""An input: a file's path, or the bytes themselves."""


class MasterError(Exception):
    """The master refused or failed a request; ``bad_input`` when the fault is the caller's."""

    def __init__(self, message: str, bad_input: bool = False) -> None:
        super().__init__(message)
        self.bad_input = bad_input


def default_server() -> str:
    host, port = os.environ.get("DC_HOST"), os.environ.get("DC_PORT")
    if host and port:
        return f"http://{host}:{port}"
    return "http://127.0.0.1:8080"


def read_jobfile(path: str | os.PathLike[str]) -> JobSpec:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except OSError as exc:
        raise ProtocolError(f"cannot read job file {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise ProtocolError(f"job file {path} is not valid JSON: {exc}") from None
    return parse_jobfile(data)


class Master(Transport):
    """A session with one master."""

    def __init__(
        self, server: str, timeout: float = 60.0, *, ca: str | None = None, insecure: bool = False, token: str = ""
    ) -> None:
        """``ca``: a PEM file of CA certificates to trust instead of the system's; ``insecure``
        allows plain http:// to a master not on loopback (https is verified all the same).
        Raises MasterError (bad input) before any request when either rule is broken."""
        super().__init__(server, timeout=timeout, token=token, ca=ca)
        refusal = None if insecure else plain_http_refusal(self.url)
        if refusal:
            raise MasterError(refusal, bad_input=True)
        problem = ca_problem(ca)
        if problem:
            raise MasterError(f"--ca {problem}", bad_input=True)

    @property
    def server(self) -> str:
        """The master's URL."""
        return self.url

    def _call(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        """One request; a refusal, a failure or a redirect (never followed: the token would
        go with it) is a MasterError whose text from the master has no control characters."""
        try:
            response = self.request(method, path, allow_redirects=False, **kwargs)
        except (requests.exceptions.MissingSchema, requests.exceptions.InvalidSchema, requests.exceptions.InvalidURL):
            message = f"{self.server} is not a master URL such as http://127.0.0.1:8080"
            raise MasterError(message, bad_input=True) from None
        except requests.exceptions.SSLError as exc:
            why = certificate_problem(exc)
            if why is None:
                raise MasterError(f"no TLS connection to the master at {self.server}: {str(exc)[:200]}") from None
            raise MasterError(self.certificate_refused(why)) from None
        except requests.RequestException as exc:
            raise MasterError(f"cannot reach the master at {self.server}: {exc.__class__.__name__}") from None
        if 300 <= response.status_code < 400:
            response.close()
            target = printable(response.headers.get("Location", ""))[:200] or "another address"
            raise MasterError(
                f"the master at {self.server} redirected {method} {printable(path)} to {target} "
                f"(HTTP {response.status_code}); redirects are not followed: give the master's own URL with --server"
            )
        if response.status_code >= 400:
            message = printable(error_message(response))
            if response.status_code == 401:
                message += "; give a token with --token or $DOCKERCOMP_TOKEN"
            raise MasterError(
                f"{message} (HTTP {response.status_code})",
                bad_input=response.status_code in (400, 401, 403, 404, 409, 413, 415, 422),
            )
        return response

    def has_blob(self, blob: str) -> bool:
        try:
            self._call("HEAD", f"/blobs/{blob}")
        except MasterError as exc:
            if exc.bad_input:  # 404: not there yet
                return False
            raise
        return True

    # -- jobs -----------------------------------------------------------------------------------
    def submit(
        self,
        job: JobFile,
        inputs: Sequence[Input] = (),
        *,
        wait: bool = False,
        hold: bool = False,
        chunk_on_master: bool = False,
        progress: bool = False,
    ) -> "Job":
        """Submit a job: ``job`` is a job file's path, its dict or a parsed JobSpec; ``inputs``
        its input files' paths or their bytes (none for a sweep), chunked here as the job file
        says and uploaded (only the chunks the master lacks), or sent whole when
        ``chunk_on_master``. With ``wait``, returns once the job ended; ``progress`` draws the
        upload's bar and the wait's (on a terminal or in Jupyter)."""
        spec = _spec(job)
        if spec.sweep is not None and inputs:
            raise ProtocolError(f"job {spec.name} is a sweep: its units take their parameters from it, not inputs")
        if spec.sweep is None and not inputs:
            raise ProtocolError("give the inputs to compute on (only a job with a sweep needs none)")
        sources = [_source(item, i) for i, item in enumerate(inputs)]
        if spec.sweep is not None:
            chunks: list[str] = []
        elif chunk_on_master:
            chunks = self.chunk_on_master(spec, sources)
        else:
            chunks = self.upload(_chunked(spec, sources), sum(map(_size, sources)), progress)
        submitted = Job(self, self.create_job(spec, chunks, hold=hold), len(spec.sweep or chunks))
        if wait and not hold:
            submitted.wait(progress=progress)
        return submitted

    def map(self, image: str, command: list[str], items: Iterable[Any], *, wait: bool = False,
            progress: bool = False, **job: Any) -> "Job":  # fmt: skip
        """One unit per item: each item (bytes; text, as UTF-8; anything else as its JSON) is
        its unit's ``/input/chunk``, and ``job.outputs()`` gives each unit's ``/output/result``
        in the items' order. ``job`` takes any other field of a job file (name, env, resources,
        redundancy, priority, mode, reduce); the name is ``map`` unless given."""
        spec = parse_jobfile({"name": "map", **job, "image": image, "command": command})
        if spec.sweep is not None:
            raise ProtocolError("map makes one unit per item: give items, not a sweep")
        pieces = [_item(item, i) for i, item in enumerate(items)]
        if not pieces:
            raise ProtocolError("map needs at least one item")
        submitted = Job(self, self.create_job(spec, self.upload(iter(pieces), sum(map(len, pieces)), progress)),
                        len(pieces))  # fmt: skip
        if wait:
            submitted.wait(progress=progress)
        return submitted

    def job(self, job_id: str) -> "Job":
        """A job submitted earlier (by this scientist, or any when the operator asks)."""
        return Job(self, job_id, None)

    def upload(self, chunks: Iterator[bytes], total: int, progress: bool = False) -> list[str]:
        """Upload each chunk the master does not have yet; their hashes, in order."""
        hashes, sent = [], 0
        with terminal.Bar("uploading", total, transfer=True, shown=progress) as bar:
            for chunk in chunks:
                blob = digest(chunk)
                if not self.has_blob(blob):
                    self._call("PUT", f"/blobs/{blob}", data=chunk)
                hashes.append(blob)
                sent += len(chunk)
                bar.update(min(sent, total), note=f"{len(hashes)} chunks")
        if not hashes:
            raise ProtocolError("the input is empty; there is nothing to compute")
        return hashes

    def upload_chunks(self, spec: JobSpec, paths: list[str], progress: bool = True) -> list[str]:
        """Chunk the input files here as the job file says and upload the chunks."""
        return self.upload(chunk_inputs(paths, spec.chunking), sum(map(os.path.getsize, paths)), progress)

    def chunk_on_master(self, spec: JobSpec, sources: Sequence[str | bytes]) -> list[str]:
        """Send each input whole and let the master chunk it (bytes, lines or records)."""
        if spec.chunking.by == "files":
            raise ProtocolError("the master chunks by bytes, lines or records: a job chunked by files is chunked here")
        params = {"by": spec.chunking.by, "separator": spec.chunking.separator}
        params["size"] = str(spec.chunking.size) if spec.chunking.size_unit == "count" else f"{spec.chunking.size}B"
        hashes: list[str] = []
        for source in sources:
            if isinstance(source, bytes):
                body = source
            else:
                with open(source, "rb") as f:
                    body = f.read()
            hashes.extend(c["hash"] for c in self._call("POST", "/chunks", params=params, data=body).json()["chunks"])
        return hashes

    def create_job(self, spec: JobSpec, chunks: list[str] | None = None, hold: bool = False) -> str:
        """Create the job on uploaded chunks; a sweep job takes none (the master makes its units).
        A held job starts nothing until released."""
        body: dict[str, Any] = {"job": spec.to_dict()}
        if chunks:
            body["chunks"] = chunks
        if hold:
            body["hold"] = True
        return self._call("POST", "/jobs", json=body).json()["job"]

    def status(self, job_id: str) -> dict[str, Any]:
        return self._call("GET", f"/jobs/{job_id}").json()

    def control(self, job_id: str, verb: str) -> dict[str, Any]:
        """Suspend, resume, hold, release or cancel a job; its status after."""
        return self._call("POST", f"/jobs/{job_id}/{verb}").json()

    def results(self, job_id: str, partial: bool = False) -> Iterator[bytes]:
        """The job's result as it downloads, a MiB at a time."""
        try:
            response = self._call("GET", f"/jobs/{job_id}/results", params={"partial": int(partial)}, stream=True)
        except MasterError as exc:
            if str(exc).endswith("(HTTP 409)"):  # not done yet: the operation failed, not the input (exit 1)
                exc.bad_input = False
            raise
        try:
            yield from response.iter_content(1 << 20)
        except requests.RequestException as exc:
            raise MasterError(f"the download from {self.server} broke off: {exc.__class__.__name__}") from None

    def unit_pages(self, job_id: str, offset: int = 0, limit: int = UNIT_PAGE) -> Iterator[list[dict[str, Any]]]:
        """A job's units with their attempts, in unit order from ``offset``, a page at a time."""
        while True:
            params = {"offset": offset, "limit": limit}
            page = self._call("GET", f"/jobs/{job_id}/units", params=params).json()["units"]
            if not page:
                return
            yield page
            offset += len(page)

    def unit(self, job_id: str, ref: str) -> dict[str, Any]:
        """One unit with its attempts, by its number or its id (JOB.NUMBER)."""
        number = ref.removeprefix(f"{job_id}.")
        if not number.isdigit() or len(number) > 9:
            raise MasterError(f"unit {printable(ref)[:40]!r} is not a unit's number or id ({job_id}.NUMBER)", True)
        page = next(self.unit_pages(job_id, int(number), 1), [])
        if not page or page[0]["index"] != int(number):
            raise MasterError(f"job {job_id} has no unit {number}", bad_input=True)
        return page[0]

    def units(self, job_id: str) -> list[dict[str, Any]]:
        """Every unit of a job with its attempts."""
        return [unit for page in self.unit_pages(job_id) for unit in page]

    def blob(self, blob: str) -> bytes:
        return self._call("GET", f"/blobs/{blob}").content

    def jobs(self) -> list[dict[str, Any]]:
        return self._call("GET", "/jobs").json()["jobs"]

    def clients(self) -> list[dict[str, Any]]:
        return self._call("GET", "/clients").json()["clients"]

    # -- keys (the operator's) -----------------------------------------------------------------
    def create_key(self, name: str, role: str, expires: str | None = None) -> dict[str, Any]:
        body = {"name": name, "role": role} | ({"expires": expires} if expires else {})
        return self._call("POST", "/keys", json=body).json()

    def keys(self) -> list[dict[str, Any]]:
        return self._call("GET", "/keys").json()["keys"]

    def revoke_key(self, name: str) -> int:
        return self._call("DELETE", f"/keys/{name}").json()["revoked"]

    # -- images ----------------------------------------------------------------------------------
    def images(self) -> list[dict[str, Any]]:
        return self._call("GET", "/images").json()["images"]

    def image(self, ref: str) -> dict[str, Any]:
        return self._call("GET", f"/images/{ref}").json()

    def push_image(self, exported: Any, progress: bool = True) -> tuple[dict[str, Any], int]:
        """Upload an exported image (client.delivery.ExportedImage): each layer the master
        lacks, in pieces it lacks, then the config; register it under its tags. Returns the
        master's record and the bytes sent."""
        sent = 0
        todo = [layer for layer in exported.layers if not self._has_layer(layer.digest)]
        total = sum(layer.size for layer in todo)
        with terminal.Bar("pushing", total, transfer=True, shown=progress) as bar:
            for layer in todo:
                pieces = []
                with open(layer.path, "rb") as f:
                    for piece in iter(lambda: f.read(PIECE_SIZE), b""):
                        blob = digest(piece)
                        if not self.has_blob(blob):
                            self._call("PUT", f"/blobs/{blob}", data=piece)
                            sent += len(piece)
                        pieces.append(blob)
                        bar.update(sent, note=layer.digest[7:19])
                self._call("PUT", f"/layers/{layer.digest}", json={"size": layer.size, "pieces": pieces})
        config = digest(exported.config)
        if not self.has_blob(config):
            self._call("PUT", f"/blobs/{config}", data=exported.config)
            sent += len(exported.config)
        body = {"config": config, "id": exported.id, "tags": list(exported.tags)}
        return self._call("POST", "/images", json=body).json(), sent

    def _has_layer(self, layer_digest: str) -> bool:
        try:
            self._call("GET", f"/layers/{layer_digest}")
        except MasterError as exc:
            if exc.bad_input:
                return False
            raise
        return True

    def add_signature(self, image_id: str, signed: Any) -> dict[str, Any]:
        body = {"key": signed.key, "public_key": signed.public_key, "signature": signed.signature}
        return self._call("POST", f"/images/{image_id}/signatures", json=body).json()


class JobFailed(MasterError):
    """The job ended without its result: failed or cancelled."""


@dataclass(frozen=True)
class JobStatus:
    """A job's state as the master sees it now: its units per state, its DRMAA2 state, and
    while no online volunteer can run its units, why (``unrunnable``)."""

    job: str
    name: str
    state: str
    drmaa2: str
    units: dict[str, int]
    unrunnable: dict[str, Any] | None = None  # {"message": …, and the shortfall's figures}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "JobStatus":
        why = data.get("unrunnable")
        return cls(data["job"], data.get("name", ""), data["state"], data.get("drmaa2", ""), dict(data["units"]),
                   why if isinstance(why, dict) else None)  # fmt: skip

    @property
    def finished(self) -> bool:
        return self.state in TERMINAL_JOB

    @property
    def total(self) -> int:
        return sum(self.units.values())

    def to_json(self) -> dict[str, Any]:
        return {"job": self.job, "name": self.name, "state": self.state, "drmaa2": self.drmaa2, "units": self.units,
                "unrunnable": self.unrunnable}  # fmt: skip

    def __str__(self) -> str:
        units = ", ".join(f"{n} {state}" for state, n in self.units.items() if n)
        drmaa2 = f" (DRMAA2 {self.drmaa2})" if self.drmaa2 else ""
        line = printable(f"job {self.job} ({self.name}): {self.state}{drmaa2}; units: {units or 'none'}")
        return f"{line}\nwaiting: {printable(self.unrunnable.get('message'))}" if self.unrunnable else line


class Job:
    """A job on a master: follow it, control it, fetch what it computed."""

    def __init__(self, master: Master, job_id: str, units: int | None) -> None:
        self.master, self.id = master, job_id
        self.size = units  # its map units, when known at submission

    def __repr__(self) -> str:
        return f"<Job {self.id} on {self.master.server}>"

    def status(self) -> JobStatus:
        return JobStatus.from_json(self.master.status(self.id))

    def wait(self, progress: bool = True, timeout: float | None = None, poll: float = 1.0) -> JobStatus:
        """Return the status once the job ended (done, failed or cancelled), drawing a bar of
        its units with their rate and time left when ``progress`` (on a terminal or in
        Jupyter); TimeoutError after ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        status = self.status()
        with terminal.Bar("computing", status.total, shown=progress) as bar:
            while True:
                units = status.units
                busy = f"{units.get('running', 0)} running, {units.get('failed', 0)} failed"
                bar.update(units.get("done", 0), status.total, status.state if status.finished else busy)
                if status.finished:
                    return status
                if deadline is not None and time.monotonic() + poll > deadline:
                    raise TimeoutError(f"job {self.id} is still {status.state} after {timeout:g} s")
                time.sleep(poll)
                status = self.status()

    def results(self, partial: bool = False, timeout: float | None = None) -> bytes:
        """The job's result (its reduce output, or its units' outputs one after another): once
        it is done, or with ``partial`` what is done now. JobFailed when it ended otherwise."""
        if not partial:
            status = self.wait(progress=False, timeout=timeout)
            if status.state != "done":
                raise JobFailed(f"job {self.id} ended {status.state}: {self.failure()}")
        return b"".join(self.master.results(self.id, partial))

    def outputs(self, poll: float = 1.0) -> Iterator[bytes]:
        """Each map unit's output in unit order, as soon as it and those before it are done
        (for ``map``: the items' results, in the items' order). JobFailed at a unit that
        failed, or at the first one left undone when the job was cancelled."""
        offset = 0
        while True:
            page = next(self.master.unit_pages(self.id, offset, UNIT_PAGE), [])
            for unit in page:
                if unit["kind"] != "map":
                    return
                if unit["state"] == "failed":
                    raise JobFailed(f"unit {unit['index']} of job {self.id} failed: {attempt_summary(unit)}")
                if unit["state"] != "done":
                    break
                yield self.master.blob(unit["output"]) if unit["output"] else b""
                offset += 1
            else:
                if len(page) < UNIT_PAGE:
                    return
                continue
            if unit["state"] == "cancelled":
                raise JobFailed(f"job {self.id} was cancelled before unit {unit['index']} was done")
            time.sleep(poll)

    def units(self, failed: bool = False) -> list[dict[str, Any]]:
        """The job's units with their attempts (each attempt's error kind, exit code and the
        end of its stderr); ``failed``: only the failed ones and those an attempt errored on."""
        return [u for page in self.master.unit_pages(self.id) for u in page if not failed or troubled(u)]

    def failure(self) -> str:
        """Why the job has no result: its counts, and the first failed unit's last error."""
        status = self.status()
        units = ", ".join(f"{n} {state}" for state, n in status.units.items() if n)
        failed = next((u for page in self.master.unit_pages(self.id) for u in page if u["state"] == "failed"), None)
        return units + (f"; unit {failed['index']}: {attempt_summary(failed)}" if failed else "")

    def control(self, verb: str) -> JobStatus:
        return JobStatus.from_json(self.master.control(self.id, verb))

    def suspend(self) -> JobStatus:
        """No more leases; running containers are paused where they run."""
        return self.control("suspend")

    def resume(self) -> JobStatus:
        return self.control("resume")

    def hold(self) -> JobStatus:
        """Start nothing until released (a job that has not started)."""
        return self.control("hold")

    def release(self) -> JobStatus:
        return self.control("release")

    def cancel(self) -> JobStatus:
        """Stop and remove its running containers; what finished stays (``results(partial=True)``)."""
        return self.control("cancel")


def troubled(unit: dict[str, Any]) -> bool:
    """A unit that failed, or that an attempt of errored, timed out or returned an invalid result."""
    return unit["state"] == "failed" or any(
        a["error"] or a["state"] in ("errored", "timed_out") or a["validity"] == "invalid" for a in unit["attempts"]
    )


def attempt_summary(unit: dict[str, Any]) -> str:
    """The last attempt that went wrong: its error kind, exit code and the last line of its stderr."""
    wrong = [a for a in unit["attempts"] if a["error"] or a["state"] in ("errored", "timed_out")]
    if not wrong:
        return "no attempt reported an error"
    last = wrong[-1]
    said = [last["error"] or last["state"]]
    if last.get("exit_code") is not None:
        said.append(f"exit code {last['exit_code']}")
    tail = (last.get("stderr_tail") or "").strip().splitlines()
    if tail:
        said.append(f"stderr: {tail[-1][:200]}")
    return printable(", ".join(said)) + f" ({len(unit['attempts'])} attempts)"


def _spec(job: JobFile) -> JobSpec:
    if isinstance(job, JobSpec):
        return job
    return read_jobfile(job) if isinstance(job, str | os.PathLike) else parse_jobfile(job)


def _source(item: object, i: int) -> str | bytes:
    if isinstance(item, bytes | bytearray | memoryview):
        return bytes(item)
    if isinstance(item, str | os.PathLike):
        path = os.fspath(item)
        if not os.path.isfile(path):
            raise ProtocolError(f"input {path} is not a readable file")
        return path
    raise TypeError(f"inputs[{i}] is a {type(item).__name__}: give a file's path or bytes")


def _size(source: str | bytes) -> int:
    return len(source) if isinstance(source, bytes) else os.path.getsize(source)


def _chunked(spec: JobSpec, sources: list[str | bytes]) -> Iterator[bytes]:
    """The chunks of the inputs, one after another, as the job file's chunking cuts them."""
    if spec.chunking.by == "files":
        if any(isinstance(s, bytes) for s in sources):
            raise ProtocolError("a job chunked by files takes the files' paths as inputs, not bytes")
        yield from chunk_files([str(s) for s in sources], spec.chunking)
        return
    for source in sources:
        with io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb") as stream:
            yield from chunk_stream(stream, spec.chunking)


def _item(item: object, i: int) -> bytes:
    """A map item as its unit's input: bytes as they are, text as UTF-8, else its JSON."""
    if isinstance(item, bytes | bytearray | memoryview):
        return bytes(item)
    if isinstance(item, str):
        return item.encode()
    try:
        return json.dumps(item, separators=(",", ":")).encode()
    except (TypeError, ValueError) as exc:
        raise TypeError(f"item {i} is neither bytes, text nor JSON: {exc}") from None
