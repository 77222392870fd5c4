"""The client protocol under /api/v1/ (msgpack): register, heartbeat, lease, results,
release, and blobs by hash with Range and ETag."""

import dataclasses
import math
import os
import re
from typing import Any

from dockercomp.protocol.errors import IntegrityError, ProtocolError
from dockercomp.protocol.integrity import check_hash, verify
from dockercomp.protocol.jobfile import MAX_CONTAINERS
from dockercomp.protocol.limits import INT64_MAX, MAX_BATCH, MAX_INT_DIGITS, MAX_LEASE, MAX_SLOTS, MIN_SLOTS, NAME_RE
from dockercomp.protocol.messages import (
    Ack,
    AckBatch,
    Command,
    Heartbeat,
    HeartbeatReply,
    LeaseReply,
    LeaseRequest,
    RegisterReply,
    RegisterRequest,
    ReleaseRequest,
    ResultBatch,
    ResultReport,
    ResultStatus,
)

from .auth import STRANGER, Caller, Role, network_of, new_token, token_hash
from .blobs import Upload
from .errors import BadRequest, Forbidden, NotFound, RangeNotSatisfiable, TooLarge, Unauthorized
from .handlers import BaseHandler, Master, client_of, too_many
from .metrics import timed
from .models import Client
from .store.base import new_id

SLICE = 1 << 20
PREFETCH_FACTOR = 2  # a lease asks for at most the client's slots, and a prefetched batch of as many


class RegisterHandler(BaseHandler):
    """A machine joins: with a volunteer account's token it is enrolled under that account;
    with none, on a master with open enrollment, it is an account of its own (a stranger,
    as BOINC projects take them). It gets a client token of its own either way."""

    async def post(self) -> None:
        req = self.decode(RegisterRequest)
        settings = self.master.settings
        if self.caller.role == Role.VOLUNTEER:
            account = self.caller.name
        elif self.caller.role != Role.ANONYMOUS:
            raise Forbidden(f"a {self.caller.role} token may not register a machine; use a volunteer token")
        elif settings.open_enrollment:
            account = f"{STRANGER}{new_id(8)}"
        else:
            raise Unauthorized("this master enrolls volunteers by token: ask its operator for one (--enroll TOKEN)")
        if not NAME_RE.fullmatch(req.name):
            raise BadRequest("name must be 1-128 printable characters")
        if not MIN_SLOTS <= req.slots <= MAX_SLOTS:
            raise BadRequest(f"slots must be from {MIN_SLOTS} to {MAX_SLOTS}")
        wait = self.master.registrations.take(self.request.remote_ip or "", self.master.now())
        if wait:  # counted once the request is sound: each one makes a client and a key
            raise too_many("machines registered", wait)
        token = new_token()
        client = await self.master.store.register_client(
            req.name, req.slots, req.host, self.master.now(), account, token_hash(token)
        )
        self.reply(RegisterReply(client.id, token, settings.heartbeat_interval))


@timed("heartbeat")
async def heartbeat(master: Master, caller: Caller, payload: Any, address: str) -> HeartbeatReply:
    """A client's heartbeat: what it runs recorded, the commands for it (cancel, pause) in the
    reply. Answered as a plain request (handlers.PlainRequests) or through HeartbeatHandler."""
    client_id = client_of(caller)
    beat = Heartbeat.from_wire(payload)
    if not 0 <= beat.slots <= MAX_SLOTS:
        raise BadRequest(f"slots must be from 0 to {MAX_SLOTS}")
    if len(beat.containers) > max(beat.slots, 1) * MAX_CONTAINERS:  # each unit may have several containers
        raise BadRequest(
            f"{len(beat.containers)} containers listed, more than {MAX_CONTAINERS} for each of its "
            f"{beat.slots} slots; list only the containers this client runs for the master"
        )
    if not 0 <= beat.busy <= MAX_SLOTS:
        raise BadRequest(f"busy must be from 0 to {MAX_SLOTS}")
    if not all(x >= 0 for x in (beat.memory, beat.gpus, beat.disk)):
        raise BadRequest("memory, gpus and disk must not be negative (0: not said)")
    for i, c in enumerate(beat.containers):
        # shown to operators as JSON, which has no infinity
        if not all(math.isfinite(x) and x >= 0 for x in (c.cpus, c.started_at, c.cpu_percent or 0.0)):
            raise BadRequest(f"containers[{i}]: cpus, started_at and cpu_percent must be finite, not negative")
    orders = await master.store.heartbeat(client_id, beat, master.now())
    commands = [Command(action.value, attempt) for action, attempt in orders]
    return HeartbeatReply(commands, master.settings.heartbeat_interval)


