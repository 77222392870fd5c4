"""The volunteer's controls and the pause reasons, piece by piece: run hours, the idle gate and
its hysteresis, the pauser keeping the master's and the volunteer's reasons apart, slots that
start nothing while paused and only what fits, the heartbeat's commands, the status view and
the command line. A stub runner stands in for Docker here (tests/client/test_pause.py and
tests/e2e/test_volunteer_pause.py use the real one)."""

import fcntl
import logging
import os
import threading
import time
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from dockercomp.cli import main
from dockercomp.client import pause, status
from dockercomp.client.attempt import Attempt
from dockercomp.client.heartbeat import HeartbeatLoop
from dockercomp.client.pause import IdleGate, Pauser, Schedule
from dockercomp.client.runner import Runner, RunOutcome, RunSpec
from dockercomp.client.settings import ClientSettings, host_gpus, parse_run_hours
from dockercomp.client.slots import Slots
from dockercomp.protocol.messages import Command, ContainerInfo, Grant, HeartbeatReply
from dockercomp.settings import SettingsError, load_settings

MIB = 1 << 20


class FakeRunner(Runner):
    """Containers by attempt: ``live`` ones may be paused; what was asked is recorded."""

    def __init__(self) -> None:
        self.live: set[str] = set()
        self.frozen: set[str] = set()
        self.calls: list[tuple[str, str]] = []

    def pause(self, attempt_id: str) -> bool:
        if attempt_id not in self.live:
            return False
        if attempt_id not in self.frozen:
            self.calls.append(("pause", attempt_id))
            self.frozen.add(attempt_id)
        return True

    def resume(self, attempt_id: str) -> bool:
        if attempt_id not in self.live:
            return False
        if attempt_id in self.frozen:
            self.calls.append(("resume", attempt_id))
            self.frozen.discard(attempt_id)
        return True

    def run(self, spec: RunSpec, cancel: threading.Event) -> RunOutcome:
        raise NotImplementedError

    def containers(self) -> list[ContainerInfo]:
        return []

    def available_images(self) -> list[str]:
        return []

    def remove_leftovers(self, client: str | None = None) -> int:
        return 0


def grant(attempt: str, cpus: float = 1.0, memory: int = 64 * MIB, deadline: float = 600.0) -> Grant:
    return Grant(
        attempt=attempt, job="j", unit=f"u-{attempt}", kind="map", image="sha256:" + "ab" * 32, command=[], env={},
        cpus=cpus, memory=memory, timeout=60.0, deadline=time.time() + deadline, inputs=[],
    )  # fmt: skip


def settings(tmp_path: Path, **values: Any) -> ClientSettings:
    return ClientSettings(work_dir=str(tmp_path), allow_unsigned=True, memory="1GiB", slots=2, **values)


def take_now(slots: Slots, wait: float = 0.3) -> Attempt | None:
    """What a worker would take within ``wait`` seconds (None: nothing may start)."""
    got: list[Attempt | None] = [None]
    stop = threading.Event()

    def worker() -> None:
        while not stop.is_set():
            attempt, _ = slots.take(stop)
            if attempt is not None:
                got[0] = attempt
                return

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join(wait)
    stop.set()
    slots.notify()
    thread.join(5)
    return got[0]


# -- run hours ------------------------------------------------------------------------------------


def test_run_hours_are_ranges_of_local_time_that_may_wrap_midnight() -> None:
    assert parse_run_hours("") == ()
    assert parse_run_hours("22:00-07:00, 12:00-13:30") == ((22 * 60, 7 * 60), (12 * 60, 13 * 60 + 30))
    assert parse_run_hours("0:00-24:00") == ((0, 24 * 60),)
    schedule = Schedule(parse_run_hours("22:00-07:00,12:00-13:30"))
    allowed = {hhmm: schedule.allows(datetime(2026, 1, 1, *hhmm)) for hhmm in
               [(23, 30), (0, 0), (6, 59), (7, 0), (12, 15), (13, 30), (21, 59), (22, 0)]}  # fmt: skip
    assert allowed == {
        (23, 30): True, (0, 0): True, (6, 59): True, (7, 0): False,
        (12, 15): True, (13, 30): False, (21, 59): False, (22, 0): True,
    }  # fmt: skip


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("9-17", "is not a range of local times"),
        ("22:60-23:00", "is not a range of local times"),
        ("25:00-01:00", "is not a range of local times"),
        ("24:30-01:00", "24:00 is the latest"),
        ("10:00-10:00", "starts where it ends"),
    ],
)
def test_bad_run_hours_are_refused_with_what_is_wrong(text: str, fragment: str) -> None:
    with pytest.raises(SettingsError, match=fragment):
        load_settings(ClientSettings, "client", None, {"run_hours": text})


