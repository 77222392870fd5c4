"""The base handler every endpoint derives from: body limits, decoding, replies, client
authentication, and the one place where exceptions become HTTP statuses."""

import asyncio
import ipaddress
import logging
import math
import re
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, ClassVar, TypeVar

from tornado import httputil
from tornado.http1connection import HTTP1Connection
from tornado.iostream import StreamClosedError
from tornado.log import access_log
from tornado.web import Application, HTTPError, RequestHandler, stream_request_body

from dockercomp.protocol import codec
from dockercomp.protocol.errors import IntegrityError, ProtocolError
from dockercomp.protocol.limits import INT64_MAX, MAX_INT_DIGITS
from dockercomp.protocol.messages import Message

from .auth import ANONYMOUS, Caller, Role, admit, caller_of, token_hash
from .blobs import BlobStore
from .errors import (
    BadRequest,
    MethodNotAllowed,
    MisdirectedRequest,
    ServerError,
    TooLarge,
    TooManyRequests,
    Unauthorized,
    UnsupportedMediaType,
)
from .meters import Meters
from .models import Client
from .settings import ServerSettings
from .store import Store
from .store.base import over_quota

log = logging.getLogger(__name__)
M = TypeVar("M", bound=Message)


COOKIE = "dockercomp_token"  # the dashboard's session: an operator's or scientist's token (see _token)
SESSION_HEADER = "X-Dockercomp-Session"  # with the cookie, lets the page use a handler's session_writes
MAX_TOKEN = 256
ONLINE_CACHE = 1.0  # seconds the list of online clients is reused (each job status asks for it)
Access = Mapping[str, frozenset[Role]]
"""Who may call a route: the roles admitted per HTTP method (server/app.py has the table)."""


# every reply: no MIME sniffing, no referrer, never framed (clickjacking); API replies are
# data, never a page, and never cached (they carry who is signed in and what they may see)
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
    "Cache-Control": "no-store",
}
LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"})


def parse_int(raw: str, name: str, low: int, high: int) -> int:
    """A decimal integer from a query argument or a header, within [low, high], or a 400
    naming it: the digits are counted before they are parsed (Python refuses to parse a few
    thousand digits at all, and no bound here needs more than an int64's)."""
    raw = raw.strip()
    if not (raw.isascii() and raw.isdigit() and len(raw) <= MAX_INT_DIGITS) or not low <= int(raw) <= high:
        raise BadRequest(f"{name} must be an integer from {low} to {high}, got {raw!r:.40}")
    return int(raw)


class TokenBucket:
    """Requests per key (a remote address): ``burst`` at once, then ``rate`` a second. Kept in
    this master's memory only: a limit per master process, which is what it protects."""

    MAX_KEYS = 100_000  # addresses remembered; past it the full (idle) buckets are forgotten

    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, burst
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)

    def take(self, key: str, now: float, cost: float = 1.0) -> float:
        """Take ``cost`` tokens: 0.0 when they were there, else the seconds until they will be
        (nothing is taken then). A rate of 0 means no limit."""
        if self.rate <= 0:
            return 0.0
        tokens = self.level(key, now)
        if tokens < cost:
            return (cost - tokens) / self.rate
        if len(self._buckets) >= self.MAX_KEYS:
            self._buckets = {k: v for k, v in self._buckets.items() if self.level(k, now) < self.burst}
        self._buckets[key] = (tokens - cost, now)
        return 0.0

    def level(self, key: str, now: float) -> float:
        tokens, at = self._buckets.get(key, (float(self.burst), now))
        return min(float(self.burst), tokens + (now - at) * self.rate)


def too_many(what: str, wait: float) -> TooManyRequests:
    seconds = max(1, math.ceil(wait))
    return TooManyRequests(f"too many {what} from your address; try again in {seconds}s", seconds)


