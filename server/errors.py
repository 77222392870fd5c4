"""The master's exception tree. Each error carries its HTTP status; the base handler turns
any of them (and the protocol's errors) into a reply with a message, never a traceback."""

from collections.abc import Mapping
from types import MappingProxyType


class ServerError(Exception):
    status = 500
    """HTTP status for this error."""
    headers: Mapping[str, str] = MappingProxyType({})
    """Headers the error reply carries besides the message."""


class BadRequest(ServerError):
    status = 400


class Unauthorized(ServerError):
    status = 401


class Forbidden(ServerError):
    """The caller is known but its role may not do this."""

    status = 403


class NotFound(ServerError):
    status = 404


class MethodNotAllowed(ServerError):
    status = 405

    def __init__(self, message: str, allowed: list[str]) -> None:
        super().__init__(message)
        self.headers = {"Allow": ", ".join(allowed)}


class Conflict(ServerError):
    """The request is well formed but contradicts the state (a decided unit, a repeated id)."""

    status = 409


class TooLarge(ServerError):
    status = 413


class MisdirectedRequest(ServerError):
    """The Host header names another site than this master (DNS rebinding, a wrong proxy)."""

    status = 421


class TooManyRequests(ServerError):
    """Past a rate limit or a quota that frees up with time; Retry-After says when to come back."""

    status = 429

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.headers = {"Retry-After": str(retry_after)}


class UnsupportedMediaType(ServerError):
    """A body that is neither JSON nor msgpack (a cross-site form post, say)."""

    status = 415


class InvalidTransition(ServerError):
    """A move the lifecycle table forbids; a bug in a caller, reported as a conflict."""

    status = 409


class RangeNotSatisfiable(ServerError):
    """A Range that lies past the end of a blob; the reply says how long the blob is."""

    status = 416

    def __init__(self, message: str, size: int) -> None:
        super().__init__(message)
        self.headers = {"Content-Range": f"bytes */{size}"}


class StoreUnavailable(ServerError):
    status = 503
