"""Finished results on disk until the master has acknowledged them.

A result is computing time a volunteer gave; losing it to a master that is down, a network
that is out or a daemon that restarts would waste it. Each result is two files in the spool
directory, written atomically (a temporary name, fsync, rename): ``ATTEMPT.out``, the output
bytes, then ``ATTEMPT.result``, the report. The report is written last, so a result is
either whole or absent; a restarted daemon loads every report and uploads it again (the
master takes a repeated result as a duplicate).
"""

import contextlib
import logging
import os
import re
import tempfile
import threading
import time
from dataclasses import dataclass, replace
from typing import BinaryIO

import xxhash

from dockercomp.protocol import codec
from dockercomp.protocol.errors import ProtocolError
from dockercomp.protocol.messages import ErrorKind, ResultReport, ResultStatus

log = logging.getLogger(__name__)
PIECE = 1 << 20
SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}")


@dataclass
class Spooled:
    """One result waiting for its acknowledgement. ``report`` never holds the output bytes:
    they stay in ``output_path`` until the upload reads them."""

    report: ResultReport
    job: str
    unit: str
    finished_at: float
    output_path: str | None = None
    blob_uploaded: bool = False  # the output went to /blobs already (this run)

    @property
    def attempt(self) -> str:
        return self.report.attempt


class Spool:
    def __init__(self, root: str, inline_limit: int = 1 << 20) -> None:
        self.root = root
        self.inline_limit = inline_limit
        self._lock = threading.Lock()
        self._items: dict[str, Spooled] = {}  # in the order they finished
        os.makedirs(root, mode=0o700, exist_ok=True)
        self._load()

    def add(self, report: ResultReport, job: str, unit: str, output: BinaryIO | None = None) -> Spooled:
        """Keep a finished result. A succeeded one's output is copied from ``output`` and
        hashed on the way: the report's output_hash and output_size come from the copy, so
        what is uploaded is exactly what was hashed."""
        if not SAFE_ID.fullmatch(report.attempt):
            raise ValueError(f"attempt id {report.attempt!r:.40} cannot name a file")
        output_path = None
        if report.status == ResultStatus.SUCCEEDED:
            if output is None:
                raise ValueError("a succeeded result needs its output")
            output_path = self._file(report.attempt, ".out")
            output_hash, output_size = _copy_hashed(output, output_path)
            report = replace(report, output_hash=output_hash, output_size=output_size)
        report = replace(report, output=None)
        item = Spooled(report, job, unit, time.time(), output_path)
        meta = {"report": report.to_wire(), "job": job, "unit": unit, "finished_at": item.finished_at}
        _write_atomic(self._file(report.attempt, ".result"), codec.pack(meta))
        with self._lock:
            self._items[report.attempt] = item
        return item

    def pending(self, limit: int | None = None) -> list[Spooled]:
        """Results not yet acknowledged, oldest first."""
        with self._lock:
            items = list(self._items.values())
        return items if limit is None else items[:limit]

    def remove(self, attempt: str) -> None:
        """The master acknowledged the result (or refused it for good): forget it."""
        with self._lock:
            self._items.pop(attempt, None)
        for suffix in (".result", ".out"):  # the report first: an output alone is cleaned at the next load
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._file(attempt, suffix))

    def fail(self, item: Spooled, message: str) -> Spooled:
        """Turn a result the master cannot take (an output too large for it) into the report of
        a failure, so the unit goes to another client instead of waiting for this one."""
        old = item.report
        report = ResultReport(
            old.attempt, ResultStatus.ERRORED, error=ErrorKind.CLIENT, exit_code=old.exit_code, stderr_tail=message,
            runtime=old.runtime, peak_memory=old.peak_memory,
        )  # fmt: skip
        self.remove(old.attempt)
        return self.add(report, item.job, item.unit)

    def wire(self, item: Spooled, inline: bool = True) -> ResultReport:
        """The report to send: with its output inline when small (and ``inline``), without
        when it is uploaded to /blobs first."""
        if inline and item.output_path is not None and not self.needs_blob(item):
            with open(item.output_path, "rb") as f:
                return replace(item.report, output=f.read())
        return item.report

    def needs_blob(self, item: Spooled) -> bool:
        return item.output_path is not None and (item.report.output_size or 0) > self.inline_limit

    def usage(self) -> tuple[int, int]:
        """Results held and their output bytes."""
        with self._lock:
            items = list(self._items.values())
        return len(items), sum(i.report.output_size or 0 for i in items)

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def _file(self, attempt: str, suffix: str) -> str:
        return os.path.join(self.root, attempt + suffix)

    def _load(self) -> None:
        names = set(os.listdir(self.root))
        loaded: list[Spooled] = []
        for name in names:
            path = os.path.join(self.root, name)
            if name.startswith(".tmp-"):
                os.unlink(path)  # a write cut short
            elif name.endswith(".out") and name.removesuffix(".out") + ".result" not in names:
                os.unlink(path)  # an output whose report was never written, or was acknowledged
            elif name.endswith(".result"):
                item = self._read(path)
                if item is not None:
                    loaded.append(item)
        for item in sorted(loaded, key=lambda i: i.finished_at):
            self._items[item.attempt] = item
        if loaded:
            log.info("%d result(s) from an earlier run wait to be uploaded", len(loaded))

    def _read(self, path: str) -> Spooled | None:
        try:
            with open(path, "rb") as f:
                meta = codec.unpack(f.read())
            report = ResultReport.from_wire(meta["report"])
            item = Spooled(report, str(meta["job"]), str(meta["unit"]), float(meta["finished_at"]))
        except (OSError, ProtocolError, KeyError, TypeError, ValueError) as exc:
            log.error("dropping the unreadable spooled result %s: %s", path, exc)
            os.unlink(path)
            return None
        if report.status == ResultStatus.SUCCEEDED:
            item.output_path = self._file(report.attempt, ".out")
            if not os.path.exists(item.output_path):
                log.error("dropping spooled result of attempt %s: its output file is gone", report.attempt)
                os.unlink(path)
                return None
        return item


def _copy_hashed(src: BinaryIO, dest: str) -> tuple[str, int]:
    """Copy a file atomically and return the xxh3-128 of the bytes written, and their count."""
    hasher = xxhash.xxh3_128()
    size = 0
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(dest), prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as out:
            for piece in iter(lambda: src.read(PIECE), b""):
                hasher.update(piece)
                out.write(piece)
                size += len(piece)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, dest)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return hasher.hexdigest(), size


def _write_atomic(path: str, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
