"""The base handler every endpoint derives from: body limits, decoding, replies, client
authentication, and the one place where exceptions become HTTP statuses."""

import logging
import time
from collections.abc import Mapping
from typing import Any, ClassVar, TypeVar

from tornado import httputil
from tornado.http1connection import HTTP1Connection
from tornado.web import HTTPError, RequestHandler, stream_request_body

from dockercomp.protocol import codec
from dockercomp.protocol.errors import IntegrityError, ProtocolError
from dockercomp.protocol.messages import Message

from .auth import ANONYMOUS, Caller, Role, admit, caller_of, token_hash
from .blobs import BlobStore
from .errors import BadRequest, MethodNotAllowed, ServerError, TooLarge, Unauthorized, UnsupportedMediaType
from .models import Client
from .settings import ServerSettings
from .store import Store

log = logging.getLogger(__name__)
M = TypeVar("M", bound=Message)


COOKIE = "dockercomp_token"  # the dashboard's session: an operator's or scientist's token (see _token)
SESSION_HEADER = "X-Dockercomp-Session"  # with the cookie, lets the page use a handler's session_writes
MAX_TOKEN = 256
ONLINE_CACHE = 1.0  # seconds the list of online clients is reused (each job status asks for it)
Access = Mapping[str, frozenset[Role]]
"""Who may call a route: the roles admitted per HTTP method (server/app.py has the table)."""


class Master:
    """What every handler shares: settings, the store and the blob store. Nothing here is
    state another master process would need."""

    def __init__(self, settings: ServerSettings, store: Store, blobs: BlobStore) -> None:
        self.settings = settings
        self.store = store
        self.blobs = blobs
        self._online: tuple[float, list[Client]] = (-ONLINE_CACHE, [])

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

    @staticmethod
    def now() -> float:
        return time.time()


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


@stream_request_body
class BaseHandler(RequestHandler):
    master: Master
    session_writes: ClassVar[bool] = False
    """Whether the dashboard's cookie may authorise this handler's writes too (with the
    SESSION_HEADER, see _token); only the job controls say so."""

    def initialize(self, master: Master, access: Access | None = None) -> None:
        self.master = master
        self.access = access or {}
        self.caller = ANONYMOUS
        self._chunks: list[bytes] = []
        self._prepared = False  # past prepare(), Tornado reads the whole body before the method runs

    # -- request body and caller -------------------------------------------------------------
    async def prepare(self) -> None:
        method = self.request.method or ""
        allowed = self.access.get(method)
        if allowed is not None:
            self.caller = await self.master.caller(self._token(method))
            admit(self.caller, allowed, f"{method} {self.request.path}")
        elif self.access:  # the table is the whole truth: a method it does not list is no method at all
            raise MethodNotAllowed(f"method not allowed: {method} is not a method of {self.request.path}",
                                   sorted(self.access))  # fmt: skip
        limit = self.master.settings.max_body
        length = self.request.headers.get("Content-Length")
        if length is not None and length.isascii() and length.isdigit() and int(length) > limit:
            raise TooLarge(f"request body of {length} bytes exceeds the limit of {limit}; send smaller chunks")
        # a chunked body past the limit is cut off by Tornado itself (400, connection closed)
        connection = self.request.connection
        if isinstance(connection, HTTP1Connection):
            connection.set_max_body_size(limit)
        self._prepared = True

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
        """The body, decoded as its Content-Type says: only JSON and msgpack are read, so a
        browser's cross-site form post (text/plain, form encodings) can never make a job."""
        ctype = self.request.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if ctype not in (codec.JSON, codec.MSGPACK):
            raise UnsupportedMediaType(f"send the body as {codec.JSON} or {codec.MSGPACK}, not {ctype or 'untyped'}")
        if not self.body:
            raise ProtocolError("request body is empty")
        return codec.decode(self.body, ctype)

    def int_arg(self, name: str, default: int, low: int, high: int) -> int:
        """An integer query argument within [low, high], or a 400 naming it."""
        raw = self.get_query_argument(name, str(default))
        if not (raw.isascii() and raw.isdigit()) or not low <= int(raw) <= high:
            raise BadRequest(f"{name} must be an integer from {low} to {high}")
        return int(raw)

    # -- replies --------------------------------------------------------------------------
    def wants_msgpack(self) -> bool:
        accept = self.request.headers.get("Accept", "")
        ctype = self.request.headers.get("Content-Type", "")
        return codec.MSGPACK in accept or (ctype.startswith(codec.MSGPACK) and "json" not in accept)

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
        header = self.request.headers.get("Authorization")
        if header is not None:
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer":
                raise Unauthorized("send the token as 'Authorization: Bearer TOKEN'")
            return token.strip()
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
        """The id of the client daemon calling: only a client token has one."""
        if self.caller.client is None:
            raise Unauthorized("this call needs a client token; register first")
        return self.caller.client

    # -- errors ---------------------------------------------------------------------------
    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        status = status_of(exc) if exc is not None else status_code
        if status >= 500:
            message = "internal error; the master's log has the details"
        elif isinstance(exc, HTTPError):
            message = exc.log_message or httputil.responses.get(status, "error")
        else:
            message = str(exc) if exc is not None else httputil.responses.get(status, "error")
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
            log.info("%s %s -> %s: %s", self.request.method, self.request.path, status_of(value), value)
        else:
            super().log_exception(typ, value, tb)
