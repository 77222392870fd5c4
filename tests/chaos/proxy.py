"""A byte-flipping HTTP proxy on loopback, in the test process, between volunteers and a master.

It forwards every request and reply as they are, except a seeded fraction of:

- chunk downloads (``GET /api/v1/blobs/HASH`` answered 200 or 206): one byte of the reply's
  body is flipped;
- result uploads: one byte of the output bytes a ``POST /api/v1/results`` carries inline (one
  report of the batch), or of the body of ``PUT /api/v1/blobs/HASH`` (an output uploaded by
  reference).

Each target (a blob downloaded, an attempt's inline output, a blob uploaded) is flipped at most
once, so the retry that the integrity check calls for gets through. Every flip is recorded with
what the master answered to it, so a test can count the flips and check each was refused.
The decisions come from one seeded generator; which request draws which number depends on the
order the volunteers' threads reach the proxy.
"""

import http.client
import random
import re
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import msgpack

BLOB_PATH = re.compile(r"^/api/v1/blobs/([0-9a-f]{32})$")
RESULTS_PATH = "/api/v1/results"
# not forwarded either way: they concern one connection, not the message
HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade", "host",
     "content-length"}
)  # fmt: skip


@dataclass
class Flip:
    """One byte the proxy changed, and what the master made of it."""

    kind: str  # "download" (a chunk to a volunteer), "inline" (an output in a result), "blob" (an output PUT)
    target: str  # the blob's hash, or the attempt whose output it was
    offset: int  # the byte's position in the chunk or output
    status: int = 0  # the master's HTTP status for the request (for a download: the reply that was changed)
    accepted: bool | None = None  # inline: whether the master's ack for that attempt took the result
    reason: str = ""  # inline: the ack's reason; blob: the error message


class FlipProxy:
    """``with FlipProxy(master_url, seed=1, downloads=0.3, uploads=0.3) as proxy:`` volunteers
    talk to ``proxy.url``; ``proxy.flips`` lists what was changed."""

    def __init__(self, upstream: str, *, seed: int, downloads: float = 0.0, uploads: float = 0.0) -> None:
        parts = urlsplit(upstream)
        assert parts.scheme == "http" and parts.hostname and parts.port, upstream
        self.upstream_host, self.upstream_port = parts.hostname, parts.port
        self.downloads, self.uploads = downloads, uploads
        self.flips: list[Flip] = []
        self.forwarded = 0  # requests passed on to the master
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._flipped: set[tuple[str, str]] = set()  # (kind, target) flipped once already
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="flip-proxy", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> "FlipProxy":
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)

    def of(self, kind: str) -> list[Flip]:
        with self._lock:
            return [f for f in self.flips if f.kind == kind]

    # -- the decisions --------------------------------------------------------------------------
    def _draw(self, kind: str, target: str, size: int, fraction: float) -> int | None:
        """The offset of the byte to flip in this target, or None to leave it be."""
        if size <= 0 or fraction <= 0:
            return None
        with self._lock:
            if (kind, target) in self._flipped or self._rng.random() >= fraction:
                return None
            self._flipped.add((kind, target))
            return self._rng.randrange(size)

    def _mask(self) -> int:
        with self._lock:
            return self._rng.randrange(1, 256)

    def _record(self, flip: Flip) -> None:
        with self._lock:
            self.flips.append(flip)

    def tamper_request(self, method: str, path: str, body: bytes) -> tuple[bytes, list[Flip]]:
        """The request body to send on, with the flips made in it (their outcome filled later)."""
        if method == "PUT" and (match := BLOB_PATH.match(path)):
            offset = self._draw("blob", match.group(1), len(body), self.uploads)
            if offset is None:
                return body, []
            return _flip(body, offset, self._mask()), [Flip("blob", match.group(1), offset)]
        if method == "POST" and path == RESULTS_PATH and body:
            return self._tamper_results(body)
        return body, []

    def _tamper_results(self, body: bytes) -> tuple[bytes, list[Flip]]:
        """Flip a byte inside one inline output of the batch, in the raw body: an output is
        msgpack ``bin`` data, its bytes stand in the body as they are."""
        try:
            batch = msgpack.unpackb(body, raw=False)
            reports = [r for r in batch["results"] if isinstance(r.get("output"), bytes) and r["output"]]
        except (ValueError, TypeError, KeyError, AttributeError, msgpack.ExtraData):
            return body, []
        flips: list[Flip] = []
        start = 0
        for report in reports:
            output: bytes = report["output"]
            at = body.find(output, start)
            if at < 0:
                continue
            start = at + len(output)
            offset = self._draw("inline", str(report["attempt"]), len(output), self.uploads)
            if offset is not None:
                body = _flip(body, at + offset, self._mask())
                flips.append(Flip("inline", str(report["attempt"]), offset))
                break  # one report of a batch: the others must still be taken
        return body, flips

    def tamper_reply(self, method: str, path: str, status: int, body: bytes) -> tuple[bytes, list[Flip]]:
        match = BLOB_PATH.match(path)
        if method != "GET" or not match or status not in (200, 206):
            return body, []
        offset = self._draw("download", match.group(1), len(body), self.downloads)
        if offset is None:
            return body, []
        return _flip(body, offset, self._mask()), [Flip("download", match.group(1), offset, status)]

    def settle(self, flips: list[Flip], status: int, reply: bytes) -> None:
        """Note what the master answered to a request that carried flips, and keep them."""
        acks: dict[str, Any] = {}
        if any(f.kind == "inline" for f in flips) and status == 200:
            try:
                acks = {a["attempt"]: a for a in msgpack.unpackb(reply, raw=False)["acks"]}
            except (ValueError, TypeError, KeyError, msgpack.ExtraData):
                acks = {}
        for flip in flips:
            if flip.kind != "download":
                flip.status = status
            if flip.kind == "inline" and flip.target in acks:
                flip.accepted = bool(acks[flip.target]["accepted"])
                flip.reason = str(acks[flip.target].get("reason", ""))
            elif flip.kind == "blob":
                flip.reason = _error_text(reply)
            self._record(flip)


