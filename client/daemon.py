"""The client daemon: register, lease, run, upload, until told to stop.

Threads, each a short loop with named exits:
- the caller's thread supervises: it counts stop requests, writes the status file and runs
  the shutdown; it never waits on the network, so a signal is always acted on at once;
- the leaser registers, then leases batches sized to the free slots and, while they compute,
  one batch ahead (prefetch); queued grants it cannot start before their deadline go back;
- one worker per slot runs attempts (attempt.Executor);
- the heartbeat reports slots and containers and obeys the master's commands (abort, and
  pause or resume, which it hands to the pauser);
- the pauser (client/pause.py) keeps containers paused while the master or the volunteer
  wants them so (``dockercomp client pause``, run hours, idle load); a paused client leases
  nothing and starts no queued grant;
- the uploader sends spooled results in batches until the master acknowledges them.

Stopping (rq's work()): the first ``stop()`` (SIGTERM, Ctrl-C) ends leasing, releases the
queued grants, lets running units finish for ``stop_timeout`` seconds (then stops and
releases them), uploads, and exits 0. A paused unit cannot finish: it is stopped and released
at once. A second stop kills our containers, releases their attempts and exits 130. Results
not uploaded by then stay spooled for the next start.
"""

import fcntl
import logging
import os
import shutil
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from enum import StrEnum
from typing import IO, Any, TypeVar

from dockercomp.protocol.messages import ErrorKind, LeaseRequest, RegisterRequest, ResultStatus

from . import outputfs, status
from .attempt import Attempt, Disposition, Executor
from .cache import ChunkCache
from .errors import ClientError, MasterError, MasterRefused, MasterUnavailable, MasterUntrusted, NotRegistered
from .heartbeat import HeartbeatLoop
from .master import Backoff, Identity, MasterSession
from .pause import Pauser
from .provision import Provisioner
from .runner import Runner
from .settings import ClientSettings, free_disk, host_facts
from .slots import Slots
from .spool import Spool
from .uploader import Uploader

log = logging.getLogger(__name__)
T = TypeVar("T")
TICK = 0.1  # how often the supervisor looks at stop requests
SIDE_THREADS = ("heartbeat", "pauser")  # they run until the workers, leaser and uploader are done


class Exit(StrEnum):
    STOPPED = "stopped"  # asked once: finished or released what ran, uploaded
    INTERRUPTED = "interrupted"  # asked twice: containers killed, attempts released
    FAILED = "failed"  # something the daemon cannot work around (the reason is logged)


EXIT_CODES = {Exit.STOPPED: 0, Exit.FAILED: 1, Exit.INTERRUPTED: 130}


