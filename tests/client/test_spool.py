"""The result spool: results on disk, written atomically, loaded on start, deleted on ack."""

import io
from pathlib import Path

import pytest

from dockercomp.client.spool import Spool
from dockercomp.protocol.integrity import digest
from dockercomp.protocol.messages import ErrorKind, ResultReport


def succeeded(attempt: str) -> ResultReport:
    # the hash is the spool's to set, from the bytes it keeps
    return ResultReport(attempt, "succeeded", exit_code=0, output_hash="", runtime=1.5, peak_memory=1 << 20)


def errored(attempt: str) -> ResultReport:
    return ResultReport(attempt, "errored", error=ErrorKind.OOM, exit_code=137, stderr_tail="Killed", runtime=2.0)


def test_a_result_is_kept_with_its_output_hashed_and_survives_a_restart(tmp_path: Path) -> None:
    spool = Spool(str(tmp_path), inline_limit=1024)
    output = b"the answer\n" * 10
    item = spool.add(succeeded("a1"), "job1", "job1.0", io.BytesIO(output))
    assert (item.report.output_hash, item.report.output_size) == (digest(output), len(output))
    spool.add(errored("a2"), "job1", "job1.1")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a1.out", "a1.result", "a2.result"]

    again = Spool(str(tmp_path), inline_limit=1024)
    first, second = again.pending()
    assert (first.attempt, first.job, first.unit, second.attempt) == ("a1", "job1", "job1.0", "a2")
    sent = again.wire(first)
    assert sent.output == output and sent.output_hash == digest(output) and sent.peak_memory == 1 << 20
    assert again.wire(second) == errored("a2")
    assert again.usage() == (2, len(output))


def test_an_acknowledged_result_is_deleted(tmp_path: Path) -> None:
    spool = Spool(str(tmp_path))
    spool.add(succeeded("a1"), "j", "j.0", io.BytesIO(b"out"))
    spool.remove("a1")
    assert list(tmp_path.iterdir()) == [] and len(spool) == 0
    assert Spool(str(tmp_path)).pending() == []


def test_a_large_output_goes_by_reference(tmp_path: Path) -> None:
    spool = Spool(str(tmp_path), inline_limit=16)
    small = spool.add(succeeded("small"), "j", "j.0", io.BytesIO(b"x" * 16))
    large = spool.add(succeeded("large"), "j", "j.1", io.BytesIO(b"y" * 17))
    assert not spool.needs_blob(small) and spool.wire(small).output == b"x" * 16
    assert spool.needs_blob(large) and spool.wire(large).output is None
    assert spool.wire(large).output_hash == digest(b"y" * 17)
    assert spool.wire(small, inline=False).output is None  # once uploaded as a blob


def test_what_a_crash_cut_short_is_cleaned_up_at_load(tmp_path: Path) -> None:
    spool = Spool(str(tmp_path))
    spool.add(succeeded("whole"), "j", "j.0", io.BytesIO(b"out"))
    (tmp_path / ".tmp-abc").write_bytes(b"half a write")
    (tmp_path / "orphan.out").write_bytes(b"an output whose report never got written")
    (tmp_path / "garbage.result").write_bytes(b"\xc1 not msgpack")
    spool.add(succeeded("lost"), "j", "j.1", io.BytesIO(b"out"))
    (tmp_path / "lost.out").unlink()  # a report whose output is gone cannot be sent
    again = Spool(str(tmp_path))
    assert [i.attempt for i in again.pending()] == ["whole"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["whole.out", "whole.result"]


def test_results_come_back_oldest_first(tmp_path: Path) -> None:
    spool = Spool(str(tmp_path))
    names = [f"a{i:02d}" for i in range(12)]
    for name in reversed(names):
        spool.add(errored(name), "j", "j.0")
    assert [i.attempt for i in Spool(str(tmp_path)).pending()] == list(reversed(names))
    assert [i.attempt for i in spool.pending(3)] == list(reversed(names))[:3]


def test_a_result_the_master_cannot_take_becomes_a_client_error(tmp_path: Path) -> None:
    spool = Spool(str(tmp_path))
    item = spool.add(succeeded("big"), "j", "j.0", io.BytesIO(b"z" * 100))
    failed = spool.fail(item, "the master refused the output of 100 bytes")
    assert failed.report.status == "errored" and failed.report.error == ErrorKind.CLIENT
    assert failed.output_path is None and sorted(p.name for p in tmp_path.iterdir()) == ["big.result"]
    assert Spool(str(tmp_path)).pending()[0].report.stderr_tail == "the master refused the output of 100 bytes"


def test_an_attempt_id_that_is_not_a_plain_name_is_refused(tmp_path: Path) -> None:
    spool = Spool(str(tmp_path))
    with pytest.raises(ValueError, match="cannot name a file"):
        spool.add(errored("../escape"), "j", "j.0")
    assert list(tmp_path.iterdir()) == []
