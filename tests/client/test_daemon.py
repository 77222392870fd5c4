"""The client daemon at work against a real master (a subprocess), with a stub Runner
(daemon_stub.py): right outputs, batches and prefetch, integrity, every failure kind, a
master that goes away, identity and restarts."""

import json
import socket
import sqlite3
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import requests

from dockercomp.client import status
from dockercomp.client.daemon import Daemon
from dockercomp.client.errors import ClientError
from dockercomp.client.master import Identity
from dockercomp.client.settings import ClientSettings
from dockercomp.protocol.integrity import digest
from dockercomp.protocol.messages import LeaseReply, LeaseRequest
from tests.sim import SimClient, compute, create_job, wait_for, wait_job

from .daemon_stub import WAIT, StubRunner, attempts_in, attempts_of, image_id, job, results

# -- the work -------------------------------------------------------------------------------


def test_a_job_with_a_reduce_step_completes_with_the_right_outputs(fast_master: Any, start_daemon: Callable) -> None:
    chunks = [b"alpha\nbeta\n", b"gamma\n", b"delta\nepsilon\n", b"alpha\nbeta\n"]  # one chunk twice: one download
    job_id = create_job(fast_master.url, job(reduce=True), chunks)
    daemon = start_daemon(fast_master)
    assert wait_job(fast_master.url, job_id, WAIT)["state"] == "done"
    maps = [compute("map", [c]) for c in chunks]
    assert results(fast_master, job_id) == compute("reduce", maps)
    assert daemon.daemon.cache.downloads == 3 + 3  # each distinct chunk once, and each distinct map output
    spec = next(s for s in daemon.runner.runs if s.unit.endswith(".4"))
    assert spec.client == daemon.daemon.identity.client and spec.image == image_id(fast_master)  # type: ignore[union-attr]
    wait_for(lambda: len(daemon.daemon.spool) == 0, WAIT, "the spool to empty")
    daemon.daemon.stop()
    assert daemon.exit_code() == 0


def test_leases_are_sized_to_the_free_slots_and_one_batch_is_prefetched(
    fast_master: Any, start_daemon: Callable
) -> None:
    job_id = create_job(fast_master.url, job(), [b"unit %d\n" % i for i in range(10)])
    daemon = start_daemon(fast_master, slots=3, gated=True)
    asked: list[int] = []
    lease = daemon.daemon.master.lease

    def recording(req: LeaseRequest, **kw: Any) -> LeaseReply:
        asked.append(req.max_units)
        return lease(req, **kw)

    daemon.daemon.master.lease = recording  # type: ignore[method-assign]
    wait_for(lambda: len(daemon.runner.running) == 3 and len(daemon.daemon.slots.queued()) == 3, WAIT,
             "three units running and three queued")  # fmt: skip
    time.sleep(0.3)  # a moment for a lease that should not happen
    assert asked[:2] == [3, 3] and len(asked) == 2, asked  # the free slots, then one batch ahead
    daemon.runner.gate.set()
    assert wait_job(fast_master.url, job_id, WAIT)["state"] == "done"
    assert daemon.runner.most_at_once == 3
    assert all(n <= 3 for n in asked)


def test_a_corrupted_chunk_is_downloaded_again_reported_as_integrity_and_never_run(
    fast_master: Any, start_daemon: Callable
) -> None:
    bad, good = b"x" * 100_000 + b"\n", b"a good chunk\n"  # past 64 KiB: a file of the master's blob store
    job_id = create_job(fast_master.url, job(redundancy={"max_attempts": 1}), [bad, good])
    blob = digest(bad)
    path = fast_master.data_dir / "blobs" / blob[:2] / blob[2:4] / blob
    path.write_bytes(b"y" + bad[1:])  # the master now serves bytes that do not match the hash
    daemon = start_daemon(fast_master)
    downloads: list[str] = []
    download = daemon.daemon.master.download

    def counting(blob: str, *args: Any, **kw: Any) -> None:
        downloads.append(blob)
        download(blob, *args, **kw)

    daemon.daemon.master.download = counting  # type: ignore[method-assign]
    status = wait_job(fast_master.url, job_id, WAIT)
    assert status["state"] == "failed"
    (attempt,) = [a for a in attempts_of(fast_master, job_id) if a["unit"].endswith(".0")]
    assert (attempt["state"], attempt["error"]) == ("errored", "integrity")
    assert downloads.count(blob) == 2  # fetched again once, then reported
    assert [s.unit for s in daemon.runner.runs] == [f"{job_id}.1"]  # the bad unit never ran
    assert not list((Path(daemon.daemon.work_dir) / "cache").rglob(blob))  # and is not kept
    assert daemon.daemon.counts["integrity"] == 1


