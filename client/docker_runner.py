"""The real Runner: one sandboxed Docker container per unit (batch mode), through the Docker SDK.

What the master sends (image, command, env, ids) is data: it goes to the Docker API as JSON
fields and lists, never through a shell or a command line on this host. The container is
locked down by default and there is no switch to loosen it: no network, read-only root
filesystem, every capability dropped, no-new-privileges, a pids limit, the job's cpu and
memory limits (swap included, so it cannot hide an out-of-memory), a non-root user, a small
tmpfs at /tmp, and a capped log.

The run path is create, start, wait, remove on the low-level API (the SDK's high-level
``containers.create`` inspects every container it creates). The container is inspected only
when it exits non-zero (to tell an OOM from an ordinary failure) and its log is read only
then. ``containers()``, called by the heartbeat, is where stats are taken. The peak memory
of a run is the kernel's own record, read from the container's cgroup between wait slices:
none for a unit shorter than one slice, or when the daemon cannot see the engine's cgroups.

``pause`` and ``resume`` freeze and thaw every live container of an attempt (``docker
pause``, the cgroup freezer: memory is kept, nothing runs). Time spent paused is not the
unit's: its timeout's deadline moves by it, and the runtime reported leaves it out.
"""

import logging
import os
import threading
import time
from dataclasses import dataclass

import docker
import docker.errors
import requests
import urllib3.exceptions
from docker.types import DeviceRequest, LogConfig, Mount

from dockercomp.protocol.limits import STDERR_TAIL
from dockercomp.protocol.messages import ContainerInfo, ErrorKind
from dockercomp.protocol.quantities import format_size

from . import images, outputfs
from .errors import ClientError
from .runner import LABEL_ATTEMPT, LABEL_CLIENT, LABEL_JOB, LABEL_UNIT, Runner, RunOutcome, RunSpec

log = logging.getLogger(__name__)

MIB = 1024 * 1024
STDERR_TAIL_LINES = 200
# How often a waiting run looks at its cancel event (and at the cgroup's peak memory): the
# latency of an abort, at the cost of one short HTTP request to the engine per slice.
WAIT_SLICE = 0.5
# The heartbeat waits this long at most for the containers' stats; the limits are reported
# without current use when the engine is slower than that.
STATS_BUDGET = 2.0
# An exit by SIGKILL with the peak memory this close to the limit is an out-of-memory even
# when the engine did not flag it (its OOMKilled flag depends on an event it may miss).
OOM_PEAK_RATIO = 0.95
_ENGINE_ERRORS = (docker.errors.DockerException, requests.exceptions.RequestException)
# Where the kernel keeps a container's highest memory use, per cgroup layout (v1 and v2,
# cgroupfs and systemd drivers). Readable when the daemon runs on the engine's host.
_PEAK_FILES = (
    "/sys/fs/cgroup/memory/docker/{id}/memory.max_usage_in_bytes",
    "/sys/fs/cgroup/memory/system.slice/docker-{id}.scope/memory.max_usage_in_bytes",
    "/sys/fs/cgroup/docker/{id}/memory.peak",
    "/sys/fs/cgroup/system.slice/docker-{id}.scope/memory.peak",
)


class _EngineError(ClientError):
    """The engine failed us mid-run; carries the outcome to report."""

    def __init__(self, outcome: RunOutcome) -> None:
        super().__init__(outcome.stderr_tail)
        self.outcome = outcome


@dataclass
class _Live:
    """A container this runner runs now; fields other than spec and id change under the lock."""

    spec: RunSpec
    id: str
    state: str = "created"  # created, running, paused, stopping
    started_at: float = 0.0
    paused_at: float | None = None  # monotonic, while paused
    paused_for: float = 0.0  # seconds paused before paused_at
    cpu_sample: tuple[int, int] | None = None  # (container cpu ns, system cpu ns) last seen