class Daemon:
    def __init__(self, settings: ClientSettings, runner: Runner) -> None:
        """Open the work directory (one daemon per directory) and what it holds: identity,
        chunk cache, spooled results. Raises ClientError or OSError when it cannot."""
        self.settings = settings
        self.runner = runner
        self.work_dir = settings.work_path
        os.makedirs(self.work_dir, mode=0o700, exist_ok=True)
        self._lock_file = _lock_work_dir(self.work_dir)
        self.slots = Slots(settings.slot_count, settings.memory_bytes, settings.prefetch, settings.gpu_count)
        backoff = Backoff(settings.backoff_base, settings.backoff_max)
        self.master = MasterSession(
            settings.server_url, timeout=settings.request_timeout, backoff=backoff, ca=settings.ca
        )
        self.cache = ChunkCache(os.path.join(self.work_dir, "cache"), settings.cache_size)
        self.spool = Spool(os.path.join(self.work_dir, "results"), settings.inline_output)
        attempts_dir = os.path.join(self.work_dir, "attempts")
        outputfs.unmount_under(attempts_dir)  # what a crashed run was preparing
        shutil.rmtree(attempts_dir, ignore_errors=True)
        self.provisioner = Provisioner(
            settings, self.master, getattr(runner, "engine", None), self.work_dir, self.slots.slots,
            settings.memory_bytes,
        )  # fmt: skip
        self.executor = Executor(
            attempts_dir, self.cache, self.master, runner, self.spool, provisioner=self.provisioner
        )
        self.identity: Identity | None = None
        self.exit: Exit | None = None
        self.counts: Counter[str] = Counter()  # attempts by how they ended
        self.started_at = time.time()
        self._previous = status.read_status(self.work_dir) or {}  # what a crashed run held
        self._stops = 0
        self._stopping = threading.Event()  # lease no more; finish what runs
        self._halt = threading.Event()  # stop what runs; stop waiting for the master
        self._finished = threading.Event()  # workers, leaser and uploader are done
        self._leaser_done = threading.Event()
        self._acked = threading.Event()  # results were taken: the master may have new work (a reduce)
        self._registered = threading.Event()
        self._register_lock = threading.Lock()
        self._docker_failures = 0
        self._pause_until = 0.0
        self._fatal: BaseException | None = None
        self.uploader = Uploader(
            self.spool, self.master, self.call, batch=settings.upload_batch, halt=self._halt,
            registered=self._registered, idle=self._idle, acked=self._on_acked,
        )  # fmt: skip
        self.pauser = Pauser(runner, self.slots, self.work_dir, settings, share=lambda: self.heartbeat.cpu_share())
        self.heartbeat = HeartbeatLoop(
            self.master, self.call, runner, self.slots, registered=self._registered, finished=self._finished,
            halt=self._halt, count=self._count, pauser=self.pauser, work_dir=self.work_dir,
        )  # fmt: skip

    # -- control -----------------------------------------------------------------------------------
    def stop(self) -> None:
        """Ask the daemon to stop: once to finish or release, twice to stop at once. It only
        counts, so it is safe in a signal handler; the supervisor does the rest."""
        self._stops += 1

    def handle_signals(self) -> None:
        """SIGTERM and SIGINT call stop() (call from the main thread, as Python requires)."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda signum, frame: self.stop())

    def run(self) -> int:
        """Run until stopped; the exit code (0 stopped, 1 failed, 130 interrupted)."""
        threads: list[threading.Thread] = []
        try:
            log.info("client daemon starting: master %s, %d slot(s), work dir %s",
                     self.master.url, self.slots.slots, self.work_dir)  # fmt: skip
            threads = self._start_threads()
            self.exit = self._supervise(threads)
        except Exception:
            log.exception("the client daemon failed")
            self.exit = Exit.FAILED
        finally:
            self._teardown(threads)
        log.info("client daemon %s: exit %s", self.exit, EXIT_CODES[self.exit or Exit.FAILED])
        return EXIT_CODES[self.exit or Exit.FAILED]

    def _start_threads(self) -> list[threading.Thread]:
        targets: list[tuple[str, Callable[[], None]]] = [("leaser", self._lease_loop), ("uploader", self.uploader.loop)]
        targets += [(f"worker-{i}", self._work_loop) for i in range(self.slots.slots)]
        targets.append(("heartbeat", self.heartbeat.loop))
        targets.append(("pauser", lambda: self.pauser.loop(self._finished)))
        self.pauser.tick()  # before the first lease: a client paused before its restart is paused from the start
        threads = [threading.Thread(target=self._guard, args=(fn,), name=name, daemon=True) for name, fn in targets]
        for thread in threads:
            thread.start()
        return threads

    def _guard(self, loop: Callable[[], None]) -> None:
        """A thread that fails stops the daemon (exit 1) rather than leave it half alive."""
        try:
            loop()
        except Exception as exc:
            log.exception("%s failed", threading.current_thread().name)
            self._fatal = exc

    def _supervise(self, threads: list[threading.Thread]) -> Exit:
        tick = threading.Event()  # set by nobody: a sleep
        working = [t for t in threads if t.name not in SIDE_THREADS]
        stop_by = next_status = 0.0
        while True:
            if self._fatal is not None:
                return Exit.FAILED
            if self._stops >= 2:
                log.info("stopping at once: killing our containers and releasing their attempts")
                return Exit.INTERRUPTED
            if self._stops == 1 and not self._stopping.is_set():
                log.info("stopping: no more leases; running units get %gs to finish", self.settings.stop_timeout)
                stop_by = time.monotonic() + self.settings.stop_timeout
                self._stopping.set()
                paused = sorted(self.pauser.paused)
                if paused:  # they cannot finish while paused
                    log.info("stopping and releasing the paused attempt(s) %s", ", ".join(paused))
                    self.slots.stop(paused, "shutdown")
                self._wake()
            if self._stopping.is_set():
                if not any(t.is_alive() for t in working):
                    return Exit.STOPPED
                if time.monotonic() > stop_by and not self._halt.is_set():
                    log.info("stop_timeout passed: stopping what still runs and releasing it")
                    self._halt_all()
            if self.slots.changed or time.monotonic() >= next_status:
                state = "registering"
                if self._registered.is_set():
                    state = "paused" if self.pauser.client_paused else "running"
                self._write_status("stopping" if self._stopping.is_set() else state)
                next_status = time.monotonic() + self.settings.status_interval
            tick.wait(TICK)

    def _halt_all(self) -> None:
        self._stopping.set()
        self._halt.set()
        self.slots.stop_all("shutdown")
        self._wake()

    def _wake(self) -> None:
        self.slots.notify()
        self.uploader.wake()

    def _teardown(self, threads: list[threading.Thread]) -> None:
        if self.exit != Exit.STOPPED or any(t.is_alive() for t in threads if t.name not in SIDE_THREADS):
            self._halt_all()
        self._stopping.set()
        self._wake()
        deadline = time.monotonic() + self.settings.request_timeout + 5
        for thread in threads:
            if thread.name not in SIDE_THREADS:
                thread.join(max(0.0, deadline - time.monotonic()))
        self._finished.set()
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        stuck = [t.name for t in threads if t.is_alive()]
        if stuck:
            log.warning("threads still busy at exit: %s", ", ".join(stuck))
        self.runner.close()  # service mode's warm containers
        self._write_status("stopped")
        self._lock_file.close()

    # -- identity ----------------------------------------------------------------------------------
    def _register(self, until: threading.Event, stale: str = "") -> bool:
        """Take the saved identity, or register; again when ``stale`` (the client id the
        master no longer knows) is still ours. False when ``until`` was set first."""
        path = os.path.join(self.work_dir, "identity.json")
        with self._register_lock:
            if self.identity is not None and self.identity.client != stale:
                return True  # another thread registered meanwhile
            identity = None if stale else Identity.load(path, self.master.url)
            if identity is None:
                facts = host_facts(self.runner.engine_version())
                request = RegisterRequest(self.settings.client_name, self.slots.slots, facts)
                try:
                    reply = self.master.register(request, until=until, token=self.settings.enroll)
                except MasterUnavailable:
                    return False
                except MasterRefused as exc:
                    raise ClientError(f"the master refused to register this client: {exc.message}") from None
                except MasterUntrusted as exc:
                    raise ClientError(f"cannot register this client: {exc}") from None
                identity = Identity(self.master.url, reply.client, reply.token)
                identity.save(path)
                self.heartbeat.interval = reply.heartbeat_interval
                log.info("registered with %s as client %s (%s)", self.master.url, identity.client, request.name)
            else:
                log.info("client %s of %s", identity.client, self.master.url)
            self.identity = identity
            self.master.token = identity.token
            self.executor.client = identity.client
            self._registered.set()
            self.slots.notify()
            return True

    def call(self, fn: Callable[..., T], *args: Any, until: threading.Event | None = None, **kw: Any) -> T:
        """A request to the master as this client; registers again once when the master has
        forgotten it (a reset store, a new enrollment key)."""
        client = self.identity.client if self.identity else ""
        try:
            return fn(*args, until=until, **kw)
        except NotRegistered as exc:
            log.warning("the master does not know client %s (%s); registering again", client, exc.message)
            if not self._register(until or self._halt, stale=client):
                raise MasterUnavailable("stopped before registering again") from None
        return fn(*args, until=until, **kw)

    # -- leasing ------------------------------------------------------------------------------------
    def _lease_loop(self) -> None:
        try:
            if self._register(self._stopping):
                self._clean_up_after_crash()
                self._lease_until_stopped()
        finally:
            self._release(self.slots.drain(), "the daemon is stopping")
            self._leaser_done.set()

    def _lease_until_stopped(self) -> None:
        while not self._stopping.is_set():
            self._release(self.slots.stale(), "its deadline is near and no slot is free")
            self.slots.wait(lambda: self._stopping.is_set() or self.slots.wanted() is not None, timeout=1.0)
            want = None if self._stopping.is_set() else self.slots.wanted()
            if want is None:
                continue
            pause = self._pause_until - time.monotonic()
            if pause > 0:  # the Docker engine failed: give it time before taking more work
                self._stopping.wait(pause)
                continue
            max_units, cpus, memory = want
            self._acked.clear()
            try:
                request = LeaseRequest(max_units, cpus, memory, self._images(), self.slots.free_gpus(),
                                       free_disk(self.work_dir))  # fmt: skip
                reply = self.call(self.master.lease, request, until=self._stopping)
            except MasterUnavailable:
                continue
            except MasterError as exc:  # refused or not understood: asking again at once would not help
                log.error("lease failed: %s", exc)
                self._stopping.wait(self.settings.backoff_max)
                continue
            for attempt in self.slots.add(reply.attempts, self.master.clock_offset):
                log.info("%s: leased (%s), deadline in %.0fs", attempt, attempt.grant.image,
                         attempt.expires - time.monotonic())  # fmt: skip
            if not reply.attempts:  # no work now: ask again when the master says, or once it took results
                wait = min(reply.retry_after or self.heartbeat.interval, 60.0)
                self.slots.wait(lambda: self._stopping.is_set() or self._acked.is_set(), wait)

    def _on_acked(self) -> None:
        self._acked.set()
        self.slots.notify()

    def _clean_up_after_crash(self) -> None:
        """Remove the containers a crashed run of this client left, and give back the attempts
        it held (as its last status file lists them) unless their results are spooled."""
        client = self.identity.client if self.identity else None
        try:
            removed = self.runner.remove_leftovers(client)
        except Exception as exc:
            log.warning("cannot remove leftover containers: %s", exc)
        else:
            if removed:
                log.info("removed %d container(s) an earlier run left", removed)
        previous = self._previous
        if client is None or previous.get("client") != client:
            return
        spooled = {item.attempt for item in self.spool.pending()}
        held = (previous.get("running") or []) + (previous.get("queued") or [])
        ids = [a["attempt"] for a in held if isinstance(a, dict) and a.get("attempt") not in spooled]
        if ids:
            log.info("releasing %d attempt(s) an earlier run left unfinished: %s", len(ids), ", ".join(ids))
            self._release_ids(ids)

    def _release(self, attempts: list[Attempt], why: str) -> None:
        for attempt in attempts:
            log.info("%s: released: %s", attempt, why)
        self._release_ids([a.id for a in attempts])

    def _release_ids(self, ids: list[str]) -> None:
        if not ids:
            return
        self._count("released", len(ids))
        tries = 1 if self._halt.is_set() else 3  # stopping at once: one try; their deadlines cover the rest
        try:
            acks = self.call(self.master.release, ids, tries=tries, timeout=min(self.settings.request_timeout, 10.0))
        except MasterError as exc:
            log.warning("cannot release %s: %s; the master reissues them at their deadline", ", ".join(ids), exc)
            return
        for ack in acks.acks:
            if not ack.accepted:
                log.info("attempt %s: release refused: %s", ack.attempt, ack.reason)

    def _images(self) -> list[str]:
        try:
            return self.runner.available_images()[:1000]
        except Exception as exc:
            log.warning("cannot list local images: %s", exc)
            return []

    # -- workers -------------------------------------------------------------------------------------
    def _work_loop(self) -> None:
        while True:
            attempt, stale = self.slots.take(self._stopping)
            self._release(stale, "its deadline is near and it was not started")
            if attempt is None:
                if self._stopping.is_set():
                    return
                continue
            disposition, report = self.executor.execute(attempt)
            self.slots.done(attempt)
            if disposition == Disposition.RELEASE:
                self._release([attempt], "stopped unfinished")
            elif disposition == Disposition.DROP:
                self._count("aborted")
            elif report is not None:
                self._count(report.error or ResultStatus.SUCCEEDED)
                self._docker_health(report.error)
                self.uploader.wake()

    def _idle(self) -> bool:
        """Stopping, and nothing runs or will: no more results will come."""
        return self._stopping.is_set() and self._leaser_done.is_set() and not self.slots.busy()

    def _count(self, what: str, n: int = 1) -> None:
        with self.slots.cond:
            self.counts[what] += n
            self.slots.changed = True

    def _docker_health(self, error: ErrorKind | None) -> None:
        """Lease nothing for a while after the engine failed, so units are not burnt on it."""
        if error != ErrorKind.DOCKER_UNAVAILABLE:
            self._docker_failures = 0
            return
        self._docker_failures += 1
        pause = self.master.backoff.delay(self._docker_failures)
        self._pause_until = time.monotonic() + pause
        log.warning("the Docker engine is unavailable; leasing again in %.0fs", pause)

    # -- status ---------------------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """What the status file holds: everything ``dockercomp client status`` shows."""
        now = time.monotonic()
        with self.slots.cond:
            running, queued, counts = self.slots.running(), self.slots.queued(), dict(self.counts)
        paused = set(self.pauser.paused)
        spooled, spool_bytes = self.spool.usage()
        cache_bytes, cache_files = self.cache.usage()
        return {
            "pid": os.getpid(),
            "client": self.identity.client if self.identity else "",
            "name": self.settings.client_name,
            "master": self.master.url,
            "master_ok": self.master.failures == 0,
            "master_error": self.master.last_error if self.master.failures else "",
            "slots": self.slots.slots,
            "memory": self.slots.memory,
            "started_at": self.started_at,
            "updated_at": time.time(),
            "paused": list(self.pauser.reasons.values()),  # why the whole client is paused; empty: it is not
            "running": [
                _attempt_json(a) | {"started_at": a.started_at, "phase": "paused" if a.id in paused else a.phase}
                for a in running
            ],
            "queued": [_attempt_json(a) | {"expires_in": round(a.expires - now, 1)} for a in queued],
            "spool": {"results": spooled, "bytes": spool_bytes},
            "cache": {"bytes": cache_bytes, "files": cache_files, "limit": self.cache.max_bytes},
            "counts": counts,
            "image_bytes": self.provisioner.received,
        }

    def _write_status(self, state: str) -> None:
        """Rewrite the status file; a disk that refuses it costs the view, not the work."""
        self.slots.changed = False
        try:
            status.write_status(self.work_dir, self.snapshot() | {"state": state})
        except OSError as exc:
            log.warning("cannot write the status file in %s: %s", self.work_dir, exc)


def _attempt_json(a: Attempt) -> dict[str, Any]:
    g = a.grant
    return {"attempt": g.attempt, "job": g.job, "unit": g.unit, "image": g.image, "cpus": g.cpus,
            "memory": g.memory, "phase": a.phase}  # fmt: skip


def _lock_work_dir(work_dir: str) -> IO[str]:
    """One daemon per work directory: two would share one identity, spool and cache."""
    handle = open(os.path.join(work_dir, "lock"), "a")  # noqa: SIM115 - held for the daemon's life
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise ClientError(f"another client daemon is using {work_dir}; give this one its own --work-dir") from None
    return handle
