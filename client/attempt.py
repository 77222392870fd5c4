"""One attempt on this client, from its grant to a spooled result.

The grant comes from the master and is data, never code for this host: names become file
names only when they are plain, commands and environment go to the Runner as lists, and the
output is read without following a link the container may have planted in /output.
"""

import logging
import os
import shutil
import threading
import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import BinaryIO

from dockercomp.protocol.errors import IntegrityError, ProtocolError
from dockercomp.protocol.integrity import check_hash, digest
from dockercomp.protocol.jobfile import CONTAINER_NAME_RE, MAX_CONTAINERS
from dockercomp.protocol.limits import ENV_NAME_RE, STDERR_TAIL
from dockercomp.protocol.messages import ErrorKind, Grant, ResultReport, ResultStatus
from dockercomp.protocol.transport import printable

from . import outputfs
from .cache import ChunkCache, Download, place
from .errors import Cancelled, MasterError, ResultUnreadable
from .master import MasterSession
from .provision import Provisioner
from .runner import ResultTooLarge, Runner, RunOutcome, RunSpec, Sidecar, open_result
from .spool import SAFE_ID, Spool

log = logging.getLogger(__name__)


class Disposition(StrEnum):
    """What became of an attempt."""

    SPOOLED = "spooled"  # its result (success or failure) waits in the spool for upload
    RELEASE = "release"  # stopped unfinished by a shutdown: give it back to the master
    DROP = "drop"  # the master said abort: it wants nothing more for this attempt


Ending = tuple[Disposition, ResultReport | None]
"""What became of an attempt, and the report spooled for it, if any."""


@dataclass
class Attempt:
    """A grant this client holds, queued or running; what the heartbeat and status show."""

    grant: Grant
    leased_at: float = field(default_factory=time.time)
    expires: float = 0.0  # the lease's deadline on this host's monotonic clock
    release_by: float = float("inf")  # not started by then (monotonic), it goes back to the master
    phase: str = "queued"  # queued, preparing (inputs), running (container), done
    started_at: float = 0.0  # wall clock, when preparing began
    cancel: threading.Event = field(default_factory=threading.Event)
    why: str = ""  # why cancel was set: "abort" (the master's command) or "shutdown"

    @property
    def id(self) -> str:
        return self.grant.attempt

    def stop(self, why: str) -> None:
        if not self.cancel.is_set():
            self.why = why
            self.cancel.set()

    def __str__(self) -> str:  # the ids come from the master: no escape code of theirs reaches a log
        g = self.grant
        return printable(f"attempt {g.attempt} (job {g.job}, unit {g.unit})")


DEFAULT_MAX_RESULT = 256 << 20