class Master:
    """What every handler shares: settings, the store and the blob store; and this process's
    rate limits per address. Nothing here is state another master process would need."""

    def __init__(self, settings: ServerSettings, store: Store, blobs: BlobStore) -> None:
        self.settings = settings
        self.store = store
        self.blobs = blobs
        self._online: tuple[float, list[Client]] = (-ONLINE_CACHE, [])
        self.registrations = TokenBucket(settings.register_rate, settings.register_burst)
        self.auth_failures = TokenBucket(settings.auth_failure_rate, settings.auth_failure_burst)
        self.allowed_hosts = allowed_hosts(settings)
        self.meters = Meters(settings.metrics_token())

    async def online_clients(self) -> list[Client]:
        """The clients heard from within the online window, read at most once a second."""
        now = self.now()
        if now - self._online[0] >= ONLINE_CACHE:
            after = now - self.settings.online_window
            self._online = (now, [c for c in await self.store.list_clients() if c.last_seen >= after])
        return self._online[1]

    async def caller(self, token: str | None) -> Caller:
        """Who presents this token: looked up on every request, so a revocation holds at once."""
        if token is None:
            return ANONYMOUS
        if not token or len(token) > MAX_TOKEN or not token.isascii():
            raise Unauthorized("malformed token; send 'Authorization: Bearer TOKEN' with the token you were given")
        return caller_of(await self.store.find_key(token_hash(token)), token, self.now())

    async def authenticate(self, token: str | None, address: str) -> Caller:
        """The caller; an address that presented too many bad tokens gets 429 for each further
        bad one (a good token still works: a neighbour behind the same NAT cannot lock the
        operator out, and a token is 256 random bits, too many to guess)."""
        try:
            return await self.caller(token)
        except Unauthorized:
            wait = self.auth_failures.take(address, self.now())
            if wait:
                raise too_many("failed sign-ins", wait) from None
            raise

    @staticmethod
    def now() -> float:
        return time.time()


def allowed_hosts(settings: ServerSettings) -> frozenset[str]:
    """The names the dashboard answers to (besides any IP address, which DNS rebinding cannot
    forge): loopback names, this machine's names, the bind address, and ``--allowed-host``."""
    names = set(LOOPBACK_NAMES) | {settings.host.lower()}
    for name in (socket.gethostname(), socket.getfqdn()):
        names.add(name.lower())
    names.update(h.strip().lower() for h in settings.allowed_hosts.split(",") if h.strip())
    return frozenset(names - {""})


def host_allowed(host: str, allowed: frozenset[str]) -> bool:
    """Whether a Host header (name or address, with or without a port) is one of ours."""
    if "*" in allowed:
        return True
    host = host.strip().lower()
    if host.startswith("["):  # [IPv6]:port
        host = host[1 : host.find("]")] if "]" in host else host
    elif host.count(":") == 1:
        host = host.rsplit(":", 1)[0]
    host = host.rstrip(".")
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        pass
    return host in allowed or host.endswith(".localhost")


# what a log line must never show: tokens, and the bearer header or session cookie carrying one
_SECRET_RE = re.compile(r"dct_[A-Za-z0-9_\-]+|(?i:(bearer\s+|dockercomp_token=))[^\s;,'\"]+")


def redact(text: str) -> str:
    """``text`` with every credential replaced by a mark: what the log formatting applies."""
    return _SECRET_RE.sub(lambda m: f"{m.group(1) or 'dct_'}[redacted]", text)


