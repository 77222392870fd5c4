"""The heartbeat: tells the master this client is alive and what it runs (slots, and each
attempt's container with its limits and current use, and whether the volunteer paused the
client), and carries back the master's commands: abort an attempt it no longer wants
(released, or its unit decided elsewhere), pause one whose job is suspended, resume it when
the job runs again. The master may repeat a command on every beat: obeying twice is harmless."""

import logging
import threading
from collections.abc import Callable
from typing import Any

from dockercomp.protocol.messages import Action, ContainerInfo, Heartbeat

from .attempt import Attempt
from .errors import MasterError
from .master import MasterSession
from .pause import Pauser
from .runner import Runner
from .settings import free_disk
from .slots import Slots

log = logging.getLogger(__name__)


class HeartbeatLoop:
    def __init__(
        self,
        master: MasterSession,
        call: Callable[..., Any],
        runner: Runner,
        slots: Slots,
        *,
        registered: threading.Event,
        finished: threading.Event,
        halt: threading.Event,
        count: Callable[[str], None],
        pauser: Pauser | None = None,
        work_dir: str = "",
    ) -> None:
        """``call`` sends a request as this client; the loop starts once ``registered`` and
        ends when ``finished``; ``count`` tallies attempts dropped by an abort; ``pauser``
        takes the master's pause and resume (None: they are ignored); the free disk of
        ``work_dir`` is what the beat says this client has for units."""
        self.master = master
        self.call = call
        self.runner = runner
        self.slots = slots
        self.registered = registered
        self.finished = finished
        self.halt = halt
        self.count = count
        self.pauser = pauser
        self.work_dir = work_dir
        self.interval = 10.0  # as the master says, in each reply
        self.last: list[ContainerInfo] = []  # what the last beat reported

    def loop(self) -> None:
        while not self.registered.wait(0.1):
            if self.finished.is_set():
                return
        while not self.finished.is_set():
            containers = self.last = self.containers()
            paused = self.pauser is not None and self.pauser.client_paused
            beat = Heartbeat(self.slots.slots, len(containers), containers, paused=paused, memory=self.slots.memory,
                             gpus=self.slots.gpus, disk=free_disk(self.work_dir) if self.work_dir else 0)  # fmt: skip
            try:
                reply = self.call(self.master.heartbeat, beat, tries=1, until=self.halt)
            except MasterError as exc:  # the next beat is the retry
                log.warning("heartbeat failed: %s", exc)
            else:
                self.interval = max(0.05, reply.interval)
                for command in reply.commands:
                    self.obey(command.action, command.attempt)
            self.finished.wait(self.interval)

    def containers(self) -> list[ContainerInfo]:
        """Our attempts as containers: the runner's view where it has one (with current use),
        else what the daemon knows (an attempt still fetching its inputs)."""
        try:
            live = {c.attempt: c for c in self.runner.containers()}
        except Exception as exc:
            log.warning("cannot list our containers: %s", exc)
            live = {}
        return [live.get(a.id) or _container_of(a) for a in self.slots.running()]

    def cpu_share(self) -> float:
        """The cpus our running containers used at the last beat (their limit when unknown)."""
        return sum(
            c.cpus if c.cpu_percent is None else min(c.cpus, c.cpu_percent / 100.0)
            for c in self.last
            if c.state == "running" and c.container
        )

    def obey(self, action: str, attempt_id: str) -> None:
        if action in (Action.PAUSE, Action.RESUME) and self.pauser is not None:
            self.pauser.order(action, attempt_id)
            return
        if action != Action.ABORT:
            log.warning("ignoring the master's unknown command %r", action[:40])
            return
        attempt, ran = self.slots.abort(attempt_id)
        if attempt is None:
            log.info("the master says abort attempt %s, which is not here (any more)", attempt_id[:40])
        elif ran:
            log.info("%s: the master says abort; stopping it", attempt)
        else:
            log.info("%s: the master says abort; dropped from the queue", attempt)
            self.count("aborted")


def _container_of(a: Attempt) -> ContainerInfo:
    """An attempt without a container yet (fetching its inputs), as the heartbeat shows it."""
    g = a.grant
    return ContainerInfo("", g.attempt, g.unit, g.job, g.image, g.cpus, g.memory, a.phase, a.started_at)