class DockerRunner(Runner):
    """Runs units in sandboxed containers of the local Docker engine.

    Safe to share between the daemon's worker threads: each ``run`` has its own container,
    and the registry of live containers the heartbeat reads is guarded by a lock.
    """

    def __init__(
        self,
        client: docker.DockerClient | None = None,
        *,
        user: str = images.NONROOT_USER,
        pids_limit: int = 256,
        tmp_size: int = 64 * MIB,
        log_size: int = 4 * MIB,
        working_dir: str | None = None,
        wait_slice: float = WAIT_SLICE,
        stats_budget: float = STATS_BUDGET,
    ) -> None:
        """``client`` defaults to the local engine (``images.connect()``, which raises
        ``ImageError`` with what to do when no engine answers). ``working_dir`` None keeps
        the image's own WORKDIR."""
        if pids_limit < 1 or tmp_size < MIB or log_size < MIB:
            raise ValueError("pids_limit must be positive, tmp_size and log_size at least 1 MiB")
        self._client = client if client is not None else images.connect()
        self._api = self._client.api
        self._user = user
        self._pids_limit = pids_limit
        self._tmpfs = {"/tmp": f"rw,noexec,nosuid,nodev,size={tmp_size}"}
        self._log_config = LogConfig(type="json-file", config={"max-size": str(log_size), "max-file": "1"})
        self._working_dir = working_dir
        self._wait_slice = wait_slice
        self._stats_budget = stats_budget
        self._lock = threading.Lock()
        self._live: dict[str, _Live] = {}

    @property
    def engine(self) -> docker.DockerClient:
        """The Docker client containers run on (images are fetched into it)."""
        return self._client

    def engine_version(self) -> str:
        """The engine's version (``docker version``'s Server Version), "" when it does not answer."""
        try:
            return str(self._client.version().get("Version") or "")
        except _ENGINE_ERRORS as exc:
            log.warning("cannot ask the Docker engine its version: %s", exc)
            return ""

    # --- one unit -----------------------------------------------------------------------

    def run(self, spec: RunSpec, cancel: threading.Event) -> RunOutcome:
        where = f"attempt {_printable(spec.attempt)} (job {_printable(spec.job)}, unit {_printable(spec.unit)})"
        if cancel.is_set():
            return RunOutcome(ErrorKind.ABORTED, stderr_tail="aborted before its container was created")
        try:
            _make_writable(spec.output_dir, self._user)
        except OSError as exc:
            log.error("%s: cannot prepare the output directory: %s", where, exc)
            return RunOutcome(ErrorKind.CLIENT, stderr_tail=f"cannot prepare the output directory: {exc}")
        if spec.sidecars:  # a multi-container unit: its containers on a private network of their own
            from .group import run_group  # group.py builds on this module

            return run_group(self, spec, cancel, where)
        container_id: str | None = None
        try:
            container_id = self._create(spec, where)
            with self._lock:
                self._live[container_id] = _Live(spec, container_id)
            return self._start_and_wait(spec, container_id, cancel, where)
        except _EngineError as exc:
            return exc.outcome
        except Exception as exc:  # a bug here must not take the worker thread down
            log.exception("%s: the runner failed", where)
            return RunOutcome(ErrorKind.CLIENT, stderr_tail=f"the runner failed: {type(exc).__name__}: {exc}")
        finally:
            if container_id is not None:
                with self._lock:
                    self._live.pop(container_id, None)
                self._remove(container_id, where)

    def _create(self, spec: RunSpec, where: str, network: str = "") -> str:
        """Create the container, making its image available first when the engine lacks it."""
        try:
            return self._create_container(spec, network)
        except docker.errors.ImageNotFound:
            pass
        except docker.errors.APIError as exc:
            raise _EngineError(self._create_refused(exc, spec, where)) from exc
        except _ENGINE_ERRORS as exc:
            raise _EngineError(_unavailable(exc, where, "creating the container")) from exc
        log.info("%s: image %s is not here; getting it", where, _printable(spec.image))
        try:
            images.ensure_image(self._client, spec.image)
        except images.ImageError as exc:
            log.warning("%s: %s", where, exc)
            raise _EngineError(RunOutcome(ErrorKind.IMAGE_MISSING, stderr_tail=str(exc)[-STDERR_TAIL:])) from exc
        except _ENGINE_ERRORS as exc:
            raise _EngineError(_unavailable(exc, where, f"getting image {spec.image}")) from exc
        try:
            return self._create_container(spec, network)
        except docker.errors.ImageNotFound as exc:
            raise _EngineError(_image_missing(spec.image, exc)) from exc
        except docker.errors.APIError as exc:
            raise _EngineError(self._create_refused(exc, spec, where)) from exc
        except _ENGINE_ERRORS as exc:
            raise _EngineError(_unavailable(exc, where, "creating the container")) from exc

    def _create_container(self, spec: RunSpec, network: str = "") -> str:
        """``network``: a unit's private network (group.py), where the container is ``spec.name``;
        "" for none. The unit's directories are mounted when the spec names them."""
        mounts = []
        if spec.input_dir:
            mounts.append(Mount("/input", os.path.abspath(spec.input_dir), type="bind", read_only=True))
        if spec.output_dir:
            mounts.append(Mount("/output", os.path.abspath(spec.output_dir), type="bind", read_only=False))
        host_config = self._api.create_host_config(
            network_mode=network or "none",
            read_only=True,
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
            pids_limit=self._pids_limit,
            nano_cpus=max(1, round(spec.cpus * 1e9)),
            mem_limit=spec.memory,
            memswap_limit=spec.memory,
            tmpfs=self._tmpfs,
            mounts=mounts,
            log_config=self._log_config,
            auto_remove=False,
            device_requests=[DeviceRequest(count=spec.gpus, capabilities=[["gpu"]])] if spec.gpus else None,
        )
        created = self._api.create_container(
            spec.image,
            command=list(spec.command) or None,
            environment=dict(spec.env) or None,
            user=self._user,
            working_dir=self._working_dir,
            labels={
                LABEL_CLIENT: spec.client,
                LABEL_JOB: spec.job,
                LABEL_UNIT: spec.unit,
                LABEL_ATTEMPT: spec.attempt,
            },
            host_config=host_config,
            networking_config=(
                self._api.create_networking_config({network: self._api.create_endpoint_config(aliases=[spec.name])})
                if network and spec.name
                else None
            ),
        )
        return str(created["Id"])

    def _create_refused(self, exc: docker.errors.APIError, spec: RunSpec, where: str) -> RunOutcome:
        """The engine answered but would not create the container: a reference it cannot
        parse is a missing image; any other refusal (a limit out of range, a bad mount) is
        this client's problem, not the engine's."""
        message = _explain(exc)
        if "reference" in message or isinstance(exc, docker.errors.NotFound):
            return _image_missing(spec.image, exc)
        if exc.is_server_error():
            return _unavailable(exc, where, "creating the container")
        log.error("%s: the engine refused the container: %s", where, message)
        return RunOutcome(ErrorKind.CLIENT, stderr_tail=f"the Docker engine refused the container: {message}")

    def _start_and_wait(self, spec: RunSpec, container_id: str, cancel: threading.Event, where: str) -> RunOutcome:
        short = container_id[:12]
        if cancel.is_set():
            return RunOutcome(ErrorKind.ABORTED, stderr_tail="aborted before its container started")
        started = time.monotonic()
        try:
            self._api.start(container_id)
        except docker.errors.APIError as exc:
            message = _explain(exc)
            code = _exec_failure_code(message)
            if code is not None:  # the unit's command cannot run: its fault, as `docker run` says
                log.info("%s: container %s could not run its command: %s", where, short, message)
                return RunOutcome(ErrorKind.EXIT_NONZERO, exit_code=code, stderr_tail=message[-STDERR_TAIL:])
            if exc.is_server_error():
                return _unavailable(exc, where, "starting the container")
            log.error("%s: the engine refused to start container %s: %s", where, short, message)
            return RunOutcome(
                ErrorKind.CLIENT, stderr_tail=f"the Docker engine refused to start the container: {message}"
            )
        except _ENGINE_ERRORS as exc:
            return _unavailable(exc, where, "starting the container")
        with self._lock:
            live = self._live[container_id]
            live.state, live.started_at = "running", time.time()
        log.info("%s: container %s started (%s)", where, short, _printable(spec.image))
        peak: int | None = None

        def ran() -> float:  # seconds it ran, time paused left out
            return time.monotonic() - started - self._paused_for(container_id)

        while True:
            if cancel.is_set():
                self._kill(container_id, where)
                log.info("%s: container %s aborted", where, short)
                return RunOutcome(ErrorKind.ABORTED, stderr_tail="aborted", runtime=ran(), peak_memory=peak)
            remaining = spec.timeout - ran()  # the deadline moves while the container is paused
            if remaining <= 0:
                self._kill(container_id, where)
                log.info("%s: container %s killed at its timeout of %gs", where, short, spec.timeout)
                return RunOutcome(
                    ErrorKind.TIMEOUT,
                    stderr_tail=f"killed after the unit's timeout of {spec.timeout:g}s",
                    runtime=ran(),
                    peak_memory=peak,
                )
            try:
                status = self._api.wait(container_id, timeout=min(self._wait_slice, remaining))
                break
            except docker.errors.NotFound:
                return _removed_from_outside(where, container_id, ran(), peak)
            except _ENGINE_ERRORS as exc:
                if not _is_read_timeout(exc):
                    return _unavailable(exc, where, "waiting for the container")
            peak = _read_peak(container_id, peak)
            overflow = _output_overflow(spec)
            if overflow:  # the volunteer's disk, filled through the bind mount
                self._kill(container_id, where)
                log.warning("%s: container %s killed: %s", where, short, overflow)
                return RunOutcome(ErrorKind.REFUSED, stderr_tail=f"killed: {overflow}", runtime=ran(), peak_memory=peak)
        runtime = ran()
        code = int(status.get("StatusCode", -1))
        overflow = _output_overflow(spec)  # what it wrote in its last slice
        if overflow:
            log.warning("%s: container %s exited %d: %s", where, short, code, overflow)
            return RunOutcome(ErrorKind.REFUSED, code, f"refused: {overflow}", runtime=runtime, peak_memory=peak)
        if code == 0:
            log.info("%s: container %s exited 0 after %.2fs", where, short, runtime)
            return RunOutcome(None, exit_code=0, runtime=runtime, peak_memory=peak)
        return self._failed(spec, container_id, code, runtime, peak, where)

    def _failed(
        self, spec: RunSpec, container_id: str, code: int, runtime: float, peak: int | None, where: str
    ) -> RunOutcome:
        """A non-zero exit: an out-of-memory kill or the unit's own failure."""
        try:
            state = self._api.inspect_container(container_id).get("State") or {}
            tail = self._api.logs(container_id, stdout=False, stderr=True, tail=STDERR_TAIL_LINES)
        except docker.errors.APIError as exc:
            if exc.is_client_error():  # gone, or going: it was removed as it ended
                return _removed_from_outside(where, container_id, runtime, peak)
            return _unavailable(exc, where, "reading the container's exit")
        except _ENGINE_ERRORS as exc:
            return _unavailable(exc, where, "reading the container's exit")
        stderr = bytes(tail)[-STDERR_TAIL:].decode(errors="replace")
        near_limit = peak is not None and peak >= OOM_PEAK_RATIO * spec.memory
        if state.get("OOMKilled") or (code == 137 and near_limit):
            log.info("%s: container %s ran out of memory (limit %d bytes)", where, container_id[:12], spec.memory)
            note = f"killed: out of memory (limit {spec.memory} bytes)"
            return RunOutcome(
                ErrorKind.OOM,
                exit_code=code,
                stderr_tail=(stderr + "\n" + note)[-STDERR_TAIL:].lstrip("\n"),
                runtime=runtime,
                peak_memory=peak,
            )
        log.info("%s: container %s exited %d after %.2fs", where, container_id[:12], code, runtime)
        return RunOutcome(ErrorKind.EXIT_NONZERO, exit_code=code, stderr_tail=stderr, runtime=runtime, peak_memory=peak)

    def _kill(self, container_id: str, where: str) -> None:
        """SIGKILL. A paused container takes it too (the engine thaws it to deliver a
        SIGKILL); an engine that refuses because it is paused gets an unpause first."""
        with self._lock:
            if container_id in self._live:
                self._live[container_id].state = "stopping"
        try:
            self._api.kill(container_id)
        except docker.errors.APIError as exc:  # it may have ended by itself just now
            message = _explain(exc)
            log.debug("%s: kill %s: %s", where, container_id[:12], message)
            if "paused" in message.lower():
                self._unpause_and_kill(container_id, where)
        except _ENGINE_ERRORS as exc:
            log.warning("%s: cannot kill container %s: %s", where, container_id[:12], exc)

    def _unpause_and_kill(self, container_id: str, where: str) -> None:
        try:
            self._api.unpause(container_id)
            self._api.kill(container_id)
        except _ENGINE_ERRORS as exc:
            log.warning("%s: cannot kill paused container %s: %s", where, container_id[:12], exc)

    # --- pausing ------------------------------------------------------------------------------

    def pause(self, attempt_id: str) -> bool:
        return self._set_paused(attempt_id, True)

    def resume(self, attempt_id: str) -> bool:
        return self._set_paused(attempt_id, False)

    def _set_paused(self, attempt_id: str, paused: bool) -> bool:
        """Bring every live container of the attempt to paused (or running); only those not
        there yet cost an engine call, so asking again is cheap. A container still being
        created, or stopping, is not touched (and makes the answer False while it is so)."""
        have, want = ("running", "paused") if paused else ("paused", "running")
        with self._lock:
            records = [r for r in self._live.values() if r.spec.attempt == attempt_id]
            todo = [r.id for r in records if r.state == have]
            done = bool(records) and all(r.state in (have, want) for r in records)
        for container_id in todo:
            done = self._freeze(container_id, paused) and done
        return done

    def _freeze(self, container_id: str, paused: bool) -> bool:
        """Pause or unpause one container; True when it is in that state now."""
        verb = "pause" if paused else "unpause"
        try:
            (self._api.pause if paused else self._api.unpause)(container_id)
        except docker.errors.APIError as exc:
            message = _explain(exc).lower()
            already = "already paused" in message if paused else "is not paused" in message
            if not already:  # gone, or not running any more: it is ending
                log.debug("%s %s: %s", verb, container_id[:12], message)
                return False
        except _ENGINE_ERRORS as exc:
            log.warning("cannot %s container %s: %s", verb, container_id[:12], exc)
            return False
        now = time.monotonic()
        with self._lock:
            record = self._live.get(container_id)
            if record is None or record.state not in ("running", "paused"):
                return False  # it ended, or is being killed, meanwhile
            changed = (record.paused_at is None) == paused
            if paused and changed:
                record.state, record.paused_at = "paused", now
            elif changed and record.paused_at is not None:
                record.state, record.paused_for = "running", record.paused_for + now - record.paused_at
                record.paused_at = None
            record.cpu_sample = None  # cpu use is measured again from the next sample
            attempt = record.spec.attempt
        if changed:
            log.info("attempt %s: container %s %s", _printable(attempt), container_id[:12],
                     "paused" if paused else "resumed")  # fmt: skip
        return True

    def _paused_for(self, container_id: str) -> float:
        """Seconds the container has spent paused so far."""
        with self._lock:
            record = self._live.get(container_id)
            if record is None:
                return 0.0
            now = time.monotonic()
            return record.paused_for + (now - record.paused_at if record.paused_at is not None else 0.0)

    def _remove(self, container_id: str, where: str) -> None:
        try:
            self._api.remove_container(container_id, v=True, force=True)
        except docker.errors.APIError as exc:
            if exc.status_code not in (404, 409):  # 409: someone else is removing it
                log.warning("%s: cannot remove container %s: %s", where, container_id[:12], _explain(exc))
        except _ENGINE_ERRORS as exc:  # labelled: the next start's remove_leftovers finds it
            log.warning("%s: cannot remove container %s: %s", where, container_id[:12], exc)

    # --- what the heartbeat and the lease ask ---------------------------------------------

    def containers(self) -> list[ContainerInfo]:
        """One entry per live run. Current use comes from one single-sample stats call per
        running container. The engine answers those on its collector's one-second tick, so
        they are taken at once on helper threads, for at most ``stats_budget`` seconds: a
        slow engine never holds the heartbeat. Cpu use is the change since the previous call."""
        with self._lock:
            running = [r.id for r in self._live.values() if r.state == "running"]
        stats: dict[str, dict] = {}
        workers = [
            threading.Thread(target=self._sample, args=(cid, stats), name=f"stats-{cid[:12]}", daemon=True)
            for cid in running
        ]
        for worker in workers:
            worker.start()
        deadline = time.monotonic() + self._stats_budget
        for worker in workers:
            worker.join(max(0.0, deadline - time.monotonic()))
        with self._lock:
            taken = dict(stats)
            infos = []
            for record in self._live.values():
                cpu_percent, memory_usage = _usage(record, taken.get(record.id))
                infos.append(
                    ContainerInfo(
                        container=record.id[:12],
                        attempt=record.spec.attempt,
                        unit=record.spec.unit,
                        job=record.spec.job,
                        image=record.spec.image,
                        cpus=record.spec.cpus,
                        memory=record.spec.memory,
                        state=record.state,
                        started_at=record.started_at,
                        cpu_percent=cpu_percent,
                        memory_usage=memory_usage,
                    )
                )
        return infos

    def _sample(self, container_id: str, into: dict[str, dict]) -> None:
        try:
            sample = self._api.stats(container_id, stream=False, one_shot=True)
        except docker.errors.InvalidVersion:  # an engine older than API 1.41: two samples
            sample = self._stats_or_none(container_id)
        except _ENGINE_ERRORS as exc:  # it may have ended since
            log.debug("stats of %s: %s", container_id[:12], exc)
            return
        if isinstance(sample, dict):
            with self._lock:
                into[container_id] = sample

    def _stats_or_none(self, container_id: str) -> dict | None:
        try:
            return self._api.stats(container_id, stream=False)
        except _ENGINE_ERRORS:
            return None

    def available_images(self) -> list[str]:
        try:
            found = self._api.images()
        except _ENGINE_ERRORS as exc:
            log.warning("cannot list images: %s", exc)
            return []
        return sorted({tag for image in found for tag in image.get("RepoTags") or () if tag != "<none>:<none>"})

    def remove_leftovers(self, client: str | None = None) -> int:
        """Remove our containers that no run of this runner owns (never those running now),
        then our networks (group.py's) that no running attempt owns.
        An engine that does not answer is logged, not raised: the leftovers keep their labels
        and are found on the next start or by ``cleanup``."""
        selector = LABEL_CLIENT if client is None else f"{LABEL_CLIENT}={client}"
        try:
            found = self._api.containers(all=True, filters={"label": selector})
        except _ENGINE_ERRORS as exc:
            log.warning("cannot list leftover containers: %s", exc)
            return 0
        with self._lock:
            ours = set(self._live)
        removed = 0
        for container in found:
            container_id = str(container["Id"])
            if container_id in ours:
                continue
            try:
                self._api.remove_container(container_id, v=True, force=True)
            except docker.errors.NotFound:
                continue
            except _ENGINE_ERRORS as exc:
                log.warning("cannot remove leftover container %s: %s", container_id[:12], exc)
                continue
            labels = container.get("Labels") or {}
            log.info(
                "removed leftover container %s (client %s, attempt %s)",
                container_id[:12],
                labels.get(LABEL_CLIENT),
                labels.get(LABEL_ATTEMPT),
            )
            removed += 1
        with self._lock:
            running = {record.spec.attempt for record in self._live.values()}
        from .group import remove_networks  # group.py builds on this module

        return removed + remove_networks(self._api, selector, running)


