"""What a master checks about its MongoDB deployment at start, before it serves anyone.

A production master wants a replica set (durable writes across a failover), a server recent
enough for what the store uses, and writes acknowledged by a majority with retryable writes
on. ``check_deployment`` asks the server (``hello``, ``buildInfo``) and the client (its write
concern and retryable-writes option), refuses what cannot work and warns about what is risky,
each in one sentence an operator can act on. The mongomock stand-in does not answer ``hello``:
the check then says it was skipped and why, rather than pretending it passed.
"""

import logging
from dataclasses import dataclass, field
from typing import Any

from ...errors import ServerError

log = logging.getLogger(__name__)

MIN_VERSION = (6, 0)
"""The oldest server a master accepts. PyMongo 4.x still speaks to 4.0, but the store relies on
what every supported server has and older ones lack or do differently: partial indexes and
``$elemMatch`` on indexed array fields (3.2+), retryable writes (3.6+), ``w: majority`` as the
implicit default (5.0+); 5.0 and older are past MongoDB's end of life, so 6.0 is the floor."""


class DeploymentError(ServerError):
    """The MongoDB deployment cannot serve a master (too old a server); the message says what
    to change. Raised at start, before the master listens."""

    status = 503


@dataclass(frozen=True)
class DeploymentReport:
    """What the check found: ``version`` ("" when unknown), ``replica_set`` ("" when
    standalone or unknown), ``checked`` (False when the server did not answer ``hello``) and the
    ``warnings`` it logged."""

    version: str = ""
    replica_set: str = ""
    checked: bool = True
    warnings: list[str] = field(default_factory=list)


def _version(build: dict[str, Any]) -> tuple[int, ...]:
    array = build.get("versionArray")
    if isinstance(array, list) and array:
        return tuple(int(part) for part in array[:3])
    return tuple(int(part) for part in str(build.get("version", "0")).split("-")[0].split(".")[:3] if part.isdigit())


async def check_deployment(admin: Any, client: Any = None) -> DeploymentReport:
    """Check the server behind ``admin`` (a database whose ``command`` is awaited; the
    ``admin`` database of a client) and, when given, the ``client``'s write settings.

    Raises DeploymentError for a server older than MIN_VERSION; logs a warning for a standalone
    server, a write concern other than majority or retryable writes turned off."""
    try:
        hello = await admin.command("hello")
    except NotImplementedError:  # mongomock: no server to ask
        log.warning("MongoDB deployment check skipped: the server does not answer hello (a stand-in, not MongoDB)")
        return DeploymentReport(checked=False)
    build = await admin.command("buildInfo")
    version = _version(build)
    shown = ".".join(str(part) for part in version) or "unknown"
    if version < MIN_VERSION:
        wanted = ".".join(str(part) for part in MIN_VERSION)
        raise DeploymentError(
            f"MongoDB {shown} is too old for dockercomp: upgrade the server to {wanted} or newer "
            f"(7.0 or 8.0 recommended)"
        )
    warnings: list[str] = []
    replica_set = str(hello.get("setName") or "")
    if not replica_set:
        if hello.get("msg") == "isdbgrid":
            replica_set = "(mongos)"
        else:
            warnings.append(
                "MongoDB is a standalone server, not a replica set member: writes are not durable across a "
                "failover (there is none), and change streams and transactions are not available; run a "
                "replica set of three for production (docs/mongodb.md)"
            )
    if client is not None:
        concern = dict(getattr(getattr(client, "write_concern", None), "document", {}) or {})
        if concern.get("w") not in (None, "majority"):
            warnings.append(
                f"the MongoDB write concern is w={concern.get('w')!r}: a write acknowledged by fewer than a majority "
                "can be rolled back after a failover; drop w= from the store URL or set w=majority"
            )
        if getattr(client, "options", None) is not None and not client.options.retry_writes:
            warnings.append("retryable writes are off (retryWrites=false in the store URL): a failover fails writes")
    for warning in warnings:
        log.warning("%s", warning)
    log.info("MongoDB %s, replica set %s", shown, replica_set or "none")
    return DeploymentReport(version=shown, replica_set=replica_set, warnings=warnings)
