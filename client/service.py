"""Service mode: warm containers fed one unit after another over a Unix socket, so a unit
costs milliseconds rather than a container start.

A ``ServiceRunner`` is a DockerRunner (batch grants run as before) that also keeps warm
containers for grants whose mode is "service". A container is made for one job and the
limits it was granted: it is reused only by a unit of the same job with the same image,
command, env, cpus, memory and GPUs (a unit never meets state another job's input left in a
process). There are at most ``max_containers`` (the daemon's slots): a unit that finds none
free for its job starts one, stopping the longest idle container of another first when the
pool is full. A container idle for ``idle_timeout`` seconds is stopped.

Each container is created by DockerRunner's own ``_create``, so it has the whole sandbox of
batch mode (no network, read-only root, no capabilities, no-new-privileges, pids, cpu and
memory limits, a non-root user, tmpfs /tmp, a capped log). Its spool directory on this host,
``root/NAME``, holds ``in`` (mounted read-only at /input: the socket, and each unit's inputs,
hard links of the cached chunks, in ``in/u000001``) and ``out`` (mounted at /output: each
unit writes ``out/u000001/result``; ``out`` is a bounded file system of its own when the
daemon may mount one, outputfs). The result is moved to the attempt's own output directory,
where the Executor reads it as in batch mode.

What comes from the container is hostile: frames are bounded (protocol/service.py), every
read has a deadline, and text from it is stripped of control characters before it is logged
or reported. How a unit ends:

- ``done``: success, the result read as in batch mode.
- ``error`` (the workload's function raised): EXIT_NONZERO with exit code 1 and the
  traceback's tail, as a batch unit whose Python script raised; the container stays.
- the container died (socket closed): OOM when it was killed for memory, else EXIT_NONZERO
  with its exit code and log tail (DockerRunner's ``_failed``); it is replaced.
- past the unit's timeout (time paused left out): TIMEOUT; killed and replaced.
- a broken frame or a reply for another unit: EXIT_NONZERO; killed and replaced.
- /output past ``output_limit``: REFUSED, as in batch mode; killed and replaced.
- cancelled: ABORTED; killed and replaced.
"""

import contextlib
import dataclasses
import errno
import logging
import os
import shutil
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import docker.errors

from dockercomp.protocol.limits import STDERR_TAIL
from dockercomp.protocol.messages import ContainerInfo, ErrorKind
from dockercomp.protocol.service import (
    MAX_FRAME,
    SOCKET_NAME,
    Closed,
    FrameError,
    read_frame,
    readable,
    send_frame,
)
from dockercomp.protocol.transport import printable

from . import outputfs
from .cache import place
from .docker_runner import (
    _ENGINE_ERRORS,
    DockerRunner,
    _EngineError,
    _exec_failure_code,
    _explain,
    _Live,
    _make_writable,
    _output_overflow,
    _read_peak,
    _unavailable,
)
from .errors import ResultUnreadable
from .runner import ResultTooLarge, RunOutcome, RunSpec, open_result

log = logging.getLogger(__name__)

START_TIMEOUT = 60.0  # seconds a new container has to connect and say ready (within the unit's timeout)
FRAME_TIMEOUT = 5.0  # seconds a frame may take once its first byte came
EXIT_WAIT = 10.0  # seconds a container that hung up gets to exit, before it is killed
MAX_REPLY = 64 << 10  # bytes of a container's frame: a reply is small; the daemon refuses more

_Key = tuple[str, str, tuple[str, ...], tuple[tuple[str, str], ...], float, int, int]


class _Broken(Exception):
    """The container did something a service must not; it is killed and replaced."""


@dataclass
class _Warm:
    """One warm container and its spool directory. ``busy`` and ``idle_since`` change under
    the runner's lock; the rest belongs to the thread that holds it busy."""

    key: _Key
    id: str
    dir: str  # root/NAME: in/ (at /input), out/ (at /output)
    conn: socket.socket | None = None
    mounts: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)
    busy: bool = True
    idle_since: float = 0.0
    units: int = 0  # units fed so far: they name the units' directories

    @property
    def name(self) -> str:
        return os.path.basename(self.dir)