def _flip(data: bytes, offset: int, mask: int) -> bytes:
    changed = bytearray(data)
    changed[offset] ^= mask
    return bytes(changed)


def _error_text(reply: bytes) -> str:
    try:
        decoded = msgpack.unpackb(reply, raw=False)
    except (ValueError, TypeError, msgpack.ExtraData):
        return reply[:300].decode(errors="replace")
    return str(decoded.get("error", "")) if isinstance(decoded, dict) else str(decoded)


def _handler(proxy: FlipProxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the volunteers' sessions expect

        def log_message(self, format: str, *args: Any) -> None:  # quiet: pytest shows failures, not traffic
            pass

        def _body(self) -> bytes:
            if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                parts: list[bytes] = []
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass
                        return b"".join(parts)
                    parts.append(self.rfile.read(size))
                    self.rfile.readline()
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length else b""

        def _forward(self) -> None:
            method, path = self.command, self.path
            body, flips = proxy.tamper_request(method, path, self._body())
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
            headers["Host"] = f"{proxy.upstream_host}:{proxy.upstream_port}"
            if body or method in ("POST", "PUT"):
                headers["Content-Length"] = str(len(body))
            upstream = http.client.HTTPConnection(proxy.upstream_host, proxy.upstream_port, timeout=60)
            try:
                upstream.request(method, path, body=body if body or method in ("POST", "PUT") else None,
                                 headers=headers)  # fmt: skip
                response = upstream.getresponse()
                reply = response.read()
                status, reply_headers = response.status, response.getheaders()
            except OSError as exc:  # the master is away: say so as a gateway would
                self.send_error(502, f"master unreachable: {exc}")
                return
            finally:
                upstream.close()
            with proxy._lock:
                proxy.forwarded += 1
            if flips:
                proxy.settle(flips, status, reply)
            sent, flipped = proxy.tamper_reply(method, path, status, reply)
            if flipped:
                proxy.settle(flipped, status, reply)
            self.send_response(status)  # with the proxy's own Date and Server
            length = str(len(sent))
            for name, value in reply_headers:
                if name.lower() == "content-length" and method == "HEAD":
                    length = value  # a HEAD says the size of what a GET would send
                elif name.lower() not in HOP_BY_HOP | {"date", "server"}:
                    self.send_header(name, value)
            self.send_header("Content-Length", length)
            self.end_headers()
            if method != "HEAD" and sent:
                self.wfile.write(sent)

        do_GET = do_POST = do_PUT = do_HEAD = do_DELETE = _forward

    return Handler
