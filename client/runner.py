"""How the daemon runs one unit: the Runner interface. ``DockerRunner`` (client/docker_runner.py)
is the real one; unit tests of the daemon may use a stub.

A runner is called from worker threads (one per slot): ``run`` blocks until the container
has ended, and must leave nothing behind (the container is removed, whatever happened).
"""

import errno
import io
import os
import stat
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import BinaryIO

from dockercomp.protocol.messages import ContainerInfo, ErrorKind
from dockercomp.protocol.quantities import format_size

from .errors import ResultUnreadable

LABEL_CLIENT = "dockercomp.client"
LABEL_JOB = "dockercomp.job"
LABEL_UNIT = "dockercomp.unit"
LABEL_ATTEMPT = "dockercomp.attempt"


@dataclass(frozen=True)
class Sidecar:
    """Another container of a multi-container unit, as granted: run beside the main one on the
    unit's private network (reachable there as ``name``), sandboxed with the same limits, with
    none of the unit's files."""

    name: str
    image: str
    command: tuple[str, ...] = ()  # empty: the image's own command
    env: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class RunSpec:
    """One attempt to run: what the master granted, and where its files are on this host."""

    client: str  # this daemon's client id (label dockercomp.client)
    attempt: str
    job: str
    unit: str
    image: str
    command: tuple[str, ...]  # empty: the image's own command
    env: tuple[tuple[str, str], ...]
    cpus: float
    memory: int  # bytes
    timeout: float  # seconds; the container is killed after it
    input_dir: str  # mounted read-only at /input ("": nothing mounted, as for a sidecar)
    output_dir: str  # mounted at /output; the result is output_dir/result ("": nothing mounted)
    sidecars: tuple[Sidecar, ...] = ()  # the unit's other containers: it ends when the main one exits
    name: str = ""  # with sidecars: the main container's name on the unit's network
    gpus: int = 0  # GPUs for this container (a Docker device request)
    output_limit: int = 0  # bytes /output may hold on disk; past them the unit is killed (0: unbounded)
    mode: str = "batch"  # "service": run in a warm container of the job's (client/service.py)


@dataclass(frozen=True)
class RunOutcome:
    """How a run ended. ``error`` is None exactly when the container exited 0."""

    error: ErrorKind | None
    exit_code: int | None = None
    stderr_tail: str = ""
    runtime: float = 0.0
    peak_memory: int | None = None


class Runner(ABC):
    modes: tuple[str, ...] = ("batch",)
    """The execution modes (a grant's ``mode``) this runner runs; a grant of another is refused."""

    @abstractmethod
    def run(self, spec: RunSpec, cancel: threading.Event) -> RunOutcome:
        """Run one attempt to its end (exit, timeout, or ``cancel`` set: then ABORTED) and
        remove its container. Never raises for a failure of the unit or of the engine: those
        are outcomes (EXIT_NONZERO, OOM, TIMEOUT, IMAGE_MISSING, DOCKER_UNAVAILABLE, ...)."""

    @abstractmethod
    def containers(self) -> list[ContainerInfo]:
        """The containers this runner runs now, with their limits and current use."""

    @abstractmethod
    def available_images(self) -> list[str]:
        """Image references present locally (the master may prefer units that need no build)."""

    @abstractmethod
    def remove_leftovers(self, client: str | None = None) -> int:
        """Remove containers an earlier run of this daemon left (found by label, never by
        name); all of ours when ``client`` is None. Return how many."""

    def pause(self, attempt_id: str) -> bool:
        """Pause every live container of an attempt (``docker pause``: its processes are
        frozen, its memory kept). True when the attempt has a container here and all of them
        are paused now; False when it has none (not started yet, or ended) or the engine
        failed. Idempotent: pausing a paused attempt is True and changes nothing. Time spent
        paused does not count against the unit's timeout. A runner that cannot pause says False."""
        return False

    def resume(self, attempt_id: str) -> bool:
        """Undo ``pause``: True when the attempt has a container here and none of them is
        paused now; False when it has none or the engine failed. Idempotent."""
        return False

    def close(self) -> None:
        """Stop what the runner keeps between units (service mode's warm containers); called
        once, as the daemon ends. Never raises."""
        return None

    def engine_version(self) -> str:
        """The container engine's version as operators see it (the dashboard's Docker column),
        "" when there is no engine or it does not say. Never raises."""
        return ""


class ResultTooLarge(ResultUnreadable):
    """The result is larger than this volunteer takes (``max_result``): the unit's own doing."""


def open_result(path: str, limit: int | None = None) -> BinaryIO:
    """Open the /output/result a container wrote: a regular file, never a link it planted to
    somewhere on this host, never a pipe that would block. ResultUnreadable says why not.

    With ``limit``, a result larger than that many bytes is ResultTooLarge before a byte is
    read: by its apparent size (a sparse file counts as what it would be once copied) and by
    the blocks it holds; and reading past ``limit`` (a file that grows while it is copied)
    raises ResultTooLarge instead of handing out the byte."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            raise ResultUnreadable("the container exited 0 without writing /output/result") from None
        if exc.errno == errno.ELOOP:
            raise ResultUnreadable("/output/result is a symbolic link, not the result itself") from None
        raise ResultUnreadable(f"/output/result cannot be read: {exc.strerror or exc}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ResultUnreadable("/output/result is not a regular file")
        if limit is not None:
            size = max(st.st_size, st.st_blocks * 512)
            if size > limit:
                raise ResultTooLarge(_too_large(size, limit))
            return io.BufferedReader(_Capped(os.fdopen(fd, "rb", buffering=0), limit))
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _too_large(size: int, limit: int) -> str:
    return (
        f"/output/result is {format_size(size)} ({size} bytes); this volunteer takes results of at most "
        f"{format_size(limit)} (max_result)"
    )


class _Capped(io.RawIOBase):
    """A file read no further than ``limit`` bytes: one more is ResultTooLarge."""

    def __init__(self, raw: io.FileIO, limit: int) -> None:
        self._raw, self._limit, self._read = raw, limit, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: "memoryview | bytearray") -> int:  # type: ignore[override]
        view = memoryview(buffer).cast("B")[: self._limit - self._read + 1]
        n = self._raw.readinto(view) or 0
        self._read += n
        if self._read > self._limit:
            raise ResultTooLarge(
                f"/output/result grew past {format_size(self._limit)} while it was read; this volunteer takes "
                f"results of at most {format_size(self._limit)} (max_result)"
            )
        return n

    def close(self) -> None:
        self._raw.close()
        super().close()