class Executor:
    """Runs attempts, one per worker thread at a time, each in ``root/ATTEMPT`` (0700 above
    its ``input`` and ``output``, so only the container can reach them through its mounts).

    ``max_result`` bounds what a unit may leave: its /output/result (refused unread when
    larger, never copied past it) and /output as a whole on disk (the runner kills the unit
    past it). None: the provisioner's settings' ``max_result``, else DEFAULT_MAX_RESULT."""

    def __init__(
        self,
        root: str,
        cache: ChunkCache,
        master: MasterSession,
        runner: Runner,
        spool: Spool,
        client: str = "",
        provisioner: "Provisioner | None" = None,
        max_result: int | None = None,
    ) -> None:
        self.root = root
        if max_result is None:
            max_result = provisioner.settings.max_result if provisioner is not None else DEFAULT_MAX_RESULT
        self.max_result = max_result
        self.provisioner = provisioner  # the volunteer's checks and the image; None: run as granted
        self.cache = cache
        self.master = master
        self.runner = runner
        self.spool = spool
        self.client = client  # this daemon's client id, the containers' label
        os.makedirs(root, mode=0o700, exist_ok=True)
        os.chmod(root, 0o700)

    def execute(self, attempt: Attempt) -> Ending:
        """Run one attempt to its end and say what became of it, with the report spooled
        (if any). Never raises for a failure of the unit."""
        grant = attempt.grant
        attempt.phase, attempt.started_at = "preparing", time.time()
        problem = check_grant(grant, self.runner.modes)
        if problem:
            log.error("%s: refused: %s", attempt, problem)
            return self._errored(attempt, RunOutcome(ErrorKind.CLIENT, stderr_tail=problem))
        refusal = self.provisioner.prepare(grant, attempt.cancel) if self.provisioner else None
        if refusal is not None:
            if refusal.error == ErrorKind.ABORTED:
                return self._cancelled(attempt)
            log.warning("%s: not run: %s: %s", attempt, refusal.error, printable(refusal.stderr_tail))
            return self._errored(attempt, refusal)
        workdir = os.path.join(self.root, grant.attempt)
        pinned: list[str] = []
        try:
            input_dir, output_dir = _fresh_dirs(workdir)
            for ref in grant.inputs:
                if attempt.cancel.is_set():
                    return self._cancelled(attempt)
                if ref.data is not None:  # sent in the grant (a sweep's params.json): checked like a download
                    if len(ref.data) != ref.size or digest(ref.data) != ref.hash:
                        message = f"input {ref.name}, sent in the grant, does not match its hash {ref.hash}"
                        log.error("%s: %s", attempt, message)
                        return self._errored(attempt, RunOutcome(ErrorKind.INTEGRITY, stderr_tail=message))
                    _write_input(os.path.join(input_dir, ref.name), ref.data)
                    continue
                try:
                    path = self.cache.acquire(ref.hash, self._downloader(ref.hash, ref.url, attempt), size=ref.size)
                except IntegrityError as exc:
                    log.error("%s: input %s failed its integrity check: %s", attempt, ref.name, exc)
                    return self._errored(attempt, RunOutcome(ErrorKind.INTEGRITY, stderr_tail=str(exc)))
                except (Cancelled, MasterError) as exc:
                    if attempt.cancel.is_set():
                        return self._cancelled(attempt)
                    message = f"input {ref.name} ({ref.hash}) cannot be downloaded: {exc}"
                    log.error("%s: %s", attempt, message)
                    return self._errored(attempt, RunOutcome(ErrorKind.CLIENT, stderr_tail=message))
                pinned.append(ref.hash)
                place(path, os.path.join(input_dir, ref.name))
            if attempt.cancel.is_set():
                return self._cancelled(attempt)
            attempt.phase = "running"
            with outputfs.bounded(output_dir, self.max_result):  # the result is spooled before it goes
                try:
                    outcome = self.runner.run(self._spec(grant, input_dir, output_dir), attempt.cancel)
                except Exception as exc:  # a runner must not raise; if one does, the unit goes elsewhere
                    log.exception("%s: the runner failed", attempt)
                    outcome = RunOutcome(
                        ErrorKind.CLIENT, stderr_tail=f"the runner failed: {type(exc).__name__}: {exc}"
                    )
                return self._finish(attempt, outcome, os.path.join(output_dir, "result"))
        except OSError as exc:  # this host's disk: full, or taken away
            log.error("%s: %s", attempt, exc)
            return self._errored(attempt, RunOutcome(ErrorKind.CLIENT, stderr_tail=f"client file error: {exc}"))
        finally:
            attempt.phase = "done"
            for blob in pinned:
                self.cache.release(blob)
            shutil.rmtree(workdir, ignore_errors=True)

    # -- endings -----------------------------------------------------------------------------
    def _finish(self, attempt: Attempt, outcome: RunOutcome, result_path: str) -> Ending:
        if attempt.why == "abort":
            log.info("%s: aborted as the master asked; nothing to report", attempt)
            return Disposition.DROP, None
        if outcome.error == ErrorKind.ABORTED:
            return self._cancelled(attempt)
        if outcome.error is not None:
            log.info("%s: failed: %s (exit code %s)", attempt, outcome.error, outcome.exit_code)
            return self._errored(attempt, outcome)
        try:
            with open_result(result_path, self.max_result) as output:
                report = ResultReport(
                    attempt.id, ResultStatus.SUCCEEDED, exit_code=0, output_hash="", runtime=outcome.runtime,
                    peak_memory=outcome.peak_memory, stderr_tail=outcome.stderr_tail[-STDERR_TAIL:],
                )  # fmt: skip
                item = self.spool.add(report, attempt.grant.job, attempt.grant.unit, output)
        except ResultTooLarge as exc:  # beyond what this volunteer takes: another client may take more
            log.warning("%s: result refused: %s", attempt, exc)
            return self._errored(attempt, RunOutcome(ErrorKind.REFUSED, 0, str(exc), outcome.runtime))
        except ResultUnreadable as exc:  # missing, a link, a pipe: the unit's own doing
            log.warning("%s: %s", attempt, exc)
            return self._errored(attempt, RunOutcome(ErrorKind.NO_RESULT, 0, str(exc), outcome.runtime))
        log.info("%s: succeeded in %.2fs, output %s (%d bytes)", attempt, outcome.runtime,
                 item.report.output_hash, item.report.output_size)  # fmt: skip
        return Disposition.SPOOLED, item.report

    def _errored(self, attempt: Attempt, outcome: RunOutcome) -> Ending:
        if not SAFE_ID.fullmatch(attempt.id):  # cannot name a spool file: give it back instead
            return Disposition.RELEASE, None
        report = ResultReport(
            attempt.id, ResultStatus.ERRORED, error=outcome.error or ErrorKind.CLIENT, exit_code=outcome.exit_code,
            stderr_tail=outcome.stderr_tail[-STDERR_TAIL:], runtime=outcome.runtime, peak_memory=outcome.peak_memory,
        )  # fmt: skip
        self.spool.add(report, attempt.grant.job, attempt.grant.unit)
        return Disposition.SPOOLED, report

    def _cancelled(self, attempt: Attempt) -> Ending:
        if attempt.why == "abort":
            log.info("%s: aborted as the master asked; nothing to report", attempt)
            return Disposition.DROP, None
        log.info("%s: stopped unfinished; it goes back to the master", attempt)
        return Disposition.RELEASE, None

    # -- helpers -------------------------------------------------------------------------------
    def _downloader(self, blob: str, url: str, attempt: Attempt) -> Download:
        def download(dest: BinaryIO) -> None:  # never more than the cache may hold
            self.master.download(blob, dest, url=url, cancel=attempt.cancel, limit=self.cache.max_bytes)

        return download

    def _spec(self, grant: Grant, input_dir: str, output_dir: str) -> RunSpec:
        return RunSpec(
            client=self.client, attempt=grant.attempt, job=grant.job, unit=grant.unit, image=grant.image,
            command=tuple(grant.command), env=tuple(sorted(grant.env.items())), cpus=grant.cpus,
            memory=grant.memory, timeout=grant.timeout, input_dir=input_dir, output_dir=output_dir,
            sidecars=tuple(Sidecar(s.name, s.image, tuple(s.command), tuple(sorted(s.env.items())))
                           for s in grant.sidecars),
            name=grant.main_name, gpus=grant.gpus, output_limit=self.max_result, mode=grant.mode,
        )  # fmt: skip


