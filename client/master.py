"""The daemon's HTTP session with the master: msgpack calls with a bearer token, retried with
exponential backoff and jitter while the master is down or failing (connection errors,
timeouts, 5xx, 503, 429), never when it refused the request (4xx) nor when its TLS certificate
was refused (another name, an unknown CA, expired): those answers would not change.

Every call is safe to repeat: leases are only lost work, results and releases are idempotent
on the master, blobs are content-addressed. So a call whose reply was lost is simply sent again.

The master may be compromised, so no redirect is followed (it could send the daemon to an
address on the volunteer's own network): a 3xx is MasterUntrusted, never retried. A download
stops past the bytes its caller allows, and the master's error texts are stripped of control
characters before they reach a log or the status view.
"""

import email.utils
import json
import logging
import os
import random
import re
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any, BinaryIO, TypeVar

import requests

from dockercomp.protocol import codec
from dockercomp.protocol.errors import ProtocolError
from dockercomp.protocol.integrity import check_hash
from dockercomp.protocol.messages import (
    API,
    AckBatch,
    Heartbeat,
    HeartbeatReply,
    LeaseReply,
    LeaseRequest,
    Message,
    RegisterReply,
    RegisterRequest,
    ReleaseRequest,
    ResultBatch,
)
from dockercomp.protocol.quantities import format_size
from dockercomp.protocol.transport import Transport, certificate_problem, error_message, printable

from .errors import Cancelled, MasterError, MasterRefused, MasterUnavailable, MasterUntrusted, NotRegistered

log = logging.getLogger(__name__)
M = TypeVar("M", bound=Message)
_TOKEN = re.compile(r"[!-~]{1,256}")  # what a bearer token in a header may be (the master takes no longer one)
PIECE = 1 << 20  # a download cut off mid-piece loses that piece only: the retry resumes after the last one
# the most of a reply (an error's too) read from a master: past any it sends (a lease of a reduce unit over
# MAX_INPUTS map outputs is about 130 MiB), so a master cannot make the daemon hold more
MAX_REPLY = 256 << 20
# what a master that is down, restarting or overloaded looks like; anything else is an answer
_TRANSIENT = (
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
    requests.exceptions.ContentDecodingError,
)


class Backoff:
    """Exponential backoff with jitter: the n-th wait is a random point in the upper half of
    ``min(cap, base * 2**(n-1))``, so clients that lost the same master do not return in step."""

    def __init__(self, base: float = 1.0, cap: float = 60.0) -> None:
        self.base, self.cap = base, cap

    def delay(self, failures: int) -> float:
        ceiling = min(self.cap, self.base * 2 ** min(max(failures - 1, 0), 30))
        return ceiling * random.uniform(0.5, 1.0)


@dataclass
class Identity:
    """Who this daemon is to one master; kept in the work directory so a restart keeps its
    client id (and the master its reliability record) instead of registering anew."""

    server: str
    client: str
    token: str

    @classmethod
    def load(cls, path: str, server: str) -> "Identity | None":
        """The identity saved for ``server``, or None (none saved, another master, unreadable)."""
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
            identity = cls(str(data["server"]), str(data["client"]), str(data["token"]))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring the unreadable identity file %s: %s", path, exc)
            return None
        return identity if identity.server == server else None

    def save(self, path: str) -> None:
        """Write atomically, readable by this user only: the token is a credential."""
        tmp = f"{path}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(asdict(self), f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)


