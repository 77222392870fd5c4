"""TLS everywhere but loopback: the rule every caller of a master (the daemon, the scientist's
CLI, the installer in its own words) applies before it sends anything, so a token, a chunk or
a result never crosses a network in the clear by mistake; and the words for a certificate
that was refused, which no retry would change."""

import ipaddress
import ssl
from urllib.parse import urlsplit


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