def test_each_failure_is_reported_as_its_own_kind(fast_master: Any, start_daemon: Callable) -> None:
    markers = [b"FAIL", b"OOM", b"TIMEOUT", b"IMAGE", b"DOCKER", b"NORESULT"]
    job_id = create_job(fast_master.url, job(redundancy={"max_attempts": 1}), [m + b"\n" for m in markers])
    start_daemon(fast_master, slots=3)
    assert wait_job(fast_master.url, job_id, WAIT)["state"] == "failed"
    wait_for(lambda: len(attempts_in(fast_master, job_id, "errored")) == 6, WAIT, "six errored attempts")
    query = (
        "SELECT u.idx, a.error, a.exit_code, a.stderr_tail FROM attempts AS a JOIN units AS u ON u.id = a.unit_id"
        " WHERE a.job_id = ? ORDER BY u.idx"
    )
    with closing(sqlite3.connect(fast_master.data_dir / "dockercomp.db")) as db:  # stderr tails are not in the API
        rows = db.execute(query, (job_id,)).fetchall()
    kinds = {idx: (error, code) for idx, error, code, _ in rows}
    assert kinds == {
        0: ("exit_nonzero", 3), 1: ("oom", 137), 2: ("timeout", None), 3: ("image_missing", None),
        4: ("docker_unavailable", None), 5: ("no_result", 0),
    }  # fmt: skip
    tails = {idx: tail for idx, _, _, tail in rows}
    assert tails[0].endswith("ValueError: boom\n") and "out of memory" in tails[1]
    assert "without writing /output/result" in tails[5]


# -- the master away ------------------------------------------------------------------------


def test_a_master_that_goes_away_is_retried_with_backoff_then_gets_the_results(
    fast_master: Any, start_daemon: Callable, restart_master: Callable
) -> None:
    chunks = [b"one\n", b"two\n"]
    job_id = create_job(fast_master.url, job(), chunks)
    daemon = start_daemon(fast_master, gated=True)
    wait_for(lambda: len(daemon.runner.running) == 2, WAIT, "both units running")
    fast_master.stop()
    daemon.runner.gate.set()
    wait_for(lambda: len(daemon.daemon.spool) == 2, WAIT, "both results spooled")
    wait_for(lambda: daemon.daemon.master.retries >= 3, WAIT, "retries")
    shown = wait_for(lambda: (s := status.read_status(daemon.daemon.work_dir)) and not s["master_ok"] and s, WAIT,
                     "the status to show the master unreachable")  # fmt: skip
    assert "cannot reach it" in shown["master_error"]
    again = restart_master(fast_master)
    assert wait_job(again.url, job_id, WAIT)["state"] == "done"
    assert results(again, job_id) == b"".join(compute("map", [c]) for c in chunks)
    wait_for(lambda: len(daemon.daemon.spool) == 0, WAIT, "the spool to empty")


def test_spooled_results_survive_a_restart_of_the_daemon(
    fast_master: Any, start_daemon: Callable, restart_master: Callable, tmp_path: Path
) -> None:
    chunks = [b"kept\n", b"on disk\n"]
    job_id = create_job(fast_master.url, job(), chunks)
    first = start_daemon(fast_master, gated=True, stop_timeout=0.5)
    wait_for(lambda: len(first.runner.running) == 2, WAIT, "both units running")
    client = first.daemon.identity.client  # type: ignore[union-attr]
    fast_master.stop()
    first.runner.gate.set()
    wait_for(lambda: len(first.daemon.spool) == 2, WAIT, "both results spooled")
    first.daemon.stop()
    assert first.exit_code() == 0  # stopped while the master was away: the results stay on disk
    assert len(list((tmp_path / "client" / "results").glob("*.result"))) == 2

    again = restart_master(fast_master)
    second = start_daemon(again)
    assert wait_job(again.url, job_id, WAIT)["state"] == "done"
    assert results(again, job_id) == b"".join(compute("map", [c]) for c in chunks)
    assert second.daemon.identity.client == client  # type: ignore[union-attr]
    assert second.runner.runs == []  # uploaded, not computed again
    assert second.runner.leftovers == [client]