def _key(spec: RunSpec) -> _Key:
    return (spec.job, spec.image, spec.command, spec.env, spec.cpus, spec.memory, spec.gpus)


class ServiceRunner(DockerRunner):
    """DockerRunner, plus service mode's warm containers (see the module's docstring)."""

    modes = ("batch", "service")

    def __init__(
        self,
        client: docker.DockerClient | None = None,
        *,
        root: str,
        idle_timeout: float = 60.0,
        max_containers: int = 1,
        **options: object,
    ) -> None:
        """``root``: where the containers' spool directories go (this daemon's alone);
        ``options``: DockerRunner's."""
        super().__init__(client, **options)  # type: ignore[arg-type]
        if idle_timeout <= 0 or max_containers < 1:
            raise ValueError("idle_timeout must be positive and max_containers at least 1")
        self.root = os.path.abspath(root)
        self.idle_timeout = idle_timeout
        self.max_containers = max_containers
        self._warm: dict[str, _Warm] = {}  # by container id, under self._lock
        self._closed = threading.Event()
        self._reaper: threading.Thread | None = None

    # --- one unit -----------------------------------------------------------------------

    def run(self, spec: RunSpec, cancel: threading.Event) -> RunOutcome:
        if spec.mode != "service":
            return super().run(spec, cancel)
        where = printable(f"attempt {spec.attempt} (job {spec.job}, unit {spec.unit})")
        if cancel.is_set():
            return RunOutcome(ErrorKind.ABORTED, stderr_tail="aborted before it was sent to a container")
        if spec.sidecars:
            return RunOutcome(ErrorKind.CLIENT, stderr_tail="a unit of several containers cannot run in service mode")
        started = time.monotonic()
        warm: _Warm | None = None
        try:
            warm = self._take(spec)
            if warm is None:
                warm = self._start(spec, cancel, started, where)
            return self._feed(warm, spec, cancel, started, where)
        except _EngineError as exc:
            return exc.outcome
        except Exception as exc:  # a bug here must not take the worker thread down
            log.exception("%s: the service runner failed", where)
            if warm is not None:
                self._discard(warm, where)
            return RunOutcome(ErrorKind.CLIENT, stderr_tail=f"the runner failed: {type(exc).__name__}: {exc}")

    def _take(self, spec: RunSpec) -> _Warm | None:
        """An idle container for this unit, now busy; None when there is none."""
        key = _key(spec)
        with self._lock:
            for warm in self._warm.values():
                if not warm.busy and warm.key == key:
                    warm.busy = True
                    return warm
        return None

    def _start(self, spec: RunSpec, cancel: threading.Event, started: float, where: str) -> _Warm:
        """A new container for this unit's job, connected and ready, busy. Raises _EngineError
        with the unit's outcome when it cannot be had."""
        self._make_room(where)
        self._start_reaper()
        spool = os.path.join(self.root, f"c{uuid.uuid4().hex[:16]}")
        in_dir, out_dir = os.path.join(spool, "in"), os.path.join(spool, "out")
        warm = _Warm(_key(spec), "", spool)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            os.makedirs(self.root, mode=0o700, exist_ok=True)
            for path in (spool, in_dir, out_dir):
                os.mkdir(path, 0o700)
            os.chmod(in_dir, 0o755)
            os.chmod(out_dir, 0o755)
            warm.mounts.enter_context(outputfs.bounded(out_dir, spec.output_limit))
            _listen(listener, in_dir)
            pool_spec = dataclasses.replace(spec, attempt="", unit="", input_dir=in_dir, output_dir=out_dir)
            warm.id = self._create(pool_spec, where)
            with self._lock:
                self._live[warm.id] = _Live(spec, warm.id)
                self._warm[warm.id] = warm
            self._start_container(warm.id, where)
            warm.conn = self._accept(warm, listener, spec, cancel, started, where)
            ready = read_frame(warm.conn, MAX_REPLY, FRAME_TIMEOUT)
            if ready.get("type") != "ready":
                raise _Broken(f"its first frame is {printable(ready.get('type'))!r:.40}, not ready")
        except _Broken as exc:
            outcome = self._broke(str(exc), time.monotonic() - started, where)
        except (FrameError, TimeoutError, ConnectionError) as exc:
            outcome = self._broke(f"it did not say ready: {exc}", time.monotonic() - started, where)
        except OSError as exc:  # this host's disk, or its sockets
            log.error("%s: cannot prepare a service container: %s", where, exc)
            outcome = RunOutcome(ErrorKind.CLIENT, stderr_tail=f"cannot prepare a service container: {exc}")
        except BaseException:
            self._discard(warm, where)
            raise
        else:
            log.info("%s: service container %s started (%s)", where, warm.id[:12], printable(spec.image))
            return warm
        finally:
            listener.close()
        self._discard(warm, where)
        raise _EngineError(outcome)

    def _start_container(self, container_id: str, where: str) -> None:
        try:
            self._api.start(container_id)
        except docker.errors.APIError as exc:
            message = _explain(exc)
            code = _exec_failure_code(message)
            if code is not None:  # the job's command cannot run: its fault, as `docker run` says
                outcome = RunOutcome(ErrorKind.EXIT_NONZERO, exit_code=code, stderr_tail=message[-STDERR_TAIL:])
            elif exc.is_server_error():
                outcome = _unavailable(exc, where, "starting the container")
            else:
                outcome = RunOutcome(ErrorKind.CLIENT, stderr_tail=f"the Docker engine refused to start it: {message}")
            raise _EngineError(outcome) from exc
        except _ENGINE_ERRORS as exc:
            raise _EngineError(_unavailable(exc, where, "starting the container")) from exc
        with self._lock:
            self._live[container_id].state, self._live[container_id].started_at = "running", time.time()

    def _accept(
        self, warm: _Warm, listener: socket.socket, spec: RunSpec, cancel: threading.Event, started: float, where: str
    ) -> socket.socket:
        """The container's connection; a container that exits first fails the unit as it
        would in batch mode (OOM, exit code), one that is too slow is its TIMEOUT."""
        deadline = started + min(spec.timeout, START_TIMEOUT)
        while True:
            if cancel.is_set():
                raise _EngineError(RunOutcome(ErrorKind.ABORTED, stderr_tail="aborted while its container started"))
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                limit = min(spec.timeout, START_TIMEOUT)
                kind = ErrorKind.TIMEOUT if spec.timeout <= START_TIMEOUT else ErrorKind.EXIT_NONZERO
                text = f"the service container did not connect within {limit:g}s"
                raise _EngineError(RunOutcome(kind, stderr_tail=text, runtime=time.monotonic() - started))
            if readable(listener, min(self._wait_slice, remaining)):
                conn, _ = listener.accept()
                return conn
            try:
                state = self._api.inspect_container(warm.id).get("State") or {}
            except _ENGINE_ERRORS as exc:
                raise _EngineError(_unavailable(exc, where, "starting the container")) from exc
            if not state.get("Running"):
                raise _EngineError(self._ended(warm, spec, started, None, where))

    def _feed(self, warm: _Warm, spec: RunSpec, cancel: threading.Event, started: float, where: str) -> RunOutcome:
        """Send one unit to a busy container and wait for its end; the container is idle
        again after, or discarded."""
        assert warm.conn is not None
        warm.units += 1
        tag = f"u{warm.units:06d}"
        unit_in, unit_out = os.path.join(warm.dir, "in", tag), os.path.join(warm.dir, "out", tag)
        unit_spec = dataclasses.replace(spec, output_dir=unit_out)
        keep = False
        try:
            _unit_dirs(spec.input_dir, unit_in, unit_out, self._user)
            with self._lock:
                record = self._live[warm.id]
                record.spec, record.state, record.started_at = spec, "running", time.time()
                paused_before = record.paused_for
            message: dict[str, Any] = {
                "type": "unit", "id": spec.attempt, "job": spec.job, "unit": spec.unit, "env": dict(spec.env),
                "input": f"/input/{tag}", "output": f"/output/{tag}",
            }  # fmt: skip
            outcome, keep = self._exchange(warm, unit_spec, message, cancel, started, paused_before, where)
            if outcome.error is None:
                outcome = _deliver(unit_out, spec, outcome, where)
            return outcome
        finally:
            shutil.rmtree(unit_in, ignore_errors=True)
            shutil.rmtree(unit_out, ignore_errors=True)
            if keep:
                self._release(warm)
            else:
                self._discard(warm, where)

    def _exchange(
        self,
        warm: _Warm,
        spec: RunSpec,
        message: dict[str, Any],
        cancel: threading.Event,
        started: float,
        paused_before: float,
        where: str,
    ) -> tuple[RunOutcome, bool]:
        """The unit's outcome, and whether the container may take another unit."""
        assert warm.conn is not None
        conn, short, peak = warm.conn, warm.id[:12], None

        def ran() -> float:  # seconds the unit ran, time paused left out
            return time.monotonic() - started - (self._paused_for(warm.id) - paused_before)

        try:
            conn.settimeout(FRAME_TIMEOUT)
            send_frame(conn, message)
            while True:
                if cancel.is_set():
                    self._kill(warm.id, where)
                    return RunOutcome(ErrorKind.ABORTED, stderr_tail="aborted", runtime=ran()), False
                remaining = spec.timeout - ran()
                if remaining <= 0:
                    self._kill(warm.id, where)
                    log.info("%s: service container %s killed at the unit's timeout of %gs", where, short, spec.timeout)
                    text = f"killed after the unit's timeout of {spec.timeout:g}s"
                    return RunOutcome(ErrorKind.TIMEOUT, stderr_tail=text, runtime=ran(), peak_memory=peak), False
                if readable(conn, min(self._wait_slice, remaining)):
                    break
                peak = _read_peak(warm.id, peak)
                overflow = _output_overflow(spec)
                if overflow:
                    self._kill(warm.id, where)
                    log.warning("%s: service container %s killed: %s", where, short, overflow)
                    return RunOutcome(ErrorKind.REFUSED, stderr_tail=f"killed: {overflow}", runtime=ran()), False
            reply = read_frame(conn, MAX_REPLY, FRAME_TIMEOUT)
        except Closed:
            return self._ended(warm, spec, started, peak, where, ran()), False
        except (FrameError, TimeoutError) as exc:
            return self._broke(f"its reply is not a frame: {exc}", ran(), where, warm), False
        except OSError as exc:  # the connection broke as the unit was sent: it died meanwhile
            log.info("%s: service container %s: %s", where, short, exc)
            return self._ended(warm, spec, started, peak, where, ran()), False
        runtime, peak = ran(), _read_peak(warm.id, peak)
        if reply.get("id") != spec.attempt or reply.get("type") not in ("done", "error"):
            return self._broke(f"it answered {printable(reply.get('type'))!r:.40} for another unit", runtime, where,
                               warm), False  # fmt: skip
        overflow = _output_overflow(spec)
        if overflow:
            log.warning("%s: service container %s: %s", where, short, overflow)
            return RunOutcome(ErrorKind.REFUSED, 0, f"refused: {overflow}", runtime, peak), False
        if reply["type"] == "error":
            text = _text(reply.get("traceback")) or _text(reply.get("error")) or "the workload's function raised"
            log.info("%s: the workload failed in service container %s: %s", where, short,
                     printable(_text(reply.get("error")))[:200])  # fmt: skip
            return RunOutcome(ErrorKind.EXIT_NONZERO, 1, text[-STDERR_TAIL:], runtime, peak), True
        log.info("%s: done in service container %s after %.3fs", where, short, runtime)
        return RunOutcome(None, exit_code=0, runtime=runtime, peak_memory=peak), True

    def _ended(
        self, warm: _Warm, spec: RunSpec, started: float, peak: int | None, where: str, runtime: float = 0.0
    ) -> RunOutcome:
        """The container hung up: wait for its exit and say why it ended, as batch mode would."""
        runtime = runtime or time.monotonic() - started
        try:
            status = self._api.wait(warm.id, timeout=EXIT_WAIT)
            code = int(status.get("StatusCode", -1))
        except _ENGINE_ERRORS:  # it hung up but goes on: it cannot be trusted with another unit
            self._kill(warm.id, where)
            return self._broke("it closed its connection and did not exit", runtime, where)
        peak = _read_peak(warm.id, peak)
        log.info("%s: service container %s ended mid-unit (exit code %d)", where, warm.id[:12], code)
        return self._failed(spec, warm.id, code, runtime, peak, where)

    def _broke(self, why: str, runtime: float, where: str, warm: _Warm | None = None) -> RunOutcome:
        if warm is not None:
            self._kill(warm.id, where)
        text = f"the service container broke the service protocol: {why}"
        log.warning("%s: %s", where, printable(text))
        return RunOutcome(
            ErrorKind.EXIT_NONZERO, stderr_tail=printable(text, lines=True)[-STDERR_TAIL:], runtime=runtime
        )

    # --- the pool -----------------------------------------------------------------------

    def _release(self, warm: _Warm) -> None:
        """The unit ended: the container is idle (thawed first, should a pause have come late)."""
        with self._lock:
            record = self._live.get(warm.id)
            paused = record is not None and record.state == "paused"
        if paused:
            self._freeze(warm.id, False)
        with self._lock:
            record = self._live.get(warm.id)
            if record is not None:
                record.state = "idle"
            warm.busy, warm.idle_since = False, time.monotonic()

    def _discard(self, warm: _Warm, where: str) -> None:
        """Remove the container, then its spool directory."""
        with self._lock:
            self._warm.pop(warm.id, None)
            self._live.pop(warm.id, None)
        if warm.conn is not None:
            warm.conn.close()
        if warm.id:
            self._remove(warm.id, where)
        warm.mounts.close()
        shutil.rmtree(warm.dir, ignore_errors=True)

    def _make_room(self, where: str) -> None:
        """With the pool full, stop its longest idle container (of another job: this one's
        would have been taken)."""
        with self._lock:
            if len(self._warm) < self.max_containers:
                return
            idle = [w for w in self._warm.values() if not w.busy]
            oldest = min(idle, key=lambda w: w.idle_since, default=None)
            if oldest is not None:
                oldest.busy = True  # nobody takes it meanwhile
        if oldest is not None:
            log.info("%s: service container %s stopped to make room", where, oldest.id[:12])
            self._discard(oldest, where)

    def _start_reaper(self) -> None:
        with self._lock:
            if self._reaper is not None or self._closed.is_set():
                return
            self._reaper = threading.Thread(target=self._reap, name="service-reaper", daemon=True)
        self._reaper.start()

    def _reap(self) -> None:
        """Stop containers idle for ``idle_timeout``, until ``close``."""
        every = min(max(self.idle_timeout / 4, 0.05), 5.0)
        while not self._closed.wait(every):
            now = time.monotonic()
            with self._lock:
                due = [w for w in self._warm.values() if not w.busy and now - w.idle_since >= self.idle_timeout]
                for warm in due:
                    warm.busy = True
            for warm in due:
                log.info("service container %s stopped after %gs idle", warm.id[:12], self.idle_timeout)
                self._discard(warm, "service pool")

    def warm_containers(self) -> int:
        """How many warm containers there are now, busy or idle."""
        with self._lock:
            return len(self._warm)

    def close(self) -> None:
        """Stop every warm container (the daemon ends)."""
        self._closed.set()
        with self._lock:
            every = list(self._warm.values())
        for warm in every:
            self._discard(warm, "service pool")

    # --- what the heartbeat, the pauser and a restart see ----------------------------------

    def containers(self) -> list[ContainerInfo]:
        """Batch containers and busy warm ones (an idle warm container runs no attempt)."""
        return [info for info in super().containers() if info.state != "idle"]

    def _freeze(self, container_id: str, paused: bool) -> bool:
        done = super()._freeze(container_id, paused)
        if paused and not done:  # a pause that came as its unit ended: an idle container must run
            with self._lock:
                record = self._live.get(container_id)
                idle = record is not None and record.state == "idle"
            if idle:
                with contextlib.suppress(*_ENGINE_ERRORS):
                    self._api.unpause(container_id)
        return done

    def remove_leftovers(self, client: str | None = None) -> int:
        """DockerRunner's (never a warm container of this runner), then the spool directories
        of containers that are gone (an earlier run's)."""
        removed = super().remove_leftovers(client)
        with self._lock:
            ours = {w.name for w in self._warm.values()}
        with contextlib.suppress(FileNotFoundError):
            for name in os.listdir(self.root):
                if name not in ours:
                    path = os.path.join(self.root, name)
                    outputfs.unmount_under(path)
                    shutil.rmtree(path, ignore_errors=True)
        return removed