def _make_writable(output_dir: str, user: str) -> None:
    """The container's user is not this daemon's: give it the output directory (as root), or
    let anyone write there (the daemon's work directory above it keeps other users out)."""
    uid, _, gid = user.partition(":")
    if os.geteuid() == 0 and uid.isdigit() and (gid.isdigit() or not gid):
        os.chown(output_dir, int(uid), int(gid or uid))
    else:
        os.chmod(output_dir, 0o777)


def _usage(record: _Live, sample: dict | None) -> tuple[float | None, int | None]:
    """Current cpu (percent of one core) and memory use from a stats sample, the docker CLI's
    way: memory without the reclaimable page cache; cpu against the previous sample. Called
    under the lock: it keeps the sample for the next call."""
    if not sample:
        return None, None
    memory_stats = sample.get("memory_stats") or {}
    memory_usage = None
    if "usage" in memory_stats:
        extra = memory_stats.get("stats") or {}
        cache = extra.get("total_inactive_file", extra.get("inactive_file", 0))
        memory_usage = max(0, int(memory_stats["usage"]) - int(cache))
    cpu = sample.get("cpu_stats") or {}
    total, system = (cpu.get("cpu_usage") or {}).get("total_usage"), cpu.get("system_cpu_usage")
    if total is None or system is None:
        return None, memory_usage
    online = cpu.get("online_cpus") or len((cpu.get("cpu_usage") or {}).get("percpu_usage") or ()) or 1
    pre = sample.get("precpu_stats") or {}
    pre_total, pre_system = (pre.get("cpu_usage") or {}).get("total_usage"), pre.get("system_cpu_usage")
    if pre_system is None and record.cpu_sample is not None:
        pre_total, pre_system = record.cpu_sample
    record.cpu_sample = (int(total), int(system))
    if pre_total is None or pre_system is None or system <= pre_system:
        return None, memory_usage
    return max(0.0, (total - pre_total) / (system - pre_system) * online * 100.0), memory_usage