class HeartbeatHandler(BaseHandler):
    async def post(self) -> None:
        self.reply(await heartbeat(self.master, self.caller, self.payload(), self.request.remote_ip or ""))


@timed("lease")
async def lease(master: Master, caller: Caller, payload: Any, address: str) -> LeaseReply:
    """Units for a client, as many as it asks for and its machine can run (``clamp``), from
    jobs in the scheduler's order. Answered as a plain request or through LeaseHandler."""
    client_id = client_of(caller)
    req = LeaseRequest.from_wire(payload)
    if not 0 <= req.max_units <= MAX_LEASE:
        raise BadRequest(f"max_units must be from 0 to {MAX_LEASE}")
    if not (req.cpus >= 0 and req.memory >= 0 and req.gpus >= 0 and req.disk >= 0):
        raise BadRequest("cpus, memory, gpus and disk must not be negative")
    req = clamp(req, await master.store.get_client(client_id))
    policy, network = master.settings.lease_policy, network_of(address)
    grants = await master.store.lease(client_id, req, master.now(), policy, network)
    return LeaseReply(grants, 0.0 if grants else master.settings.heartbeat_interval)


class LeaseHandler(BaseHandler):
    async def post(self) -> None:
        self.reply(await lease(self.master, self.caller, self.payload(), self.request.remote_ip or ""))


def clamp(req: LeaseRequest, client: Client) -> LeaseRequest:
    """The request within what the client's machine has, as it registered and last heartbeat
    said: no more cpus than its slots (a core each) and one prefetched batch of as many (what
    the daemon asks for while every slot is busy); no more memory than it donates or its host
    has, where it said. A client cannot lease more than it could run by asking for it."""
    cpus = min(req.cpus, float(PREFETCH_FACTOR * max(client.slots, 1)))
    memory = req.memory
    for known in (client.memory, client.host.memory):
        if known > 0:
            memory = min(memory, known)
    return dataclasses.replace(req, cpus=cpus, memory=memory)


@timed("results")
async def results(master: Master, caller: Caller, payload: Any, address: str) -> AckBatch:
    """A client's results, each acknowledged: checked (an inline output against its hash, an
    uploaded one for being there), the outputs stored, then the results recorded. Answered as a
    plain request or through ResultsHandler."""
    client_id = client_of(caller)
    batch = ResultBatch.from_wire(payload)
    if len(batch.results) > MAX_BATCH:
        raise BadRequest(f"at most {MAX_BATCH} results per request")
    refused: dict[int, Ack] = {}
    accepted: list[ResultReport] = []
    outputs: list[bytes] = []
    for i, report in enumerate(batch.results):
        try:
            accepted.append(await _check_output(master, report, outputs))
        except ProtocolError as exc:  # IntegrityError: damaged on the way, so worth sending again
            refused[i] = Ack(report.attempt, False, str(exc), again=isinstance(exc, IntegrityError))
    # the checked inline outputs go to the blob store together; the store sees hash and size only
    await master.blobs.put_many(outputs)
    acks = iter(await master.store.record_results(client_id, accepted, master.now()))
    return AckBatch([refused[i] if i in refused else next(acks) for i in range(len(batch.results))])


async def _check_output(master: Master, report: ResultReport, outputs: list[bytes]) -> ResultReport:
    """Check an inline output against its hash, or that an output uploaded beforehand is
    there: the report as checked, without its bytes (appended to ``outputs`` once checked)
    and its output_size taken from the bytes themselves."""
    if not (math.isfinite(report.runtime) and report.runtime >= 0):  # shown as JSON, which has no infinity
        raise ProtocolError(f"runtime of attempt {report.attempt!r:.40} must be finite seconds, not negative")
    if report.status != ResultStatus.SUCCEEDED:
        return dataclasses.replace(report, output=None)
    output_hash = check_hash(report.output_hash, "output_hash")
    if report.output is not None:
        verify(report.output, output_hash, f"output of attempt {report.attempt}")
        outputs.append(report.output)
        return dataclasses.replace(report, output=None, output_size=len(report.output))
    stored = await master.blobs.size(output_hash)
    if stored is None:
        raise ProtocolError(f"output {output_hash} was not uploaded; PUT it to /api/v1/blobs/{output_hash}")
    return dataclasses.replace(report, output_size=stored)


class ResultsHandler(BaseHandler):
    async def post(self) -> None:
        self.reply(await results(self.master, self.caller, self.payload(), self.request.remote_ip or ""))