def test_a_forgotten_token_makes_the_daemon_register_again(
    fast_master: Any, start_daemon: Callable, tmp_path: Path
) -> None:
    (tmp_path / "client").mkdir(mode=0o700)
    Identity(fast_master.url, "gone", "gone.0123456789abcdef").save(str(tmp_path / "client" / "identity.json"))
    job_id = create_job(fast_master.url, job(), [b"again\n"])
    daemon = start_daemon(fast_master)
    assert wait_job(fast_master.url, job_id, WAIT)["state"] == "done"
    assert daemon.daemon.identity.client != "gone"  # type: ignore[union-attr]
    saved = json.loads((tmp_path / "client" / "identity.json").read_text())
    assert saved["client"] == daemon.daemon.identity.client  # type: ignore[union-attr]


def test_a_restart_after_a_crash_releases_what_the_crashed_run_held(
    fast_master: Any, start_daemon: Callable, tmp_path: Path
) -> None:
    job_id = create_job(fast_master.url, job(), [b"held\n"])
    crashed = SimClient(fast_master.url, name="test-client")  # stands in for the run that died
    crashed.register()
    (grant,) = crashed.lease(1)
    work = tmp_path / "client"
    work.mkdir(mode=0o700)
    Identity(fast_master.url, crashed.id, crashed.token).save(str(work / "identity.json"))
    status.write_status(str(work), {"client": crashed.id, "pid": 0, "running": [{"attempt": grant["attempt"]}]})
    daemon = start_daemon(fast_master)
    wait_for(lambda: attempts_in(fast_master, job_id, "released"), WAIT, "the attempt released")
    # given back at once, not at its deadline minutes away, so the restarted run can do it now
    assert wait_job(fast_master.url, job_id, WAIT)["state"] == "done"
    assert daemon.runner.leftovers == [crashed.id] and daemon.daemon.identity.client == crashed.id  # type: ignore[union-attr]


def test_a_master_that_refuses_the_registration_stops_the_daemon(
    master_factory: Callable, start_daemon: Callable
) -> None:
    master = master_factory(open_enrollment=False)
    for token in ("", "a-wrong-token", master.key("scientist")):  # none, unknown, not a volunteer's
        refused = start_daemon(master, enroll=token)
        assert refused.exit_code() == 1 and refused.daemon.identity is None
    welcome = start_daemon(master, enroll=master.key("volunteer", "alice"))  # the work directory's lock was let go
    wait_for(lambda: welcome.daemon.identity, WAIT, "the registration")
    clients = requests.get(f"{master.api}/clients", headers=master.headers, timeout=10).json()["clients"]
    assert [(c["id"], c["account"]) for c in clients] == [(welcome.daemon.identity.client, "alice")]  # type: ignore[union-attr]


def test_a_daemon_whose_master_never_answers_still_stops_at_once(start_daemon: Callable) -> None:
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        nobody = SimpleNamespace(url=f"http://127.0.0.1:{free.getsockname()[1]}")
    daemon = start_daemon(nobody)
    shown = wait_for(lambda: (s := status.read_status(daemon.daemon.work_dir)) and not s["master_ok"] and s, WAIT,
                     "the status to show the master unreachable")  # fmt: skip
    assert shown["state"] == "registering" and "cannot reach it" in shown["master_error"]
    daemon.daemon.stop()
    assert daemon.exit_code(5) == 0


def test_one_work_directory_serves_one_daemon(fast_master: Any, start_daemon: Callable, tmp_path: Path) -> None:
    start_daemon(fast_master)
    settings = ClientSettings(server=fast_master.url, work_dir=str(tmp_path / "client"))
    with pytest.raises(ClientError, match="another client daemon is using"):
        Daemon(settings, StubRunner())


def test_the_master_is_told_the_engine_version(fast_master: Any, start_daemon: Callable) -> None:
    class Versioned(StubRunner):
        def engine_version(self) -> str:
            return "27.5.1"

    daemon = start_daemon(fast_master, runner=Versioned())
    wait_for(lambda: daemon.daemon.identity, WAIT, "the registration")
    clients = requests.get(f"{fast_master.api}/clients", headers=fast_master.headers, timeout=10).json()["clients"]
    (mine,) = [c for c in clients if c["id"] == daemon.daemon.identity.client]  # type: ignore[union-attr]
    assert mine["host"]["docker"] == "27.5.1"  # the dashboard's Docker column