def _output_overflow(spec: RunSpec) -> str:
    """Why the unit's /output holds more than it may (``spec.output_limit``), or "". On a file
    system of its own (outputfs), that file system all but full; and in any case, counted as
    the disk it takes: the blocks of every entry, at least 4 KiB each (an inode, a block), so
    many small files count too and the walk is short (it stops once past the bound). A
    directory this daemon cannot list is refused too: it could neither measure nor remove it."""
    limit, root = spec.output_limit, spec.output_dir
    if not limit or not root:
        return ""
    too_much = f"/output holds more than {format_size(limit)}, all this volunteer allows (max_result)"
    if os.path.ismount(root) and outputfs.full(root, limit):  # its own file system: hidden files count too
        return too_much
    used, todo = 0, [root]
    while todo:
        path = todo.pop()
        try:
            with os.scandir(path) as entries:
                for entry in entries:
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except FileNotFoundError:  # removed meanwhile
                        continue
                    used += max(st.st_blocks * 512, 4096)
                    if used > limit:
                        return too_much
                    if entry.is_dir(follow_symlinks=False):
                        todo.append(entry.path)
        except FileNotFoundError:
            continue
        except OSError as exc:
            where = "/output" + path[len(root) :]
            return f"{where} cannot be measured ({exc.strerror or exc}); this volunteer bounds /output (max_result)"
    return ""