class ReleaseHandler(BaseHandler):
    async def post(self) -> None:
        client_id = self.client_id()
        req = self.decode(ReleaseRequest)
        if len(req.attempts) > MAX_BATCH:
            raise BadRequest(f"at most {MAX_BATCH} attempts per request")
        self.reply(AckBatch(await self.master.store.release(client_id, req.attempts, self.master.now())))


class BlobHandler(BaseHandler):
    """GET/HEAD a blob by hash (ETag is the hash, Range supported); PUT uploads one, verified."""

    async def head(self, blob: str) -> None:
        await self.get(blob, send_body=False)

    async def get(self, blob: str, send_body: bool = True) -> None:
        check_hash(blob, "blob hash")
        size = await self.master.blobs.size(blob)
        if size is None:
            raise NotFound(f"no blob {blob}")
        self.set_header("ETag", f'"{blob}"')
        self.set_header("Accept-Ranges", "bytes")
        self.set_header("Cache-Control", "public, max-age=31536000, immutable")
        self.set_header("Content-Type", "application/octet-stream")
        if self.check_etag_header():
            self.set_status(304)
            self.finish()
            return
        start, end = 0, size
        range_header = self.request.headers.get("Range")
        parsed = _parse_range(range_header, size) if range_header else None
        if parsed is not None:
            start, end = parsed
            self.set_status(206)
            self.set_header("Content-Range", f"bytes {start}-{end - 1}/{size}")
        self.set_header("Content-Length", str(end - start))
        if not send_body:
            self.finish()
            return
        for offset in range(start, end, SLICE):
            piece = await self.master.blobs.read(blob, offset, min(end, offset + SLICE))
            self.write(piece)
            self.master.meters.blob_bytes.inc(len(piece))
            await self.flush()
        self.finish()

    # an upload is streamed to a file and hashed as it arrives (blobs.Upload), never held in memory
    upload: Upload | None = None

    async def prepare(self) -> None:
        await super().prepare()
        if self.request.method == "PUT":
            try:
                check_hash(self.path_args[0], "blob hash")
                length = int(self.request.headers.get("Content-Length") or 0)  # checked by BaseHandler.prepare
                await self.check_room(length, self.path_args[0])
            except (ProtocolError, TooLarge):
                self._prepared = False  # refused before its body was read: the reply closes the connection
                raise
            self.upload = Upload(os.path.join(self.master.settings.data_path, "uploads"))

    def data_received(self, chunk: bytes) -> None:
        if self.upload is None:
            super().data_received(chunk)
        else:
            self.upload.write(chunk)

    async def put(self, blob: str) -> None:
        assert self.upload is not None
        actual = self.upload.hexdigest()
        if actual != blob:
            raise IntegrityError(blob, actual, "uploaded blob")
        size = self.upload.size
        await self.count_uploads([(blob, size)])
        await self.upload.store(self.master.blobs, blob)
        self.reply({"hash": blob, "size": size}, status=201)

    def on_finish(self) -> None:
        if self.upload is not None:
            self.upload.discard()

    def on_connection_close(self) -> None:  # the uploader went away (or its body timed out)
        if self.upload is not None:
            self.upload.discard()


def _parse_range(header: str, size: int) -> tuple[int, int] | None:
    """One ``bytes=`` range as (start, end-exclusive). None for a Range this server does not
    understand (another unit, several ranges, bad syntax): it is ignored and the whole blob
    sent, as RFC 9110 says. RangeNotSatisfiable when the range lies past the end."""
    match = re.fullmatch(r"\s*bytes\s*=\s*([0-9]*)\s*-\s*([0-9]*)\s*", header)
    if not match or not (match.group(1) or match.group(2)):
        return None
    first, last = (_position(g) if g else None for g in match.groups())
    if first is not None and last is not None and last < first:
        return None
    if first is None:
        assert last is not None
        if not last or not size:
            raise RangeNotSatisfiable(f"range {header!r:.60} asks for no bytes of a {size}-byte blob", size)
        return max(0, size - last), size
    if first >= size:
        raise RangeNotSatisfiable(f"range {header!r:.60} starts past the end of a {size}-byte blob", size)
    return first, min(size, last + 1) if last is not None else size


def _position(digits: str) -> int:
    """A byte position of a Range: any number past an int64 is as good as the end of every blob
    (and is never parsed: Python refuses to parse a few thousand digits)."""
    digits = digits.lstrip("0") or "0"
    return INT64_MAX if len(digits) > MAX_INT_DIGITS else min(int(digits), INT64_MAX)
