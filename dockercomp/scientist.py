"""The scientist's side of the master's API: upload inputs, create jobs, follow them, fetch
results. Used by the CLI; usable from Python as it is."""

import json
import os
import sys
import time
from collections.abc import Iterator
from typing import IO, Any

import requests

from dockercomp.protocol.chunking import chunk_inputs
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


def read_jobfile(path: str) -> JobSpec:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except OSError as exc:
        raise ProtocolError(f"cannot read job file {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise ProtocolError(f"job file {path} is not valid JSON: {exc}") from None
    return parse_jobfile(data)


class Progress:
    """A one-line progress bar on a terminal; silent when the stream is not one."""

    def __init__(self, label: str, total: int, unit: str = "", stream: IO[str] = sys.stderr) -> None:
        self.label, self.total, self.unit, self.stream = label, max(total, 1), unit, stream
        self.enabled = stream.isatty()
        self.done = 0

    def update(self, done: int, note: str = "") -> None:
        self.done = done
        if not self.enabled:
            return
        width = 30
        filled = int(width * min(done, self.total) / self.total)
        bar = "#" * filled + "-" * (width - filled)
        self.stream.write(f"\r{self.label} [{bar}] {done}/{self.total}{self.unit} {note}".ljust(79)[:120])
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\n")


class Scientist(Transport):
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

    def upload_chunks(self, spec: JobSpec, paths: list[str], progress: bool = True) -> list[str]:
        """Chunk the inputs locally and upload each chunk the master does not have yet."""
        total = sum(os.path.getsize(p) for p in paths)
        bar = Progress("uploading", total // 1024 or 1, " KiB") if progress else None
        hashes, sent = [], 0
        for chunk in chunk_inputs(paths, spec.chunking):
            blob = digest(chunk)
            if not self.has_blob(blob):
                self._call("PUT", f"/blobs/{blob}", data=chunk)
            hashes.append(blob)
            sent += len(chunk)
            if bar:
                bar.update(min(sent, total) // 1024, f"{len(hashes)} chunks")
        if bar:
            bar.close()
        if not hashes:
            raise ProtocolError("the input is empty; there is nothing to compute")
        return hashes

    def chunk_on_master(self, spec: JobSpec, paths: list[str]) -> list[str]:
        """Send each input whole and let the master chunk it (bytes, lines or records)."""
        params = {"by": spec.chunking.by, "separator": spec.chunking.separator}
        params["size"] = str(spec.chunking.size) if spec.chunking.size_unit == "count" else f"{spec.chunking.size}B"
        hashes: list[str] = []
        for path in paths:
            with open(path, "rb") as f:
                reply = self._call("POST", "/chunks", params=params, data=f.read()).json()
            hashes.extend(c["hash"] for c in reply["chunks"])
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

    def wait(self, job_id: str, progress: bool = True, poll: float = 1.0) -> dict[str, Any]:
        status = self.status(job_id)
        total = sum(status["units"].values())
        bar = Progress("computing", total, " units") if progress else None
        while status["state"] not in TERMINAL_JOB:
            if bar:
                units = status["units"]
                bar.total = max(sum(units.values()), 1)
                bar.update(units["done"], f"running {units['running']} failed {units['failed']}")
            time.sleep(poll)
            status = self.status(job_id)
        if bar:
            bar.update(status["units"]["done"], status["state"])
            bar.close()
        return status

    def results(self, job_id: str, partial: bool = False) -> Iterator[bytes]:
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

    def units(self, job_id: str) -> list[dict[str, Any]]:
        """Every unit of a job with its attempts, fetched page by page."""
        units: list[dict[str, Any]] = []
        while True:
            page = self._call("GET", f"/jobs/{job_id}/units", params={"offset": len(units)}).json()["units"]
            if not page:
                return units
            units += page

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
        bar = Progress("pushing", total // 1024 or 1, " KiB") if progress else None
        for layer in todo:
            pieces = []
            with open(layer.path, "rb") as f:
                for piece in iter(lambda: f.read(PIECE_SIZE), b""):
                    blob = digest(piece)
                    if not self.has_blob(blob):
                        self._call("PUT", f"/blobs/{blob}", data=piece)
                        sent += len(piece)
                    pieces.append(blob)
                    if bar:
                        bar.update(sent // 1024, layer.digest[7:19])
            self._call("PUT", f"/layers/{layer.digest}", json={"size": layer.size, "pieces": pieces})
        config = digest(exported.config)
        if not self.has_blob(config):
            self._call("PUT", f"/blobs/{config}", data=exported.config)
            sent += len(exported.config)
        if bar:
            bar.close()
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