def test_a_bad_idle_load_is_refused() -> None:
    with pytest.raises(SettingsError, match="idle_load must be a load average"):
        load_settings(ClientSettings, "client", None, {"idle_load": -1.0})


def test_the_daemon_refuses_bad_controls_with_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["client", "--work-dir", str(tmp_path), "--run-hours", "9-17"]) == 2
    assert "run_hours: '9-17' is not a range of local times" in capsys.readouterr().err
    assert main(["client", "--work-dir", str(tmp_path), "--idle-load", "-2"]) == 2
    assert "idle_load must be a load average" in capsys.readouterr().err


# -- the idle gate ----------------------------------------------------------------------------------


class Load:
    def __init__(self) -> None:
        self.value = 0.0

    def __call__(self) -> tuple[float, float, float]:
        return (self.value, self.value, self.value)


def test_the_idle_gate_looks_every_interval_with_hysteresis() -> None:
    load = Load()
    gate = IdleGate(1.5, 30.0, load)
    seen = []
    for t, value in [(0, 2.0), (10, 0.0), (30, 1.3), (60, 1.0), (90, 1.4), (100, 9.0), (120, 1.6)]:
        load.value = value
        seen.append(gate.check(float(t)))
    # busy at once; 10s later not looked at again; 1.3 is below 1.5 but not below 0.75 x 1.5;
    # 1.0 is; 1.4 stays idle (below the threshold); 9.0 between two looks is not seen; 1.6 is busy
    assert seen == [False, False, False, True, True, True, False]


def test_our_own_containers_share_of_the_load_is_not_counted_as_someone_elses() -> None:
    load = Load()
    gate = IdleGate(1.5, 30.0, load)
    for t in range(0, 601, 5):  # two cpus of ours for ten minutes: the load average shows them
        gate.track(2.0, float(t))
    assert gate.share == pytest.approx(2.0, abs=0.01)
    load.value = 2.5
    assert gate.check(600.0) and gate.others == pytest.approx(0.5, abs=0.01)
    for t in range(605, 661, 5):  # paused: the load average forgets ours over a minute, as the kernel's does
        gate.track(0.0, float(t))
    assert gate.share == pytest.approx(2.0 * 2.718281828**-1, abs=0.01)


# -- the pauser: two kinds of reason ----------------------------------------------------------------


@pytest.fixture
def pauser(tmp_path: Path) -> Pauser:
    slots = Slots(2, 1 << 30)
    return Pauser(FakeRunner(), slots, str(tmp_path), settings(tmp_path))


def running(p: Pauser, attempt_id: str, container: bool = True) -> Attempt:
    (attempt,) = p.slots.add([grant(attempt_id)])
    assert take_now(p.slots) is attempt
    if container:
        p.runner.live.add(attempt_id)  # type: ignore[attr-defined]
    return attempt


