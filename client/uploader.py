"""Spooled results to the master, in batches, until each is acknowledged.

Small outputs travel inline; larger ones are PUT to /blobs first (the master checks their
hash) and the result names them. A master that is down or failing is retried with backoff
for as long as the daemon runs; a batch the master refuses as a whole is split until the
result it cannot take is found, and that one alone is dropped (it would block the rest forever).
"""

import logging
import threading
from collections.abc import Callable
from typing import Any

from dockercomp.protocol.messages import ResultBatch

from .errors import MasterError, MasterRefused, MasterUnavailable, NotRegistered
from .master import MasterSession
from .spool import Spool, Spooled

log = logging.getLogger(__name__)
BATCH_BYTES = 8 << 20  # inline output bytes per request, well under any master's body limit


class Uploader:
    def __init__(
        self,
        spool: Spool,
        master: MasterSession,
        call: Callable[..., Any],
        *,
        batch: int,
        halt: threading.Event,
        registered: threading.Event,
        idle: Callable[[], bool],
        acked: Callable[[], None] = lambda: None,
    ) -> None:
        """``call`` sends a request as this client (registering again when needed); ``halt``
        ends uploading; ``idle`` says no more results will come (the daemon is stopping and
        nothing runs), so the uploader ends once the spool is empty; ``acked`` is called
        after the master took results (which may have made new work, such as a reduce)."""
        self.spool = spool
        self.master = master
        self.call = call
        self.batch = batch
        self.halt = halt
        self.registered = registered
        self.idle = idle
        self.acked = acked
        self.uploaded = 0  # results the master acknowledged
        self._wake = threading.Event()

    def wake(self) -> None:
        self._wake.set()

    def loop(self) -> None:
        while not self.registered.wait(0.1):
            if self.halt.is_set() or self.idle():
                return
        while not self.halt.is_set():
            self._wake.clear()  # before looking: a result spooled from now on wakes the wait below
            batch = self._next_batch()
            if not batch:
                if self.idle():
                    return
                self._wake.wait(1.0)
                continue
            try:
                self.upload(batch)
            except MasterUnavailable:
                continue  # halted while the master was away
            except MasterError as exc:  # a reply that is not understood: try again later
                log.error("upload failed: %s", exc)
                self.halt.wait(self.master.backoff.cap)
        left = len(self.spool)
        if left:
            log.info("%d result(s) stay spooled; the next start uploads them", left)

    def _next_batch(self) -> list[Spooled]:
        batch: list[Spooled] = []
        inline = 0
        for item in self.spool.pending(self.batch):
            size = 0 if self.spool.needs_blob(item) else item.report.output_size or 0
            if batch and inline + size > BATCH_BYTES:
                break
            batch.append(item)
            inline += size
        return batch

    def upload(self, items: list[Spooled], by_reference: bool = False) -> None:
        """Send results; forget each one the master answers for (taken or refused for good)."""
        damaged: set[str] = set()  # outputs whose upload arrived damaged: sent again next round
        for i, item in enumerate(items):
            if item.output_path and not item.blob_uploaded and (by_reference or self.spool.needs_blob(item)):
                try:
                    self.master.put_blob(item.report.output_hash or "", item.output_path, until=self.halt)
                    item.blob_uploaded = True
                except MasterRefused as exc:
                    if exc.status == 422:  # it arrived damaged: send it again next round
                        log.warning("attempt %s: the output arrived damaged (%s); sending it again", item.attempt,
                                    exc.message)  # fmt: skip
                        damaged.add(item.attempt)
                        continue
                    message = f"the master refused the output of {item.report.output_size} bytes: {exc.message}"
                    log.error("attempt %s: %s", item.attempt, message)
                    items[i] = self.spool.fail(item, message)
        if damaged:  # a path that damages bytes may do it again: not in a tight loop
            self.halt.wait(1.0)
        items = [item for item in items if item.attempt not in damaged]
        if not items:
            return
        reports = [self.spool.wire(item, inline=not item.blob_uploaded) for item in items]
        try:
            acks = self.call(self.master.results, ResultBatch(reports), until=self.halt).acks
        except NotRegistered:
            raise  # not about these results: keep them
        except MasterRefused as exc:
            if exc.status == 413 and not by_reference and any(r.output for r in reports):
                self.upload(items, by_reference=True)
            elif len(items) > 1:
                half = len(items) // 2
                self.upload(items[:half], by_reference)
                self.upload(items[half:], by_reference)
            else:
                log.error("attempt %s: the master refuses its result: %s; dropping it", items[0].attempt, exc.message)
                self.spool.remove(items[0].attempt)
            return
        for item, ack in zip(items, acks, strict=False):
            if ack.accepted:
                log.info("attempt %s (job %s, unit %s): result acknowledged%s",
                         item.attempt, item.job, item.unit, f" ({ack.reason})" if ack.reason else "")  # fmt: skip
                self.uploaded += 1
            elif ack.again:  # damaged on the way: the spooled copy is whole
                log.warning("attempt %s (job %s, unit %s): the result arrived damaged (%s); sending it again",
                            item.attempt, item.job, item.unit, ack.reason)  # fmt: skip
                self.halt.wait(0.2)
                continue
            else:
                log.warning("attempt %s (job %s, unit %s): result refused: %s",
                            item.attempt, item.job, item.unit, ack.reason)  # fmt: skip
            self.spool.remove(item.attempt)
        self.acked()
