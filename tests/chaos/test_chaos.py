"""Chaos and lies on real processes: a master killed with SIGKILL mid-job and started again on
its data, volunteer daemons killed mid-unit, a proxy that flips bytes between volunteers and
the master, and liars among twenty volunteers. Each test checks, through the master's API,
that no unit was lost, no canonical result was wrong or changed, and that the job's output is
the one its inputs give (computed here)."""

import random
import re
import signal
import socket
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import requests

from tests.e2e.cluster import Daemons, clients, publish, submit
from tests.masters import OPERATOR_TOKENS, MasterFactory, MasterProcess, check_clean_exit, push_stub_image, start_master
from tests.sim import Fleet, SimClient, compute, create_job, digest, job_file, job_status, job_units, wait_for, wait_job

from .proxy import FlipProxy
from .volunteers import Volunteer, collusion

pytestmark = pytest.mark.slow

SEED = 1729  # every random choice of this module comes from it

# A master that notices quickly: silent clients lose their leases after HEARTBEAT_TIMEOUT, the
# reaper looks every REAP seconds; daemons are told to heartbeat every HEARTBEAT_INTERVAL.
HEARTBEAT_INTERVAL = 0.3
HEARTBEAT_TIMEOUT = 3.0
REAP = 0.2
MARGIN = 2.0  # what "within one heartbeat window" allows past HEARTBEAT_TIMEOUT on this busy machine


def results(master_url: str, job: str) -> bytes:
    response = requests.get(f"{master_url}/api/v1/jobs/{job}/results", headers=_auth(master_url), timeout=30)
    assert response.status_code == 200, response.text
    return response.content