def test_the_masters_pause_and_the_volunteers_are_two_reasons(pauser: Pauser, tmp_path: Path) -> None:
    runner: FakeRunner = pauser.runner  # type: ignore[assignment]
    running(pauser, "a1")
    running(pauser, "a2")
    assert pauser.order("pause", "a1")
    pauser.tick()
    assert runner.frozen == {"a1"} and pauser.paused == {"a1"}
    assert pauser.order("pause", "a1"), "a repeated command is harmless"
    pauser.tick()
    assert runner.calls == [("pause", "a1")]

    assert pause.request_pause(str(tmp_path))
    assert not pause.request_pause(str(tmp_path)), "paused already"
    pauser.tick()
    assert runner.frozen == {"a1", "a2"} and pauser.client_paused
    assert "volunteer" in pauser.reasons

    pauser.order("resume", "a1")  # the master's reason goes, the volunteer's holds
    pauser.tick()
    assert runner.frozen == {"a1", "a2"}

    pauser.order("pause", "a2")
    assert pause.request_resume(str(tmp_path))
    assert not pause.request_resume(str(tmp_path)), "not paused any more"
    pauser.tick()
    assert runner.frozen == {"a2"}, "the master still wants a2 paused"
    assert not pauser.client_paused and pauser.paused == {"a2"}
    pauser.order("resume", "a2")
    pauser.tick()
    assert runner.frozen == set() and pauser.paused == frozenset()


def test_an_order_for_an_attempt_not_here_is_logged_and_ignored(
    pauser: Pauser, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO):
        assert not pauser.order("pause", "nowhere")
    assert "which is not here" in caplog.text
    assert pauser.slots.held_ids() == set()


def test_a_container_that_starts_after_its_pause_is_paused_at_once(pauser: Pauser) -> None:
    runner: FakeRunner = pauser.runner  # type: ignore[assignment]
    running(pauser, "a1", container=False)  # still fetching its inputs
    pauser.order("pause", "a1")
    pauser.tick()
    assert runner.frozen == set() and pauser.paused == frozenset()
    runner.live.add("a1")  # its container started
    pauser.tick()
    assert runner.frozen == {"a1"} and pauser.paused == {"a1"}


def test_a_queued_grant_the_master_paused_is_not_started_until_resumed(pauser: Pauser) -> None:
    (attempt,) = pauser.slots.add([grant("q1")])
    assert pauser.order("pause", "q1")
    assert take_now(pauser.slots) is None
    pauser.order("resume", "q1")
    assert take_now(pauser.slots) is attempt


def test_a_paused_client_leases_nothing_and_starts_nothing(pauser: Pauser, tmp_path: Path) -> None:
    slots = pauser.slots
    assert slots.wanted() == (2, 2.0, 1 << 30)
    pause.request_pause(str(tmp_path))
    pauser.tick()
    assert slots.paused and slots.wanted() is None
    (attempt,) = slots.add([grant("q1")])
    assert take_now(slots) is None
    pause.request_resume(str(tmp_path))
    pauser.tick()
    assert take_now(slots) is attempt


def test_a_queued_grant_is_released_unstarted_when_its_deadline_comes_near_while_paused(pauser: Pauser) -> None:
    slots = pauser.slots
    slots.pause_all(True)
    (attempt,) = slots.add([grant("q1", deadline=0.4)])  # released by a quarter of its time before
    time.sleep(0.4)
    assert slots.stale() == [attempt] and slots.queued() == []


def test_outside_the_run_hours_and_when_busy_the_client_is_paused(tmp_path: Path) -> None:
    now = [datetime(2026, 1, 1, 12, 0)]
    p = Pauser(FakeRunner(), Slots(2, 1 << 30), str(tmp_path), settings(tmp_path, run_hours="22:00-07:00"),
               now=lambda: now[0])  # fmt: skip
    p.tick()
    assert p.reasons == {"schedule": "outside the run hours 22:00-07:00"}
    now[0] = datetime(2026, 1, 1, 23, 0)
    p.tick()
    assert p.reasons == {}

    busy = Pauser(FakeRunner(), Slots(2, 1 << 30), str(tmp_path), settings(tmp_path, idle_load=1.5))
    assert busy.idle is not None
    busy.idle.loadavg = lambda: (50.0, 50.0, 50.0)
    busy.tick()
    assert list(busy.reasons) == ["idle"] and "load of others 50.00" in busy.reasons["idle"]


# -- every grant within what was donated ------------------------------------------------------------


def test_a_queued_grant_starts_only_when_it_fits_beside_those_running() -> None:
    slots = Slots(2, 1 << 30)
    (big,) = slots.add([grant("big", memory=768 * MIB)])
    assert take_now(slots) is big
    (second,) = slots.add([grant("second", memory=512 * MIB)])  # a prefetched one: 1280MiB with the first
    assert take_now(slots) is None
    (small,) = slots.add([grant("small", memory=128 * MIB)])
    assert take_now(slots) is small, "a smaller one that fits goes first"
    slots.done(big)
    slots.done(small)
    assert take_now(slots) is second