def _listen(listener: socket.socket, directory: str) -> None:
    """Listen at ``directory/service.sock``; through /proc/self/fd, so a deep work directory
    does not run into the 108 bytes a socket's path may have. Any user may connect (the
    container's is not this daemon's); only the container can reach the directory."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        listener.bind(f"/proc/self/fd/{fd}/{SOCKET_NAME}")
    finally:
        os.close(fd)
    os.chmod(os.path.join(directory, SOCKET_NAME), 0o777)
    listener.listen(1)


def _unit_dirs(input_dir: str, unit_in: str, unit_out: str, user: str) -> None:
    """The unit's directories in the container's spool: its inputs as links to the attempt's
    (themselves links to the cache), and an empty output directory the container may write."""
    os.mkdir(unit_in, 0o700)
    if input_dir:
        for name in os.listdir(input_dir):
            place(os.path.join(input_dir, name), os.path.join(unit_in, name))
    os.chmod(unit_in, 0o755)
    os.mkdir(unit_out, 0o700)
    _make_writable(unit_out, user)


def _deliver(unit_out: str, spec: RunSpec, outcome: RunOutcome, where: str) -> RunOutcome:
    """Move the unit's result to the attempt's output directory, where the Executor reads it
    as in batch mode; a copy (never past ``output_limit``) when they are on two file systems."""
    source, target = os.path.join(unit_out, "result"), os.path.join(spec.output_dir, "result")
    try:
        os.rename(source, target)
        return outcome
    except FileNotFoundError:
        return outcome  # no result: the Executor says so, as in batch mode
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
    try:
        with open_result(source, spec.output_limit or None) as result, open(target, "xb") as copy:
            shutil.copyfileobj(result, copy, 1 << 20)
    except ResultTooLarge as exc:
        log.warning("%s: result refused: %s", where, exc)
        return RunOutcome(ErrorKind.REFUSED, 0, str(exc), outcome.runtime, outcome.peak_memory)
    except ResultUnreadable as exc:
        return RunOutcome(ErrorKind.NO_RESULT, 0, str(exc), outcome.runtime, outcome.peak_memory)
    return outcome


def _text(value: object) -> str:
    """Text the container sent, fit for a report: a string, bounded, without control characters."""
    return printable(value, lines=True)[-STDERR_TAIL:] if isinstance(value, str) else ""


__all__ = ["MAX_FRAME", "ServiceRunner"]