class RedactingFilter(logging.Filter):
    """Installed on the log handlers when a master starts (server/app.py): every record's
    message and traceback pass through ``redact`` before any formatter sees them."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


def status_of(exc: BaseException) -> int:
    """The HTTP status for an exception: the one mapping of the exception tree."""
    if isinstance(exc, ServerError):
        return exc.status
    if isinstance(exc, IntegrityError):
        return 422
    if isinstance(exc, ProtocolError):
        return 400
    if isinstance(exc, HTTPError):
        return exc.status_code
    return 500


def error_message(exc: BaseException, status: int) -> str:
    """What an error reply says: never a traceback, nor anything of an internal error."""
    if status >= 500:
        return "internal error; the master's log has the details"
    if isinstance(exc, HTTPError):
        return exc.log_message or httputil.responses.get(status, "error")
    return str(exc)


def log_error(request: str, exc: BaseException) -> None:
    """A refusal is an info line; an internal error is logged with its traceback."""
    if status_of(exc) < 500:
        log.info("%s -> %s: %s", request, status_of(exc), exc)
    else:
        log.error("Uncaught exception %s", request, exc_info=(type(exc), exc, exc.__traceback__))


def wants_msgpack(headers: httputil.HTTPHeaders) -> bool:
    """Whether the reply goes as msgpack: asked for, or the request was msgpack and JSON not asked for."""
    accept = headers.get("Accept", "")
    ctype = headers.get("Content-Type", "")
    return codec.MSGPACK in accept or (ctype.startswith(codec.MSGPACK) and "json" not in accept)


def decode_body(body: bytes, headers: httputil.HTTPHeaders) -> Any:
    """A body, decoded as its Content-Type says: only JSON and msgpack are read, so a browser's
    cross-site form post (text/plain, form encodings) can never make a job."""
    ctype = headers.get("Content-Type", "").split(";")[0].strip().lower()
    if ctype not in (codec.JSON, codec.MSGPACK):
        raise UnsupportedMediaType(f"send the body as {codec.JSON} or {codec.MSGPACK}, not {ctype or 'untyped'}")
    if not body:
        raise ProtocolError("request body is empty")
    return codec.decode(body, ctype)


def bearer_token(headers: httputil.HTTPHeaders) -> str | None:
    """The token of an ``Authorization: Bearer TOKEN`` header; None without one."""
    header = headers.get("Authorization")
    if header is None:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer":
        raise Unauthorized("send the token as 'Authorization: Bearer TOKEN'")
    return token.strip()


def client_of(caller: Caller) -> str:
    """The id of the client daemon calling: only a client token has one."""
    if caller.client is None:
        raise Unauthorized("this call needs a client token; register first")
    return caller.client


@stream_request_body
class BaseHandler(RequestHandler):
    master: Master
    session_writes: ClassVar[bool] = False
    """Whether the dashboard's cookie may authorise this handler's writes too (with the
    SESSION_HEADER, see _token); only the job controls say so."""
    host_checked: ClassVar[bool] = False
    """Whether the Host header must name this master (the dashboard and its session: a page
    of another site whose name resolves to us, DNS rebinding, gets 421)."""

    def initialize(self, master: Master, access: Access | None = None) -> None:
        self.master = master
        self.access = access or {}
        self.caller = ANONYMOUS
        self._chunks: list[bytes] = []
        self._prepared = False  # past prepare(), Tornado reads the whole body before the method runs

    def set_default_headers(self) -> None:
        for name, value in SECURITY_HEADERS.items():
            self.set_header(name, value)

    # -- request body and caller -------------------------------------------------------------
    async def prepare(self) -> None:
        method = self.request.method or ""
        if self.host_checked:
            check_host(self.request, self.master)
        allowed = self.access.get(method)
        if allowed is not None:
            self.caller = await self._authenticate(method)
            admit(self.caller, allowed, f"{method} {self.request.path}")
        elif self.access:  # the table is the whole truth: a method it does not list is no method at all
            raise MethodNotAllowed(f"method not allowed: {method} is not a method of {self.request.path}",
                                   sorted(self.access))  # fmt: skip
        limit = self.master.settings.max_body
        length = self.request.headers.get("Content-Length")
        too_long = length is not None and len(length.strip()) > MAX_INT_DIGITS  # more digits than any int64
        if length is not None and (too_long or parse_int(length, "Content-Length", 0, INT64_MAX) > limit):
            raise TooLarge(f"request body of {length:.40} bytes exceeds the limit of {limit}; send smaller chunks")
        # a chunked body past the limit is cut off by Tornado itself (400, connection closed)
        connection = self.request.connection
        if isinstance(connection, HTTP1Connection):
            connection.set_max_body_size(limit)
        self._prepared = True

    async def count_uploads(self, blobs: list[tuple[str, int]]) -> None:
        """Count blobs (hash, size) a scientist put against their byte quota
        (--max-bytes-per-owner): TooLarge when they do not fit. The operator's and the machines'
        uploads are not counted."""
        if self.caller.role == Role.SCIENTIST:
            quota = self.master.settings.max_bytes_per_owner
            await self.master.store.add_uploads(self.caller.name, blobs, self.master.now(), quota)

    async def check_room(self, size: int, blob: str = "") -> None:
        """Refuse, before its body is read, an upload of ``size`` bytes that cannot fit a
        scientist's byte quota (count_uploads decides once it has arrived; a ``blob`` the
        master has already may be theirs, which costs nothing)."""
        quota = self.master.settings.max_bytes_per_owner
        if not quota or self.caller.role != Role.SCIENTIST or (blob and await self.master.blobs.size(blob) is not None):
            return
        used = await self.master.store.uploaded(self.caller.name)
        if used + size > quota:
            raise TooLarge(over_quota(self.caller.name, used, size, quota))

    async def _authenticate(self, method: str) -> Caller:
        return await self.master.authenticate(self._token(method), self.request.remote_ip or "")

    def data_received(self, chunk: bytes) -> None:
        self._chunks.append(chunk)

    @property
    def body(self) -> bytes:
        if len(self._chunks) != 1:
            self._chunks = [b"".join(self._chunks)]
        return self._chunks[0]

    def decode(self, cls: type[M]) -> M:
        return cls.from_wire(self.payload())

    def payload(self) -> Any:
        return decode_body(self.body, self.request.headers)

    def int_arg(self, name: str, default: int, low: int, high: int) -> int:
        """An integer query argument within [low, high], or a 400 naming it."""
        return parse_int(self.get_query_argument(name, str(default)), name, low, high)

    # -- replies --------------------------------------------------------------------------
    def wants_msgpack(self) -> bool:
        return wants_msgpack(self.request.headers)

    def reply(self, obj: Any, status: int = 200) -> None:
        if isinstance(obj, Message):
            obj = obj.to_wire()
        ctype = codec.MSGPACK if self.wants_msgpack() else codec.JSON
        self.set_status(status)
        self.set_header("Content-Type", ctype)
        self.finish(codec.encode(obj, ctype))

    # -- auth -----------------------------------------------------------------------------
    def _token(self, method: str) -> str | None:
        """The bearer token of the request; else the dashboard's cookie, for reading, and for
        writing only where the handler allows it (``session_writes``) and the request carries
        ``X-Dockercomp-Session: 1``. The cookie is SameSite=Strict, so another site's page cannot
        send it; and a custom header is something no cross-site form can send, and no
        cross-origin script without a CORS preflight, which the master never grants: a request
        carrying both comes from the dashboard's own page."""
        if "Authorization" in self.request.headers:
            return bearer_token(self.request.headers)
        if method in ("GET", "HEAD"):
            return self.get_cookie(COOKIE)
        cookie = self.get_cookie(COOKIE)
        if cookie is None or not self.session_writes:
            return None
        if self.request.headers.get(SESSION_HEADER) != "1":
            raise Unauthorized(
                f"the dashboard's session cookie counts for {method} {self.request.path} only with the header "
                f"'{SESSION_HEADER}: 1'; send it, or send 'Authorization: Bearer TOKEN'"
            )
        return cookie

    def client_id(self) -> str:
        return client_of(self.caller)

    # -- errors ---------------------------------------------------------------------------
    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        status = status_of(exc) if exc is not None else status_code
        message = error_message(exc, status) if exc is not None else httputil.responses.get(status, "error")
        self._chunks = []
        self.clear()
        self.set_status(status)
        if isinstance(exc, ServerError):
            for name, value in exc.headers.items():
                self.set_header(name, value)
        if not self._prepared:  # refused before its body was read: the connection cannot be reused
            self.set_header("Connection", "close")
        ctype = codec.MSGPACK if self.wants_msgpack() else codec.JSON
        self.set_header("Content-Type", ctype)
        self.finish(codec.encode({"error": message, "status": status}, ctype))

    def log_exception(self, typ: Any, value: BaseException | None, tb: Any) -> None:
        if value is not None and status_of(value) < 500:
            log_error(f"{self.request.method} {self.request.path}", value)
        else:
            super().log_exception(typ, value, tb)