def check_grant(grant: Grant, modes: tuple[str, ...] = ("batch",)) -> str:
    """Why this client cannot run a grant as sent, or "" when it can; ``modes``: the execution
    modes its runner runs."""
    if not SAFE_ID.fullmatch(grant.attempt):
        return f"attempt id {grant.attempt!r:.40} is not a plain name"
    if grant.mode not in modes:
        return f"execution mode {grant.mode!r:.20} is not supported by this client (only {', '.join(modes)})"
    if grant.mode == "service" and grant.sidecars:
        return "a unit of several containers cannot run in service mode"
    if not grant.image or "\x00" in grant.image:
        return "the grant names no image"
    if not (grant.cpus > 0 and grant.memory > 0 and grant.timeout > 0):
        return "cpus, memory and timeout must be greater than 0"
    names = set()
    for ref in grant.inputs:
        if not SAFE_ID.fullmatch(ref.name) or ref.name in names:
            return f"input name {ref.name!r:.40} is not a plain, unique file name"
        names.add(ref.name)
        try:
            check_hash(ref.hash, f"hash of input {ref.name}")
        except ProtocolError as exc:
            return str(exc)
    if any("\x00" in arg for arg in grant.command):
        return "the command holds a NUL character"
    for key, value in grant.env.items():
        if not ENV_NAME_RE.fullmatch(key) or "\x00" in value:
            return f"environment variable {key!r:.40} is not a plain name with a value"
    return _check_sidecars(grant)


def _check_sidecars(grant: Grant) -> str:
    """Why the other containers of a multi-container grant cannot run as sent, or ""."""
    if not grant.sidecars:
        return ""
    if 1 + len(grant.sidecars) > MAX_CONTAINERS:
        return f"the unit has {1 + len(grant.sidecars)} containers; this client runs at most {MAX_CONTAINERS}"
    if not CONTAINER_NAME_RE.fullmatch(grant.main_name):
        return f"the main container's name {grant.main_name!r:.70} is not a host name"
    names = {grant.main_name}
    for sidecar in grant.sidecars:
        if not CONTAINER_NAME_RE.fullmatch(sidecar.name) or sidecar.name in names:
            return f"container name {sidecar.name!r:.70} is not a plain, unique host name"
        names.add(sidecar.name)
        if not sidecar.image or "\x00" in sidecar.image:
            return f"container {sidecar.name} names no image"
        if any("\x00" in arg for arg in sidecar.command):
            return f"the command of container {sidecar.name} holds a NUL character"
        for key, value in sidecar.env.items():
            if not ENV_NAME_RE.fullmatch(key) or "\x00" in value:
                return f"environment variable {key!r:.40} of container {sidecar.name} is not a plain name with a value"
    return ""


def _write_input(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o444)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _fresh_dirs(workdir: str) -> tuple[str, str]:
    """The attempt's private directory: input readable by the container's user, output
    writable by it (it runs as another, unprivileged user)."""
    shutil.rmtree(workdir, ignore_errors=True)
    os.mkdir(workdir, 0o700)
    input_dir, output_dir = os.path.join(workdir, "input"), os.path.join(workdir, "output")
    os.mkdir(input_dir)
    os.mkdir(output_dir)
    os.chmod(input_dir, 0o755)
    os.chmod(output_dir, 0o777)
    return input_dir, output_dir
