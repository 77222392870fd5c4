"""The client daemon's exception tree. A failure of one unit is never an exception here: it is
a result with its error kind. These are about the daemon's own work: talking to the master
and keeping its files."""


class ClientError(Exception):
    """Base of the daemon's errors; the message says what went wrong in words a volunteer can act on."""


class MasterError(ClientError):
    """A request to the master did not succeed."""


class MasterRefused(MasterError):
    """The master answered 4xx: the request itself is wrong, so sending it again is pointless."""

    def __init__(self, status: int, message: str, path: str = "") -> None:
        super().__init__(f"{path}: {message} (HTTP {status})" if path else f"{message} (HTTP {status})")
        self.status = status
        self.message = message
        self.path = path


class NotRegistered(MasterRefused):
    """The master does not know this client or its token (401, or 404 for the client): register again."""


class MasterUntrusted(MasterError):
    """The master's TLS certificate was refused (another name, an unknown CA, expired): sending
    the request again would meet the same certificate, so it is not retried."""


class MasterUnavailable(MasterError):
    """The master could not be reached (or kept failing) before the caller gave up waiting."""


class Cancelled(ClientError):
    """Work was stopped on purpose: an abort command or a shutdown."""


class ResultUnreadable(ClientError):
    """A container exited 0 but left no usable /output/result; the message says what it left."""