def check_host(request: httputil.HTTPServerRequest, master: Master) -> None:
    """Refuse (421) a request whose Host is not one of this master's names; behind a proxy
    (``--behind-proxy``) the name the proxy forwards counts, since the proxy chose to send it."""
    forwarded = request.headers.get("X-Forwarded-Host", "") if master.settings.behind_proxy else ""
    if forwarded:
        return
    host = request.headers.get("Host", "")
    if not host_allowed(host, master.allowed_hosts):
        raise MisdirectedRequest(
            f"this master does not answer to the host {host[:80]!r}; open it by its own name or address, "
            "or start it with --allowed-host NAME"
        )


Answer = Callable[[Master, Caller, Any, str], Awaitable[Message]]
"""A POST answered from the caller, the decoded body and the caller's address alone (api.heartbeat)."""


class PlainRequests(httputil.HTTPServerConnectionDelegate):
    """What the HTTP server hands its requests to: the application, but for a few routes'
    plain requests, answered here without Tornado's RequestHandler.

    A heartbeat comes from every client every 10 seconds: 1,000 a second from 10,000 clients,
    each a few dozen bytes each way, and leases and results are the rest of a working client's
    traffic. Through a RequestHandler the master's CPU per heartbeat was a fifth to a quarter
    more (routing over the table, the request's and the handler's objects, header
    bookkeeping, the handler's coroutine: bench/README.md, "scale"). A plain request is a POST
    to one of ``routes``' exact paths with its Content-Length within the body limit; anything
    else (a query string, a chunked or too long body, another method) goes to the application,
    whose handlers give every refusal its usual reply. A plain one is authorised before its
    body is read, exactly as a handler's prepare does (``Master.authenticate``, one store
    lookup per request, so a revoked token is refused at once; the route's roles from the
    table in server/app.py), and its errors are answered and logged as
    ``BaseHandler.write_error`` and ``log_exception`` do, with the same headers."""

    def __init__(self, app: Application, master: Master, routes: Mapping[str, tuple[Answer, frozenset[Role]]]) -> None:
        self.app, self.master, self.routes = app, master, routes

    def start_request(self, server_conn: object, request_conn: httputil.HTTPConnection) -> httputil.HTTPMessageDelegate:
        return _PlainRequest(self, server_conn, request_conn)


