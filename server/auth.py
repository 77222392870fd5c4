"""Who may call the master: roles, keys (stored hashed), and the caller of a request.

Four kinds of caller reach a master: the operator, scientists, volunteers (a volunteer's
account token enrolls machines; each enrolled machine then holds a client token of its own,
bound to that account), and anonymous visitors. Every token is 32 random bytes, shown once
when it is made and kept only as its SHA-256, so a copy of the store gives no one a token.
A request's token is looked up by its hash on every request (no cache), so a revoked or
expired token is refused by every master sharing the store at once.

Which role may call which route is the table in server/app.py; this module only says who
the caller is.
"""

import hashlib
import hmac
import ipaddress
import re
import secrets
from dataclasses import dataclass
from enum import StrEnum

from .errors import Forbidden, Unauthorized

TOKEN_BYTES = 32
TOKEN_PREFIX = "dct_"
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")
OPERATOR_KEY = "operator"  # the key a master makes on its first start
STRANGER = "open-"  # the accounts open enrollment makes, one per machine (no key is named so)


class Role(StrEnum):
    """What a caller is; routes list the roles they admit."""

    OPERATOR = "operator"  # runs the master: every job, every key, the dashboard
    SCIENTIST = "scientist"  # submits jobs and pushes images; sees only their own jobs
    VOLUNTEER = "volunteer"  # an account's enrollment token: registers machines, nothing else
    CLIENT = "client"  # one registered machine of a volunteer account: the client protocol
    ANONYMOUS = "anonymous"  # no token: the installer, the wheel, the health check


MAKEABLE = (Role.OPERATOR, Role.SCIENTIST, Role.VOLUNTEER)
"""The roles ``dockercomp keys create`` makes; client keys are made by registration."""


@dataclass(frozen=True)
class Key:
    """A stored credential. ``account`` is the volunteer account a client key belongs to (for
    every other key, its own name); revoking an account revokes its machines too."""

    name: str
    role: Role
    token_hash: str
    created_at: float
    account: str
    client: str | None = None  # the client id, for a client key
    expires_at: float | None = None
    revoked_at: float | None = None

    def usable(self, now: float) -> bool:
        return self.revoked_at is None and (self.expires_at is None or now < self.expires_at)

    def to_json(self, now: float) -> dict[str, object]:
        state = "revoked" if self.revoked_at is not None else "expired" if not self.usable(now) else "active"
        return {
            "name": self.name, "role": self.role.value, "account": self.account, "client": self.client,
            "created_at": self.created_at, "expires_at": self.expires_at, "revoked_at": self.revoked_at,
            "state": state,
        }  # fmt: skip


@dataclass(frozen=True)
class Caller:
    """Who sent a request: a role, and the key's name (a job's owner is that name)."""

    role: Role
    name: str = ""
    account: str = ""
    client: str | None = None

    def owns(self, owner: str) -> bool:
        """Whether this caller may see a job of ``owner``: the operator sees everything."""
        return self.role == Role.OPERATOR or (self.role == Role.SCIENTIST and owner == self.name)


ANONYMOUS = Caller(Role.ANONYMOUS)


def new_token() -> str:
    """32 random bytes, base64url, behind a prefix: a token never starts with "-" (which a
    command line would take for an option) and is easy to recognise in a leaked file."""
    return TOKEN_PREFIX + secrets.token_urlsafe(TOKEN_BYTES)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


def check_name(name: object) -> str:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise ValueError("a key name is 1-64 letters, digits and _.@- starting with a letter or digit")
    if is_stranger(name):
        raise ValueError(f"key names starting with {STRANGER!r} are kept for the machines of open enrollment")
    return name


def network_of(address: str | None) -> str:
    """The network a caller calls from, as replicas tell hosts apart (lifecycle.Holder): its
    IPv4 address, or its IPv6 /64 (one host may have a whole /64); "" for the master's own
    machine (loopback: the operator's own clients) or an address that cannot be read."""
    try:
        ip = ipaddress.ip_address(address or "")
    except ValueError:
        return ""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_loopback:
        return ""
    if isinstance(ip, ipaddress.IPv6Address):
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


def is_stranger(account: str) -> bool:
    """Whether an account is one open enrollment made: anyone can have any number of them."""
    return account.startswith(STRANGER)


def caller_of(key: Key | None, token: str, now: float) -> Caller:
    """The caller a presented token stands for, or Unauthorized saying what to do."""
    if key is None or not hmac.compare_digest(key.token_hash, token_hash(token)):
        raise Unauthorized("unknown token; ask the operator of this master for one (dockercomp keys create)")
    if key.revoked_at is not None:
        raise Unauthorized(f"the token of {key.name} was revoked; ask the operator for a new one")
    if not key.usable(now):
        raise Unauthorized(f"the token of {key.name} has expired; ask the operator for a new one")
    return Caller(key.role, key.name, key.account, key.client)


def admit(caller: Caller, allowed: frozenset[Role], what: str) -> None:
    """Refuse a caller whose role the route does not admit: 401 without a token, else 403."""
    if caller.role in allowed or Role.ANONYMOUS in allowed:
        return
    if caller.role == Role.ANONYMOUS:
        roles = " or ".join(sorted(r.value for r in allowed))
        raise Unauthorized(f"{what} needs a token ({roles}): send 'Authorization: Bearer TOKEN'")
    raise Forbidden(f"a {caller.role} token may not {what}")