class MasterSession(Transport):
    """One master, shared by the daemon's threads (each gets its own connection pool).

    ``until`` (an event) stops a call's retries when set; ``tries`` bounds them; with
    neither, a call retries until the master answers.
    """

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 30.0,
        backoff: Backoff | None = None,
        token: str = "",
        ca: str = "",
        max_reply: int = MAX_REPLY,
    ) -> None:
        super().__init__(url, timeout=timeout, token=token, ca=ca)
        self.backoff = backoff or Backoff()
        self.max_reply = max_reply
        self.failures = 0  # consecutive failed requests, 0 once the master answers
        self.retries = 0  # requests sent again since the start
        self.last_error = ""
        self.clock_offset = 0.0  # the master's clock minus ours, from its Date header

    def request(self, method: str, url: str, **kwargs: Any) -> requests.Response:
        """Transport's request, but a redirect is never followed: MasterUntrusted says where
        the master wanted this daemon to go. It is refused in a response hook, before requests
        even parses the Location (it does, to offer the next request): a made-up one such as
        ``http://[::1`` would raise ValueError there."""

        def no_redirect(response: requests.Response, **_: Any) -> requests.Response:
            if 300 <= response.status_code < 400:
                response.close()
                target = printable(response.headers.get("Location", ""))[:200] or "another address"
                self.last_error = f"redirected to {target}"
                raise MasterUntrusted(
                    f"the master at {self.url} redirected {method} {printable(url)[:200]} to {target} (HTTP "
                    f"{response.status_code}); redirects are not followed: give the master's own URL with --server"
                )
            return response

        return super().request(method, url, allow_redirects=False, hooks={"response": no_redirect}, **kwargs)

    # -- the protocol ---------------------------------------------------------------------
    def register(self, req: RegisterRequest, token: str = "", **kw: Any) -> RegisterReply:
        """Register with a volunteer account's token (none where the master enrolls openly). The
        token given back goes into every later request's header: one that could not (a line
        break, a space, not ASCII) is a reply not understood, not an error of every later call."""
        reply = self.call("/clients/register", req, RegisterReply, token=token, **kw)
        if not _TOKEN.fullmatch(reply.token):
            raise MasterError(
                "/clients/register: the master's reply is not understood: its token is not 1-256 visible ASCII "
                "characters"
            )
        return reply

    def heartbeat(self, beat: Heartbeat, **kw: Any) -> HeartbeatReply:
        return self.call("/clients/heartbeat", beat, HeartbeatReply, **kw)

    def lease(self, req: LeaseRequest, **kw: Any) -> LeaseReply:
        return self.call("/lease", req, LeaseReply, **kw)

    def results(self, batch: ResultBatch, **kw: Any) -> AckBatch:
        return _printable_reasons(self.call("/results", batch, AckBatch, **kw))

    def release(self, attempts: list[str], **kw: Any) -> AckBatch:
        return _printable_reasons(self.call("/release", ReleaseRequest(attempts), AckBatch, **kw))

    def call(
        self,
        path: str,
        message: Message,
        reply: type[M],
        *,
        until: threading.Event | None = None,
        tries: int | None = None,
        timeout: float | None = None,
        token: str | None = None,
    ) -> M:
        """POST a message as msgpack, decode the reply as ``reply``; as this client, or with
        ``token`` when given ("" for none)."""
        body = codec.pack(message.to_wire())

        def send() -> requests.Response:
            response = self.request(
                "POST", path, data=body, headers=_headers(codec.MSGPACK), token=token, timeout=timeout, stream=True
            )
            return self._read(response, path)

        response = self._retrying(path, send, until, tries)
        try:
            return reply.from_wire(codec.unpack(response.content))
        except ProtocolError as exc:  # a master of another version, or not a master at all
            raise MasterError(f"{path}: the master's reply is not understood: {exc}") from None

    def get(self, path: str, reply: type[M], *, until: threading.Event | None = None, tries: int | None = None) -> M:
        """GET a resource under /api/v1 as msgpack, decoded as ``reply``."""

        def send() -> requests.Response:
            return self._read(self.request("GET", path, headers=_headers(), stream=True), path)

        response = self._retrying(path, send, until, tries)
        try:
            return reply.from_wire(codec.unpack(response.content))
        except ProtocolError as exc:
            raise MasterError(f"{path}: the master's reply is not understood: {exc}") from None

    # -- blobs ------------------------------------------------------------------------------
    def blob_url(self, blob: str, url: str = "") -> str:
        """Where to fetch a blob: the grant's URL when it is a path on this master, else the
        master's own blob endpoint. A grant never sends this daemon to another host."""
        if url.startswith("/") and not url.startswith("//"):
            return self.url + url
        return f"{self.url}{API}/blobs/{check_hash(blob)}"

    def download(
        self,
        blob: str,
        dest: BinaryIO,
        *,
        url: str = "",
        cancel: threading.Event | None = None,
        tries: int | None = None,
        limit: int | None = None,
    ) -> None:
        """Stream a blob into ``dest``; a download cut off is resumed with a Range request.
        More than ``limit`` bytes is a MasterError (not retried): nothing past it is written."""
        where = self.blob_url(blob, url)
        _empty(dest)

        def fetch() -> requests.Response:
            offset = dest.tell()
            headers = _headers()
            if offset:
                headers["Range"] = f"bytes={offset}-"
            with self.request("GET", where, headers=headers, stream=True) as response:
                if response.status_code == 200 and offset:  # the whole blob after all
                    _empty(dest)
                if response.status_code in (200, 206):
                    for piece in response.iter_content(PIECE):
                        if cancel is not None and cancel.is_set():
                            raise Cancelled(f"download of {blob} stopped")
                        if limit is not None and dest.tell() + len(piece) > limit:
                            raise MasterError(
                                f"/blobs/{blob}: the master sent more than {format_size(limit)} ({limit} bytes), "
                                "all this blob may be; the download was stopped"
                            )
                        dest.write(piece)
                else:
                    self._read(response, f"/blobs/{blob}")  # the error message, read before the stream closes
                return response

        self._retrying(f"/blobs/{blob}", fetch, cancel, tries)

    def put_blob(self, blob: str, path: str, *, until: threading.Event | None = None) -> None:
        """Upload a file as a blob (the master checks it against ``blob``)."""

        def send() -> requests.Response:
            with open(path, "rb") as f:
                headers = _headers("application/octet-stream")
                response = self.request("PUT", f"/blobs/{check_hash(blob)}", data=f, headers=headers, stream=True)
            return self._read(response, f"/blobs/{blob}")

        self._retrying(f"/blobs/{blob}", send, until, None)

    # -- the retry loop ------------------------------------------------------------------------
    def _retrying(
        self, path: str, send: Callable[[], requests.Response], until: threading.Event | None, tries: int | None
    ) -> requests.Response:
        failures = 0
        while True:
            retry_after = 0.0
            try:
                response = send()
            except requests.exceptions.InvalidHeader as exc:  # one that contradicts itself: two Content-Lengths
                raise MasterError(f"{path}: the master's reply is not understood: {printable(exc)[:200]}") from None
            except _TRANSIENT as exc:
                untrusted = certificate_problem(exc)  # an SSLError is a ConnectionError, but no retry helps
                if untrusted:
                    self.last_error = f"certificate refused: {untrusted}"
                    raise MasterUntrusted(f"{path}: {self.certificate_refused(untrusted)}") from None
                problem = f"cannot reach it ({type(exc).__name__})"
            else:
                status = response.status_code
                if status < 400:
                    self._answered(response)
                    return response
                message = printable(error_message(response))
                if status < 500 and status != 429:
                    self._answered(response)
                    # a revoked or expired token is the operator's decision: registering again would undo it
                    forgotten = status == 401 and not ("revoked" in message or "expired" in message)
                    cls = NotRegistered if forgotten or (status == 404 and "register" in message) else MasterRefused
                    raise cls(status, message, path)
                problem = f"HTTP {status}: {message}"
                retry_after = _seconds(response.headers.get("Retry-After"))
            failures += 1
            self.failures += 1
            self.last_error = problem
            if tries is not None and failures >= tries:
                raise MasterUnavailable(f"{path}: master {self.url}: {problem}")
            delay = min(self.backoff.cap, max(self.backoff.delay(failures), retry_after))
            log.warning("%s: master %s: %s; retrying in %.2gs (failure %d)", path, self.url, problem, delay, failures)
            self.retries += 1
            if until is None:
                time.sleep(delay)
            elif until.wait(delay):
                raise MasterUnavailable(f"{path}: stopped waiting for the master at {self.url}: {problem}")

    def _read(self, response: requests.Response, path: str) -> requests.Response:
        """``response`` (streamed) with its body read into ``response.content``, but no more than
        ``max_reply`` bytes of it: past them it is a MasterError, not retried (the master would send
        as much again). Cut off, it raises what requests raises, which the retry loop retries."""
        body = bytearray()
        try:
            for piece in response.iter_content(PIECE):
                body += piece
                if len(body) > self.max_reply:
                    raise MasterError(
                        f"{path}: the master sent more than {format_size(self.max_reply)} ({self.max_reply} bytes), "
                        "more than any reply of the protocol; it was not read further"
                    )
        except BaseException:
            response.close()
            raise
        response._content = bytes(body)  # what response.content gives from now on
        return response

    def _answered(self, response: requests.Response) -> None:
        self.failures = 0
        date = response.headers.get("Date")
        if date:
            try:
                offset = email.utils.parsedate_to_datetime(date).timestamp() - time.time()
            except (TypeError, ValueError, OverflowError):  # not a date, or one past year 9999
                return
            # the header has whole seconds: only a real difference of clocks is worth correcting
            self.clock_offset = offset if abs(offset) > 2 else 0.0


def _printable_reasons(acks: AckBatch) -> AckBatch:
    """The master's reasons for refusing are only ever logged: without its control characters."""
    return AckBatch([replace(ack, reason=printable(ack.reason)) for ack in acks.acks])


def _empty(dest: BinaryIO) -> None:
    """Make ``dest`` empty, for a download from the start. A file that is empty already is not
    truncated: on ext4, truncating a file to 0 makes closing it start writing it to disk
    (auto_da_alloc, meant for files rewritten in place), milliseconds for 64 MiB."""
    if dest.seek(0, os.SEEK_END):
        dest.seek(0)
        dest.truncate()


def _headers(content_type: str | None = None) -> dict[str, str]:
    """msgpack replies, and the body's type when there is one."""
    return {"Accept": codec.MSGPACK} | ({"Content-Type": content_type} if content_type else {})


def _seconds(value: str | None) -> float:
    try:
        return max(0.0, float(value)) if value else 0.0
    except ValueError:
        return 0.0
