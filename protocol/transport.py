"""TLS everywhere but loopback: the rule every caller of a master (the daemon, the scientist's
CLI, the installer in its own words) applies before it sends anything, so a token, a chunk or
a result never crosses a network in the clear by mistake; and the words for a certificate
that was refused, which no retry would change.

``Transport`` is the HTTP both Python callers share (the daemon's ``MasterSession``, the
scientist's ``Master``): the master's URL, the bearer token, the certificate check and a
connection pool per thread. Each caller keeps its own policy on top: the daemon retries, the
scientist's CLI reports at once; both read a refusal's reason with ``error_message``.
"""

import ipaddress
import os
import re
import ssl
import threading
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import requests

from .codec import decode
from .errors import ProtocolError
from .messages import API


def is_loopback(host: str) -> bool:
    """``localhost``, 127.0.0.0/8 or ::1: an address that never leaves this machine."""
    host = host.strip("[]").rstrip(".").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def plain_http_refusal(url: str) -> str | None:
    """Why ``url`` may not be used unless the caller said insecure: plain HTTP to a host that
    is not on loopback. None when it may (https, loopback, or not a URL at all: the caller's
    own check of the URL says what is wrong with it)."""
    try:
        parts = urlsplit(url.strip())
        host = parts.hostname or ""
    except ValueError:
        return None
    if parts.scheme.lower() != "http" or not host or is_loopback(host):
        return None
    return (
        f"refusing plain HTTP to {host}, which is not on loopback: use https:// "
        "(with --ca FILE for a private CA), or --insecure for a lab network"
    )


def certificate_problem(exc: BaseException) -> str | None:
    """What was wrong with the master's certificate, when ``exc`` (a requests or urllib3 error,
    however deeply wrapped) is a failed verification: wrong name, unknown CA, expired. None for
    any other error, a handshake cut off by a master that is restarting among them."""
    seen: set[int] = set()
    todo: list[object] = [exc]
    while todo:
        item = todo.pop()
        if not isinstance(item, BaseException) or id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, ssl.SSLCertVerificationError):
            return item.verify_message or item.reason or str(item)
        todo += [*item.args, getattr(item, "reason", None), item.__cause__, item.__context__]
    return None


def ca_problem(ca: str | None) -> str | None:
    """Why ``ca`` cannot be the file of CA certificates a master's certificate is checked
    against (it is no readable file); None when it can, or when none is given."""
    if ca and not (os.path.isfile(ca) and os.access(ca, os.R_OK)):
        return f"{ca} is not a readable file (of PEM CA certificates)"
    return None


def error_message(response: requests.Response) -> str:
    """The master's ``{"error": ...}`` text (JSON or msgpack), or what there is when the reply
    is not from a master (a proxy's page, say)."""
    try:
        body = decode(response.content, response.headers.get("Content-Type"))
    except ProtocolError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return str(body["error"])
    return (response.text or response.reason or "").strip()[:200]


# Escape sequences whole (CSI: colours, cursor moves, erasing; OSC/DCS/APC...: window titles,
# links, up to their terminator; any other ESC pair), then every control character left.
_ESCAPE = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]?|[\]PX^_][^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)?|[ -/]*[0-~]?)")
_CONTROLS = [*range(0x20), *range(0x7F, 0xA0), 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A)]
_ONE_LINE = dict.fromkeys(_CONTROLS) | {9: " ", 10: " ", 13: " "}
_LINES = dict.fromkeys(_CONTROLS) | {9: "\t", 10: "\n"}


def printable(text: object, *, lines: bool = False) -> str:
    """``text`` from a master (an error, a job's name, an image, an id), fit for a volunteer's
    or scientist's terminal and for a log: escape sequences, control characters (C0, DEL, C1)
    and bidirectional overrides removed, so a master can neither repaint the terminal nor
    forge a line of a log. Tabs and newlines become spaces, unless ``lines`` (a multi-line
    text) keeps them."""
    return _ESCAPE.sub("", str(text)).translate(_LINES if lines else _ONE_LINE)


class Transport:
    """Requests to one master under /api/v1, as a caller with a bearer ``token`` (may be
    changed later: a daemon gets its token by registering). The master's certificate is
    always verified: against ``ca`` (a PEM file) or the system's CAs."""

    def __init__(self, url: str, *, timeout: float, token: str = "", ca: str | None = "") -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout
        # given to every request, as a session's own setting loses to $REQUESTS_CA_BUNDLE
        self.verify: str | bool = ca or True
        self._local = threading.local()

    def request(
        self,
        method: str,
        url: str,
        *,
        token: str | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> requests.Response:
        """One request to ``url`` (a path under /api/v1 when it starts with "/"), with this
        caller's token, or ``token`` when given ("" for none). Raises what requests raises:
        the caller decides what to retry; ``certificate_refused`` words a refused certificate."""
        token = self.token if token is None else token
        all_headers = dict(headers or {}) | ({"Authorization": f"Bearer {token}"} if token else {})
        return self._session().request(
            method,
            self.url + API + url if url.startswith("/") else url,
            headers=all_headers,
            timeout=timeout or self.timeout,
            verify=self.verify,
            **kwargs,
        )

    def certificate_refused(self, why: str) -> str:
        """What to say when this master's certificate failed verification (``why``, from
        ``certificate_problem``): no retry changes it, a CA file might."""
        return (
            f"the certificate of the master at {self.url} was refused: {why} (a private CA is trusted with --ca FILE)"
        )

    def _session(self) -> requests.Session:
        """This thread's session: requests' sessions are not safe to share between threads."""
        session: requests.Session | None = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
            session.verify = self.verify
        return session
