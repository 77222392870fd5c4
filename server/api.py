"""The client protocol under /api/v1/ (msgpack): register, heartbeat, lease, results,
release, and blobs by hash with Range and ETag."""

import hmac
import re

from dockercomp.protocol.errors import IntegrityError, ProtocolError
from dockercomp.protocol.integrity import check_hash, digest
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
)

from .errors import BadRequest, NotFound, Unauthorized
from .handlers import BaseHandler

MAX_BATCH = 10_000
SLICE = 1 << 20
_NAME_RE = re.compile(r"[^\x00-\x1f\x7f]{1,128}")


class RegisterHandler(BaseHandler):
    async def post(self) -> None:
        req = self.decode(RegisterRequest)
        key = self.master.settings.enroll_key
        if key and not hmac.compare_digest(req.enroll_key.encode(), key.encode()):
            raise Unauthorized("wrong enrollment key; ask the operator of this master for it")
        if not _NAME_RE.fullmatch(req.name):
            raise BadRequest("name must be 1-128 printable characters")
        if not 1 <= req.slots <= 4096:
            raise BadRequest("slots must be from 1 to 4096")
        client = await self.master.store.register_client(req.name, req.slots, req.host, self.master.now())
        settings = self.master.settings
        self.reply(RegisterReply(client.id, self.master.token(client.id), settings.heartbeat_interval))


class HeartbeatHandler(BaseHandler):
    async def post(self) -> None:
        client_id = self.client_id()
        beat = self.decode(Heartbeat)
        if not 0 <= beat.slots <= 4096 or len(beat.containers) > 4096:
            raise BadRequest("slots must be from 0 to 4096, with at most 4096 containers")
        abort = await self.master.store.heartbeat(client_id, beat, self.master.now())
        commands = [Command("abort", attempt) for attempt in abort]
        self.reply(HeartbeatReply(commands, self.master.settings.heartbeat_interval))


class LeaseHandler(BaseHandler):
    async def post(self) -> None:
        client_id = self.client_id()
        req = self.decode(LeaseRequest)
        if not 0 <= req.max_units <= 1000:
            raise BadRequest("max_units must be from 0 to 1000")
        if req.cpus < 0 or req.memory < 0:
            raise BadRequest("cpus and memory must not be negative")
        master = self.master
        grants = await master.store.lease(client_id, req, master.now(), master.settings.lease_policy)
        self.reply(LeaseReply(grants, 0.0 if grants else master.settings.heartbeat_interval))


class ResultsHandler(BaseHandler):
    async def post(self) -> None:
        client_id = self.client_id()
        batch = self.decode(ResultBatch)
        if len(batch.results) > MAX_BATCH:
            raise BadRequest(f"at most {MAX_BATCH} results per request")
        refused: dict[int, Ack] = {}
        accepted: list[ResultReport] = []
        for i, report in enumerate(batch.results):
            try:
                accepted.append(await self._store_output(report))
            except ProtocolError as exc:
                refused[i] = Ack(report.attempt, False, str(exc))
        acks = iter(await self.master.store.record_results(client_id, accepted, self.master.now()))
        self.reply(AckBatch([refused[i] if i in refused else next(acks) for i in range(len(batch.results))]))

    async def _store_output(self, report: ResultReport) -> ResultReport:
        """Put an inline output into the blob store after checking its hash, or check that an
        output uploaded beforehand is there; the store then sees only hash and size."""
        if report.status != "succeeded":
            return report
        output_hash = check_hash(report.output_hash, "output_hash")
        if report.output is not None:
            actual = digest(report.output)
            if actual != output_hash:
                raise IntegrityError(output_hash, actual, f"output of attempt {report.attempt}")
            await self.master.blobs.put(report.output)
            size = len(report.output)
        else:
            stored = await self.master.blobs.size(output_hash)
            if stored is None:
                raise ProtocolError(f"output {output_hash} was not uploaded; PUT it to /api/v1/blobs/{output_hash}")
            size = stored
        report.output = None
        report.output_size = size
        return report


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
        if range_header:
            parsed = _parse_range(range_header, size)
            if parsed is None:
                self.set_status(416)
                self.set_header("Content-Range", f"bytes */{size}")
                self.finish()
                return
            start, end = parsed
            self.set_status(206)
            self.set_header("Content-Range", f"bytes {start}-{end - 1}/{size}")
        self.set_header("Content-Length", str(end - start))
        if not send_body:
            self.finish()
            return
        for offset in range(start, end, SLICE):
            self.write(await self.master.blobs.read(blob, offset, min(end, offset + SLICE)))
            await self.flush()
        self.finish()

    async def put(self, blob: str) -> None:
        check_hash(blob, "blob hash")
        actual = digest(self.body)
        if actual != blob:
            raise IntegrityError(blob, actual, "uploaded blob")
        await self.master.blobs.put(self.body)
        self.reply({"hash": blob, "size": len(self.body)}, status=201)


def _parse_range(header: str, size: int) -> tuple[int, int] | None:
    """One ``bytes=`` range as (start, end-exclusive), or None when it cannot be satisfied."""
    match = re.fullmatch(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", header)
    if not match or not (match.group(1) or match.group(2)):
        return None
    first, last = match.groups()
    if not first:
        length = int(last)
        return (max(0, size - length), size) if length and size else None
    start = int(first)
    end = min(size, int(last) + 1) if last else size
    return (start, end) if start < end else None