class _PlainRequest(httputil.HTTPMessageDelegate):
    def __init__(self, plain: PlainRequests, server_conn: object, connection: httputil.HTTPConnection) -> None:
        self.plain, self.server_conn, self.connection = plain, server_conn, connection
        self.full: httputil.HTTPMessageDelegate | None = None  # the application's, for a request not plain
        self.chunks: list[bytes] = []
        self.task: asyncio.Task[None] | None = None  # kept here: the event loop holds its tasks weakly
        self.caller: Caller | None = None  # once authorised (_admit), or
        self.refusal: Exception | None = None  # why not

    def headers_received(
        self, start_line: httputil.RequestStartLine | httputil.ResponseStartLine, headers: httputil.HTTPHeaders
    ) -> Awaitable[None] | None:
        assert isinstance(start_line, httputil.RequestStartLine)
        route = self.plain.routes.get(start_line.path) if start_line.method == "POST" else None
        length = headers.get("Content-Length", "")
        if (
            route is None
            or not isinstance(self.connection, HTTP1Connection)
            or "Transfer-Encoding" in headers
            or not (length.isascii() and length.isdigit() and len(length) <= MAX_INT_DIGITS)
            or int(length) > self.plain.master.settings.max_body
        ):
            self.full = self.plain.app.start_request(self.server_conn, self.connection)
            return self.full.headers_received(start_line, headers)
        self.route, self.path, self.headers = route, start_line.path, headers
        self.remote_ip: str = getattr(self.connection.context, "remote_ip", None) or ""  # as HTTPServerRequest's
        return self._admit()  # the body is read once this is done

    async def _admit(self) -> None:
        """Authorise the caller before its body is read, as a handler's prepare does: a body
        that is refused is read and dropped, never kept."""
        try:
            self.caller = await self.plain.master.authenticate(bearer_token(self.headers), self.remote_ip)
            admit(self.caller, self.route[1], f"POST {self.path}")
        except Exception as exc:
            self.refusal = exc

    def data_received(self, chunk: bytes) -> Awaitable[None] | None:
        if self.full is not None:
            return self.full.data_received(chunk)
        if self.refusal is None:
            self.chunks.append(chunk)
        return None

    def finish(self) -> None:
        if self.full is not None:
            self.full.finish()
        else:
            self.task = asyncio.ensure_future(self._answer())

    def on_connection_close(self) -> None:
        if self.full is not None:
            self.full.on_connection_close()

    async def _answer(self) -> None:
        assert isinstance(self.connection, HTTP1Connection)
        started = time.perf_counter()
        master, answer = self.plain.master, self.route[0]
        headers = httputil.HTTPHeaders(SECURITY_HEADERS)
        ctype = codec.MSGPACK if wants_msgpack(self.headers) else codec.JSON
        try:
            if self.refusal is not None:
                raise self.refusal
            assert self.caller is not None
            reply = await answer(master, self.caller, decode_body(b"".join(self.chunks), self.headers), self.remote_ip)
            status, body = 200, codec.encode(reply.to_wire(), ctype)
        except Exception as exc:
            status = status_of(exc)
            log_error(f"POST {self.path}", exc)
            body = codec.encode({"error": error_message(exc, status), "status": status}, ctype)
            if isinstance(exc, ServerError):
                headers.update(exc.headers)
        headers["Content-Type"] = ctype
        headers["Content-Length"] = str(len(body))
        headers["Date"] = httputil.format_timestamp(time.time())
        reason = httputil.responses.get(status, "Unknown")
        try:
            self.connection.write_headers(httputil.ResponseStartLine("HTTP/1.1", status, reason), headers, body)
            self.connection.finish()
        except StreamClosedError:  # the client went away: nothing to answer
            return
        level = logging.INFO if status < 400 else logging.WARNING if status < 500 else logging.ERROR
        if access_log.isEnabledFor(level):  # as Tornado's Application.log_request writes it
            summary = f"POST {self.path} ({self.remote_ip})"
            access_log.log(level, "%d %s %.2fms", status, summary, 1000 * (time.perf_counter() - started))