def _read_peak(container_id: str, previous: int | None) -> int | None:
    """The container's highest memory use so far, read from its cgroup on this host (no API
    call); ``previous`` when the cgroup is not visible here."""
    for pattern in _PEAK_FILES:
        try:
            with open(pattern.format(id=container_id), encoding="ascii") as f:
                value = int(f.read().strip())
        except (OSError, ValueError):
            continue
        return max(value, previous or 0)
    return previous


def _printable(text: str) -> str:
    """An id as it may appear in a log line: ids come from the master, and a newline in one
    must not forge a line of the log."""
    return text if text.isprintable() else ascii(text)


def _is_read_timeout(exc: BaseException) -> bool:
    """A wait slice ran out (requests raises it as a ConnectionError over a Unix socket)."""
    if isinstance(exc, requests.exceptions.ReadTimeout):
        return True
    if isinstance(exc, requests.exceptions.ConnectionError):
        return any(isinstance(arg, urllib3.exceptions.ReadTimeoutError) for arg in exc.args)
    return False


def _exec_failure_code(message: str) -> int | None:
    """The exit code ``docker run`` gives a command the runtime could not execute."""
    if "exec:" not in message:
        return None
    if "executable file not found" in message or "no such file or directory" in message:
        return 127
    if "permission denied" in message:
        return 126
    return None


