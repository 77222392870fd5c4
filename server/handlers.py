"""The base handler every endpoint derives from: body limits, decoding, replies, client
authentication, and the one place where exceptions become HTTP statuses."""

import hashlib
import hmac
import logging
import time
from typing import Any, TypeVar

from tornado import httputil
from tornado.http1connection import HTTP1Connection
from tornado.web import HTTPError, RequestHandler, stream_request_body

from dockercomp.protocol import codec
from dockercomp.protocol.errors import IntegrityError, ProtocolError
from dockercomp.protocol.messages import Message

from .blobs import BlobStore
from .errors import BadRequest, ServerError, TooLarge, Unauthorized
from .settings import ServerSettings
from .store import Store

log = logging.getLogger(__name__)
M = TypeVar("M", bound=Message)


class Master:
    """What every handler shares: settings, the store, the blob store and the token key.
    Nothing here is state another master process would need."""

    def __init__(self, settings: ServerSettings, store: Store, blobs: BlobStore, secret: bytes) -> None:
        self.settings = settings
        self.store = store
        self.blobs = blobs
        self._secret = secret

    def token(self, client_id: str) -> str:
        """A client's bearer token: its id signed with the store's key, checked without a lookup."""
        mac = hmac.new(self._secret, client_id.encode(), hashlib.sha256).hexdigest()[:32]
        return f"{client_id}.{mac}"

    def client_of(self, token: str) -> str:
        client_id, _, _ = token.partition(".")
        if not client_id or not token.isascii() or not hmac.compare_digest(self.token(client_id), token):
            raise Unauthorized("invalid client token; register again")
        return client_id

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

    def initialize(self, master: Master) -> None:
        self.master = master
        self._chunks: list[bytes] = []
        self._prepared = False  # past prepare(), Tornado reads the whole body before the method runs

    # -- request body ---------------------------------------------------------------------
    def prepare(self) -> None:
        limit = self.master.settings.max_body_bytes
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
        if not self.body:
            raise ProtocolError("request body is empty")
        return codec.decode(self.body, self.request.headers.get("Content-Type"))

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
    def client_id(self) -> str:
        scheme, _, token = self.request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise Unauthorized("missing 'Authorization: Bearer TOKEN' header; register first")
        return self.master.client_of(token.strip())

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