def test_a_grant_larger_than_all_that_was_donated_goes_at_once_to_be_refused() -> None:
    slots = Slots(2, 1 << 30)
    (first,) = slots.add([grant("first")])
    assert take_now(slots) is first
    (huge,) = slots.add([grant("huge", cpus=4.0)])
    assert take_now(slots) is huge


# -- the heartbeat ---------------------------------------------------------------------------------


def test_the_heartbeat_hands_pause_and_resume_on_and_says_when_the_client_is_paused(
    pauser: Pauser, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    running(pauser, "a1")
    beats = []
    replies = iter([
        HeartbeatReply([Command("pause", "a1"), Command("explode", "a1")], interval=0.05),
        HeartbeatReply([Command("pause", "a1")], interval=0.05),
    ])  # fmt: skip
    registered, finished = threading.Event(), threading.Event()
    registered.set()

    def call(fn: Any, beat: Any, **kw: Any) -> HeartbeatReply:
        beats.append(beat)
        reply = next(replies, None)
        if reply is None:
            finished.set()
            return HeartbeatReply([], interval=0.05)
        if len(beats) == 2:
            pause.request_pause(str(tmp_path))
            pauser.tick()
        return reply

    master = SimpleNamespace(heartbeat=None)
    loop = HeartbeatLoop(master, call, pauser.runner, pauser.slots, registered=registered,  # type: ignore[arg-type]
                         finished=finished, halt=threading.Event(), count=lambda what: None, pauser=pauser)  # fmt: skip
    with caplog.at_level(logging.INFO):
        loop.loop()
    assert pauser.slots.held_ids() == {"a1"}
    assert "ignoring the master's unknown command 'explode'" in caplog.text
    assert [b.paused for b in beats] == [False, False, True]


# -- what the volunteer sees and types -----------------------------------------------------------------


def test_the_status_says_paused_and_why() -> None:
    data = {"state": "paused", "pid": os.getpid(), "updated_at": time.time(),
            "paused": ["by the volunteer (dockercomp client resume)", "outside the run hours 22:00-07:00"]}  # fmt: skip
    shown = status.render(data)
    assert "state    paused by the volunteer (dockercomp client resume); outside the run hours 22:00-07:00" in shown


def test_a_running_daemon_is_told_by_its_lock(tmp_path: Path) -> None:
    assert not status.daemon_running(str(tmp_path / "nowhere"))
    (tmp_path / "lock").touch()
    assert not status.daemon_running(str(tmp_path))
    with open(tmp_path / "lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert status.daemon_running(str(tmp_path))
    assert not status.daemon_running(str(tmp_path))


def test_pause_and_resume_without_a_daemon_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for verb in ("pause", "resume"):
        assert main(["client", verb, "--work-dir", str(tmp_path)]) == 2
        assert f"no client daemon uses the work directory {tmp_path}" in capsys.readouterr().err
    assert not pause.pause_requested(str(tmp_path)), "nothing was written"


def test_gpus_are_donated_counted_and_held_like_cpus(tmp_path) -> None:
    assert ClientSettings(gpus=None).gpu_count == host_gpus()
    with pytest.raises(SettingsError, match="gpus must be from 0 to 16"):
        ClientSettings(gpus=17, work_dir=str(tmp_path)).validate()
    slots = Slots(4, 1 << 30, gpus=1)

    def gpu_grant(attempt: str) -> Grant:
        return Grant(attempt, "j", "u", "map", "img", [], {}, 1.0, 1 << 20, 10.0, time.time() + 600, [], gpus=1)

    first, second = slots.add([gpu_grant("g1"), gpu_grant("g2")])
    assert slots.free_gpus() == 0  # both queued ask for the one GPU
    assert slots._may_start(first)
    slots._active[first.id] = first
    assert not slots._may_start(second)  # waits for the GPU, not refused