def _auth(url: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {OPERATOR_TOKENS[url]}"}


def chunks_of(n: int, rng: random.Random, verb: str = "chunk") -> list[bytes]:
    """``n`` distinct chunks of a few dozen to a few hundred bytes."""
    return [b"%s %04d %s\n" % (verb.encode(), i, rng.randbytes(rng.randrange(8, 160)).hex().encode()) for i in range(n)]


def fleet(volunteers: Iterable[SimClient]) -> Fleet:
    """Run the volunteers in threads (tests/sim.py's Fleet: it fails if one of them hit an error)."""
    return Fleet(list(volunteers))


def wait_final(url: str, job: str, timeout: float, settle: float = 5 * REAP) -> dict[str, Any]:
    """Wait until the job ends and stays ended for ``settle`` seconds: a done job runs again when
    the reaper reopens a unit whose quorum rested on a volunteer found out since. On a timeout,
    the units still open are named, with their attempts."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            status = wait_job(url, job, timeout=max(0.1, deadline - time.monotonic()))
        except AssertionError as exc:
            open_units = [
                f"unit {u['index']} {u['state']}: " + ", ".join(f"{a['client']} {a['state']} {a['error'] or ''}"
                                                               for a in u["attempts"])
                for u in job_units(url, job) if u["state"] not in ("done", "failed", "cancelled")
            ]  # fmt: skip
            raise AssertionError(f"{exc}; open units:\n" + "\n".join(open_units)) from None
        time.sleep(settle)
        again = job_status(url, job)
        if again["state"] == status["state"] and again["units"] == status["units"]:
            return again


def check_units(units: list[dict[str, Any]], right: list[bytes]) -> None:
    """Every unit is listed once and done, with the right canonical output; every output the
    master took as valid is the right one."""
    assert sorted(u["index"] for u in units) == list(range(len(right))), "a unit is missing or listed twice"
    assert len({u["id"] for u in units}) == len(right)
    for unit in units:
        want = digest(right[unit["index"]])
        assert unit["state"] == "done" and unit["output"] == want, unit
        assert all(a["output"] == want for a in unit["attempts"] if a["validity"] == "valid"), unit


# -- 1. the master killed mid-job ----------------------------------------------------------------


class Restartable:
    """One master's data directory and port, served by one process after another: ``start``,
    ``kill`` (SIGKILL: no handler runs, nothing is flushed), ``start`` again."""

    def __init__(self, tmp: Path, *flags: str) -> None:
        self.tmp, self.flags = tmp, flags
        self.data_dir = tmp / "data"
        with socket.socket() as s:  # a port of its own, kept over restarts: volunteers keep their URL
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.runs: list[MasterProcess] = []

    def start(self) -> MasterProcess:
        master = start_master(self.tmp / f"run-{len(self.runs)}", "--port", str(self.port), *self.flags,
                              data_dir=self.data_dir)  # fmt: skip
        OPERATOR_TOKENS[master.url] = master.token
        self.runs.append(master)
        return master

    def kill(self) -> None:
        proc = self.runs[-1].proc
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(10) == -signal.SIGKILL

    def close(self) -> None:
        """The last master stops cleanly (unless a failed test left it killed); no run logged a traceback."""
        for run in self.runs[:-1]:
            assert "Traceback" not in run.log(), f"master run logged a traceback:\n{run.log()[-8000:]}"
        if self.runs and self.runs[-1].proc.poll() != -signal.SIGKILL:
            check_clean_exit(self.runs[-1])


KILLS = 3
KILL_UNITS = 240


def test_the_master_killed_three_times_mid_job_loses_and_changes_nothing(tmp_path: Path) -> None:
    """Six volunteers work on a job of 240 units at replicas 2; the master is killed with
    SIGKILL three times at seeded moments (each time some units are done and some leased) and
    started again on the same SQLite file and port. Before each kill every decided unit's
    canonical hash is noted: after each restart and at the end none has changed, no unit is
    lost or listed twice, every unit ends done, and the job's output is byte for byte the
    one its inputs give."""
    rng = random.Random(SEED)
    chunks = chunks_of(KILL_UNITS, rng)
    right = [compute("map", [c]) for c in chunks]
    # leases live 2s past a 2s unit timeout, a silent volunteer loses its leases after 2s
    masters = Restartable(tmp_path, "--open-enrollment", "--reap-interval", str(REAP), "--heartbeat-timeout", "2",
                          "--lease-slack", "2")  # fmt: skip
    try:
        master = masters.start()
        push_stub_image(master)
        spec = job_file("chaos-kill", redundancy={"replicas": 2, "quorum": 2, "max_attempts": 6},
                        resources={"timeout": "2s"})  # fmt: skip
        job = create_job(master.url, spec, chunks)
        volunteers = [
            Volunteer(master.url, f"volunteer-{i}", batch=3, think=0.12, seed=SEED + i, heartbeat_every=0.3)
            for i in range(6)
        ]
        decided: dict[str, str] = {}  # unit id -> its canonical hash, as seen before a kill
        kills: list[Counter[str]] = []
        moments = sorted(rng.uniform(0.1, 0.75) for _ in range(KILLS))
        with fleet(volunteers):
            for moment in moments:
                threshold = int(moment * KILL_UNITS)
                wait_for(lambda: job_status(master.url, job)["units"]["done"] >= threshold, 90,  # noqa: B023
                         f"{threshold} units done")  # fmt: skip
                time.sleep(rng.uniform(0.0, 0.4))
                units = job_units(master.url, job)
                states = Counter(u["state"] for u in units)
                assert states["done"] and states["running"], f"not mid-job: {states}"
                for unit in units:
                    if unit["state"] == "done":
                        assert decided.setdefault(unit["id"], unit["output"]) == unit["output"], unit
                masters.kill()
                kills.append(states)
                time.sleep(rng.uniform(0.2, 1.5))  # the master stays away a while
                master = masters.start()
                after = {u["id"]: u for u in job_units(master.url, job)}
                assert len(after) == KILL_UNITS, "units lost in the restart"
                changed = {i: (h, after[i]["output"]) for i, h in decided.items() if after[i]["output"] != h}
                assert not changed, f"canonical results changed by the restart: {changed}"
                assert all(after[i]["state"] == "done" for i in decided)
            status = wait_job(master.url, job, timeout=120)
        assert status["state"] == "done" and status["units"]["done"] == KILL_UNITS, status
        units = job_units(master.url, job)
        check_units(units, right)
        assert all(decided[u["id"]] == u["output"] for u in units if u["id"] in decided)
        assert results(master.url, job) == b"".join(right)
        # replicas still went to distinct volunteers: a restart hands nobody a unit twice
        per_client = Counter((u["id"], a["client"]) for u in units for a in u["attempts"] if a["state"] != "released")
        assert max(per_client.values()) == 1
        assert all(v.outages for v in volunteers), "a volunteer never noticed the master was away"
        assert len(masters.runs) == KILLS + 1
        print(f"\nmaster kills: {len(kills)} at {[dict(k) for k in kills]}; {len(decided)} decided units "
              f"checked across restarts, {KILL_UNITS} units done, 0 changed")  # fmt: skip
    finally:
        masters.close()


# -- 2. volunteer daemons killed mid-unit ----------------------------------------------------------


def quick_master(master_factory: MasterFactory, tmp_path: Path, *flags: str) -> MasterProcess:
    """A master that tells daemons to heartbeat every HEARTBEAT_INTERVAL and times out the
    leases of one silent for HEARTBEAT_TIMEOUT."""
    config = tmp_path / "master.toml"
    config.write_text(f"[server]\nheartbeat_interval = {HEARTBEAT_INTERVAL}\n")
    return master_factory("--reap-interval", str(REAP), "--heartbeat-timeout", str(HEARTBEAT_TIMEOUT),
                          "--config", str(config), *flags)  # fmt: skip


def probe_job(image: str, replicas: int = 1, quorum: int = 1, timeout: str = "30s") -> dict[str, Any]:
    return {"name": "chaos-probe", "image": image, "resources": {"cpus": 1, "memory": "64MiB", "timeout": timeout},
            "redundancy": {"replicas": replicas, "quorum": quorum, "max_attempts": replicas + 3}}  # fmt: skip


def running_containers(daemons: Daemons, daemon: Any) -> list[dict[str, Any]]:
    return [c for c in daemons.containers(daemon.client) if c["State"] == "running"]


def test_daemons_killed_mid_unit_lose_their_units_to_the_others_within_a_heartbeat_window(
    master_factory: MasterFactory,
    daemons: Daemons,
    probe_image: str,
    no_container_left_behind: None,
    tmp_path: Path,
) -> None:
    """Two daemons hold every unit of a job (one running in a container, one queued each) when
    both are killed with SIGKILL; two idle daemons wait beside them. The master hears nothing
    more: within HEARTBEAT_TIMEOUT plus a small margin each lease times out and its unit is
    leased to one of the others (the leases' own deadlines are a minute and a half away), and
    the job ends with the right output. The killed daemons, started again, remove the
    containers they left."""
    master = quick_master(master_factory, tmp_path, "--lease-slack", "60")
    publish(master, probe_image)
    victims = [daemons.start(master, f"victim-{i}", slots=1) for i in range(2)]
    chunks = [b"sleep 10 unit %d\n" % i for i in range(4)]
    job, _ = submit(master, probe_job(probe_image), chunks)

    def victims_hold_everything() -> bool:
        units = job_units(master.url, job)
        held = {a["client"] for u in units for a in u["attempts"] if a["state"] == "leased"}
        return all(u["state"] == "running" for u in units) and held == {v.client for v in victims}

    wait_for(victims_hold_everything, 60, "the victims to lease every unit")
    wait_for(lambda: all(running_containers(daemons, v) for v in victims), 60, "a container of each victim to run")
    others = [daemons.start(master, f"survivor-{i}", slots=2, wait=False) for i in range(2)]
    for daemon in others:
        daemons.wait_registered(daemon)
    assert all(running_containers(daemons, v) for v in victims), "a victim's unit ended before the kill"
    try:
        for victim in victims:
            victim.kill()
        killed_at = time.time()
        status = wait_job(master.url, job, timeout=90)
        assert status["state"] == "done", status
        assert results(master.url, job) == b"".join(c.upper() for c in chunks)
        listed = {c["id"]: c for c in clients(master)}
        last_seen = {v.client: listed[v.client]["last_seen"] for v in victims}
        assert all(t <= killed_at for t in last_seen.values()), "a killed daemon was heard from after the kill"
        victim_ids, other_ids = set(last_seen), {d.client for d in others}
        silent, detected, reissued = [], [], []
        for unit in job_units(master.url, job):
            lost = [a for a in unit["attempts"] if a["client"] in victim_ids]
            (lease,) = [a for a in unit["attempts"] if a["client"] not in victim_ids]
            assert [a["state"] for a in lost] == ["timed_out"], unit
            assert lease["client"] in other_ids and lease["state"] == "succeeded" and lease["validity"] == "valid", unit
            silent.append(lost[0]["finished_at"] - last_seen[lost[0]["client"]])
            detected.append(lost[0]["finished_at"] - killed_at)
            reissued.append(lease["leased_at"] - killed_at)
        window = HEARTBEAT_TIMEOUT + MARGIN
        assert len(reissued) == len(chunks)
        # the silence timed them out (their deadlines were a minute and a half away), no sooner than it allows
        assert all(HEARTBEAT_TIMEOUT <= t <= window for t in silent), f"timed out {silent}s after the last word"
        assert all(t <= window for t in detected), f"leases timed out {detected}s after the kill, window {window}s"
        assert all(t <= window for t in reissued), f"units leased again {reissued}s after the kill, window {window}s"
        print(f"\ndaemon kills: {len(victims)}; {len(reissued)} units timed out {_seconds(detected)}s after the "
              f"kill ({_seconds(silent)}s after each victim's last word) and were leased again "
              f"{_seconds(reissued)}s after the kill (heartbeat timeout {HEARTBEAT_TIMEOUT}s)")  # fmt: skip
    finally:  # started again, the killed daemons remove the containers they left
        for victim in victims:
            again = daemons.restart(master, victim)
            assert again.client == victim.client
            wait_for(lambda: "container(s) an earlier run left" in again.log(), 30, "the restarted daemon to clean up")  # noqa: B023
            assert not daemons.containers(victim.client)


def _seconds(times: list[float]) -> list[float]:
    return [round(t, 2) for t in sorted(times)]


# -- 3. bytes flipped between volunteers and the master ----------------------------------------------


def test_every_byte_flipped_in_chunks_and_results_is_refused_and_the_job_is_still_right(
    master_factory: MasterFactory,
) -> None:
    """Eight volunteers (half upload outputs inline, half by reference) talk to the master
    through a proxy that flips one byte in a seeded 30% of chunk downloads and of result
    uploads. Every flipped chunk fails the volunteer's hash check (and is downloaded again);
    every flipped inline output is refused in its ack, every flipped PUT of an output with a
    422; no corrupted output is ever taken, and the job ends with the right output."""
    master = master_factory("--reap-interval", str(REAP))
    rng = random.Random(SEED + 3)
    chunks = chunks_of(80, rng)
    right = [compute("map", [c]) for c in chunks]
    job = create_job(master.url, job_file("chaos-flips", redundancy={"replicas": 2, "quorum": 2}), chunks)
    with FlipProxy(master.url, seed=SEED, downloads=0.3, uploads=0.3) as proxy:
        volunteers = [
            Volunteer(proxy.url, f"volunteer-{i}", by_reference=i % 2 == 1, batch=2, seed=SEED + i) for i in range(8)
        ]
        with fleet(volunteers):
            status = wait_job(master.url, job, timeout=90)
    assert status["state"] == "done", status
    units = job_units(master.url, job)
    check_units(units, right)
    assert results(master.url, job) == b"".join(right)
    # no attempt the master took holds anything but the right output
    assert all(a["output"] in (None, u["output"]) and a["validity"] != "invalid" for u in units for a in u["attempts"])

    downloads, inline, puts = proxy.of("download"), proxy.of("inline"), proxy.of("blob")
    assert downloads and inline and puts, (
        f"too few flips to prove anything: {len(downloads)}, {len(inline)}, {len(puts)}"
    )
    # every corrupted chunk was refused by the volunteer that got it
    assert Counter(f.target for f in downloads) == Counter(h for v in volunteers for h in v.corrupt_downloads)
    # every corrupted inline output was refused by the master, in its ack for that attempt
    for flip in inline:
        assert flip.status == 200 and flip.accepted is False and "hashes to" in flip.reason, flip
    assert sorted(f.target for f in inline) == sorted(a for v in volunteers for a in v.corrupt_uploads)
    # every corrupted output PUT was refused with a 4xx (an integrity error: 422)
    for flip in puts:
        assert flip.status == 422 and "hashes to" in flip.reason, flip
    assert Counter(f.target for f in puts) == Counter(h for v in volunteers for h, _ in v.corrupt_puts)
    print(f"\nflips: {len(downloads)} chunk downloads, {len(inline)} inline outputs, {len(puts)} output PUTs "
          f"of {proxy.forwarded} requests; detected {sum(len(v.corrupt_downloads) for v in volunteers)}, "
          f"{sum(len(v.corrupt_uploads) for v in volunteers)}, {sum(len(v.corrupt_puts) for v in volunteers)}; "
          "accepted 0")  # fmt: skip


CORRUPT_DOWNLOAD = re.compile(r"input ([0-9a-f]{32}): download \d+ of \d+ hashes to [0-9a-f]{32}")


def test_daemons_behind_the_proxy_refuse_every_flipped_chunk_and_compute_the_right_output(
    master_factory: MasterFactory,
    daemons: Daemons,
    probe_image: str,
    no_container_left_behind: None,
    tmp_path: Path,
) -> None:
    """Two real daemons download their chunks through the proxy, which flips one byte in half
    of them. Each daemon's chunk cache finds every flipped chunk not matching its hash and
    downloads it again before any container sees it: the flips the proxy made and the failed
    checks the daemons logged are the same, chunk for chunk, and the job's output is right."""
    master = quick_master(master_factory, tmp_path)
    publish(master, probe_image)
    rng = random.Random(SEED + 4)
    chunks = chunks_of(8, rng, "echo")
    job, hashes = submit(master, probe_job(probe_image, replicas=2, quorum=2), chunks)
    with FlipProxy(master.url, seed=SEED, downloads=0.5) as proxy:
        via_proxy = SimpleNamespace(url=proxy.url)
        pair = [daemons.start(via_proxy, f"behind-proxy-{i}", slots=1, wait=False) for i in range(2)]
        for daemon in pair:
            daemons.wait_registered(daemon)
        status = wait_job(master.url, job, timeout=120)
        for daemon in pair:
            assert daemon.stop() == 0, daemon.log()[-4000:]
    assert status["state"] == "done", status
    assert results(master.url, job) == b"".join(c.upper() for c in chunks)
    units = job_units(master.url, job)
    check_units(units, [c.upper() for c in chunks])
    assert not [a for u in units for a in u["attempts"] if a["error"]], "an attempt errored"
    flipped = Counter(f.target for f in proxy.of("download"))
    assert flipped and set(flipped) <= set(hashes), flipped
    refused = Counter(m.group(1) for d in pair for m in CORRUPT_DOWNLOAD.finditer(d.log()))
    assert refused == flipped, f"flipped {flipped}, refused by the daemons {refused}"
    print(f"\ndaemon chunk flips: {sum(flipped.values())} made, {sum(refused.values())} refused, 0 computed")


def test_a_daemon_sends_again_a_result_whose_upload_was_corrupted(
    master_factory: MasterFactory,
    daemons: Daemons,
    probe_image: str,
    no_container_left_behind: None,
    tmp_path: Path,
) -> None:
    """The proxy flips one byte in the first upload of the daemon's output. The master refuses
    it (the bytes do not match the hash the daemon computed); the daemon's spooled output is
    intact, so it should send it again, as the design says of any integrity mismatch ("retried,
    never accepted"), and the unit be done with the daemon's result long before its lease
    (90s) would expire."""
    master = quick_master(master_factory, tmp_path, "--lease-slack", "60")
    publish(master, probe_image)
    chunk = b"echo one unit\n"
    job, _ = submit(master, probe_job(probe_image), [chunk])
    with FlipProxy(master.url, seed=SEED, uploads=1.0) as proxy:
        daemon = daemons.start(SimpleNamespace(url=proxy.url), "behind-proxy", slots=1)
        try:
            (flip,) = wait_for(lambda: proxy.of("inline"), 60, "the daemon's result to be flipped")
            assert flip.accepted is False and "hashes to" in flip.reason, flip
            status = wait_for(lambda: job_status(master.url, job)["state"] == "done", 15, "the result sent again")
            assert status
            (unit,) = job_units(master.url, job)
            assert unit["output"] == digest(chunk.upper())
        finally:
            assert daemon.stop() == 0


# -- 4. liars among twenty volunteers ------------------------------------------------------------------

LIAR_UNITS = 300
QUARANTINE_AFTER = 3  # the master's default (--quarantine-after), given explicitly


def test_four_liars_among_twenty_volunteers_make_no_canonical_result_and_end_quarantined(
    master_factory: MasterFactory,
) -> None:
    """Twenty volunteers, each enrolled with an account of its own; two collude (the same
    wrong output for a unit) and two answer random wrong outputs. At replicas 3 quorum 2, over
    300 units, no canonical result is wrong, the job's output is right, the four liars end
    quarantined and no honest volunteer is."""
    master = master_factory("--reap-interval", str(REAP), "--quarantine-after", str(QUARANTINE_AFTER))
    rng = random.Random(SEED + 5)
    chunks = chunks_of(LIAR_UNITS, rng)
    right = [compute("map", [c]) for c in chunks]
    spec = job_file("chaos-liars", redundancy={"replicas": 3, "quorum": 2, "max_attempts": 6})
    job = create_job(master.url, spec, chunks)
    lies = ["colluder"] * 2 + ["random"] * 2 + ["honest"] * 16
    rng.shuffle(lies)
    volunteers = [
        Volunteer(
            master.url,
            f"volunteer-{i:02d}",
            lie=lie,
            enroll=master.key("volunteer", f"account-{i:02d}"),
            batch=2,
            seed=SEED + i,
            heartbeat_every=0.5,
        )
        for i, lie in enumerate(lies)
    ]
    with fleet(volunteers):
        status = wait_final(master.url, job, timeout=120)
    assert status["state"] == "done", status
    units = job_units(master.url, job)
    wrong = [u for u in units if u["output"] != digest(right[u["index"]])]
    colluded = {digest(collusion(u["id"])) for u in units}
    assert not wrong, (
        f"{len(wrong)} wrong canonical results, {sum(u['output'] in colluded for u in wrong)} of them the colluders'"
    )
    check_units(units, right)
    assert results(master.url, job) == b"".join(right)

    listed = {c["id"]: c for c in clients(master)}
    accounts = {listed[v.id]["account"] for v in volunteers}
    assert len(accounts) == len(volunteers), "each volunteer has an account of its own"
    liars = [v for v in volunteers if v.lie != "honest"]
    honest = [v for v in volunteers if v.lie == "honest"]
    assert all(listed[v.id]["quarantined"] for v in liars), {v.name: listed[v.id] for v in liars}
    assert not any(listed[v.id]["quarantined"] for v in honest), {v.name: listed[v.id] for v in honest}
    print(f"\nliars: {len(liars)} of {len(volunteers)} ({Counter(v.lie for v in liars)}), all quarantined "
          f"(invalid {[listed[v.id]['invalid'] for v in liars]}); honest quarantined 0; wrong canonical results "
          f"{len(wrong)} of {LIAR_UNITS}")  # fmt: skip


def enrolled(master: MasterProcess, name: str, lie: str = "honest") -> Volunteer:
    """A volunteer with an account of its own, registered."""
    volunteer = Volunteer(master.url, name, lie=lie, enroll=master.key("volunteer", f"account-{name}"), batch=1)
    volunteer.register()
    return volunteer


def take_turns(url: str, job: str, volunteers: list[Volunteer], timeout: float = 60.0) -> dict[str, Any]:
    """Let the volunteers work one after another, one unit each, always in this order (so who
    gets which replica is known), until the job has ended and stays so for a few reaper rounds;
    its status then."""
    deadline = time.monotonic() + timeout
    quiet_since = 0.0
    while time.monotonic() < deadline:
        if sum(v.work_once() for v in volunteers):
            quiet_since = 0.0
            continue
        status = job_status(url, job)
        if status["state"] in ("done", "failed", "cancelled"):
            quiet_since = quiet_since or time.monotonic()
            if time.monotonic() - quiet_since >= 5 * REAP:
                return status
        time.sleep(REAP)  # nothing to lease: the reaper may have yet to reopen a unit
    raise AssertionError(f"job {job} did not end within {timeout}s: {job_status(url, job)}")


def collude_on_next_unit(colluders: list[Volunteer], job_url: str, job: str, first: Volunteer | None = None) -> str:
    """``first`` (when given) computes the next unit honestly, then both colluders lease it and
    give the same wrong output, which makes them its quorum of 2; the unit's id."""
    leasers = ([first] if first else []) + colluders
    grants = []
    for volunteer in leasers:
        (grant,) = volunteer.lease(1)
        volunteer.pending = [volunteer.report(grant)]
        volunteer.send_pending()
        assert not volunteer.pending and not volunteer.refusals, volunteer.refusals
        grants.append(grant)
    assert len({g["unit"] for g in grants}) == 1, "they did not all get the same unit"
    (unit,) = [u for u in job_units(job_url, job) if u["id"] == grants[0]["unit"]]
    assert unit["state"] == "done" and unit["output"] == digest(collusion(unit["id"])), unit  # theirs, for now
    return str(unit["id"])


def test_a_unit_two_colluders_decided_is_decided_again_once_they_are_quarantined(master_factory: MasterFactory) -> None:
    """The colluders' best case, made to happen: both lease the first unit, one after the other,
    and give the same wrong output, which makes them its quorum of 2 (of 3 replicas). Then
    they work beside four honest volunteers, in turns that never give them a unit together:
    their answers disagree with the quorum and they are quarantined; the unit they decided is
    decided again by honest volunteers, and the job ends with no wrong canonical result."""
    master = master_factory("--reap-interval", str(REAP), "--quarantine-after", str(QUARANTINE_AFTER))
    chunks = chunks_of(12, random.Random(SEED + 6))
    right = [compute("map", [c]) for c in chunks]
    spec = job_file("chaos-collusion", redundancy={"replicas": 3, "quorum": 2, "max_attempts": 6})
    job = create_job(master.url, spec, chunks)
    colluders = [enrolled(master, f"colluder-{i}", "colluder") for i in range(2)]
    honest = [enrolled(master, f"honest-{i}") for i in range(4)]
    collude_on_next_unit(colluders, master.url, job)

    # each turn of six fills two units, each colluder alone beside two honest volunteers
    status = take_turns(master.url, job, [honest[0], colluders[0], honest[1], honest[2], colluders[1], honest[3]])
    assert status["state"] == "done", status
    check_units(job_units(master.url, job), right)
    assert results(master.url, job) == b"".join(right)
    listed = {c["id"]: c for c in clients(master)}
    assert all(listed[v.id]["quarantined"] for v in colluders), [listed[v.id] for v in colluders]
    assert not any(listed[v.id]["quarantined"] for v in honest), [listed[v.id] for v in honest]


def test_an_honest_volunteer_the_colluders_outvoted_is_not_quarantined_once_they_are_found_out(
    master_factory: MasterFactory,
) -> None:
    """Three times an honest volunteer computes a unit first and both colluders then outvote it
    with the same wrong output, so its result is judged invalid three times. The colluders are
    then quarantined (their other answers disagree with honest quorums) and the three units are
    decided again, with the honest volunteer's output: the job ends right, and the volunteer
    the colluders outvoted is not quarantined for having been right."""
    master = master_factory("--reap-interval", str(REAP), "--quarantine-after", str(QUARANTINE_AFTER))
    chunks = chunks_of(16, random.Random(SEED + 7))
    right = [compute("map", [c]) for c in chunks]
    spec = job_file("chaos-outvoted", redundancy={"replicas": 3, "quorum": 2, "max_attempts": 6})
    job = create_job(master.url, spec, chunks)
    colluders = [enrolled(master, f"colluder-{i}", "colluder") for i in range(2)]
    outvoted = enrolled(master, "outvoted")
    honest = [enrolled(master, f"honest-{i}") for i in range(4)]
    for _ in range(QUARANTINE_AFTER):
        collude_on_next_unit(colluders, master.url, job, first=outvoted)

    status = take_turns(master.url, job, [honest[0], colluders[0], honest[1], honest[2], colluders[1], honest[3]])
    assert status["state"] == "done", status
    check_units(job_units(master.url, job), right)
    listed = {c["id"]: c for c in clients(master)}
    assert all(listed[v.id]["quarantined"] for v in colluders), [listed[v.id] for v in colluders]
    assert not listed[outvoted.id]["quarantined"], listed[outvoted.id]
    assert not any(listed[v.id]["quarantined"] for v in honest), [listed[v.id] for v in honest]