def _explain(exc: docker.errors.APIError) -> str:
    explanation = exc.explanation
    if isinstance(explanation, bytes):
        explanation = explanation.decode(errors="replace")
    return str(explanation or exc)


def _image_missing(image: str, exc: BaseException) -> RunOutcome:
    message = _explain(exc) if isinstance(exc, docker.errors.APIError) else str(exc)
    text = f"image {image!r} is not available: {message}"
    return RunOutcome(ErrorKind.IMAGE_MISSING, stderr_tail=text[-STDERR_TAIL:])


def _removed_from_outside(where: str, container_id: str, runtime: float, peak: int | None) -> RunOutcome:
    log.warning("%s: container %s was removed from outside the daemon", where, container_id[:12])
    return RunOutcome(
        ErrorKind.ABORTED,
        stderr_tail="the container was removed from outside the daemon",
        runtime=runtime,
        peak_memory=peak,
    )


def _unavailable(exc: BaseException, where: str, doing: str) -> RunOutcome:
    if isinstance(exc, docker.errors.APIError):
        text = f"the Docker engine failed while {doing}: {_explain(exc)}"
    elif isinstance(exc, requests.exceptions.ConnectionError):
        text = f"the Docker engine did not answer while {doing} (is it running?): {exc}"
    else:
        text = f"talking to the Docker engine failed while {doing}: {type(exc).__name__}: {exc}"
    log.warning("%s: %s", where, text)
    return RunOutcome(ErrorKind.DOCKER_UNAVAILABLE, stderr_tail=text[-STDERR_TAIL:])
