"""One attempt on the client: the files the container sees, and a grant or a container that
tries to reach outside them."""

import os
import stat
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import pytest

from dockercomp.client.attempt import Attempt, Disposition, Executor, check_grant
from dockercomp.client.cache import ChunkCache
from dockercomp.client.runner import Runner, RunOutcome, RunSpec
from dockercomp.client.spool import Spool
from dockercomp.protocol.integrity import digest
from dockercomp.protocol.messages import ContainerInfo, ErrorKind, Grant, InputRef

CHUNK = b"some input\n"


class Blobs:
    """Stands in for the master session: serves CHUNK by its hash."""

    def download(self, blob: str, dest: BinaryIO, **kw: Any) -> None:
        assert blob == digest(CHUNK)
        dest.write(CHUNK)


class OneShot(Runner):
    """Runs ``body(spec)`` as the container and records what it saw."""

    def __init__(self, body: Callable[[RunSpec], RunOutcome]) -> None:
        self.body = body
        self.specs: list[RunSpec] = []

    def run(self, spec: RunSpec, cancel: threading.Event) -> RunOutcome:
        self.specs.append(spec)
        return self.body(spec)

    def containers(self) -> list[ContainerInfo]:
        return []

    def available_images(self) -> list[str]:
        return []

    def remove_leftovers(self, client: str | None = None) -> int:
        return 0


def grant(**changes: Any) -> Grant:
    fields: dict[str, Any] = {
        "attempt": "a1", "job": "j", "unit": "j.0", "kind": "map", "image": "dockercomp/sim", "command": ["sim"],
        "env": {"LANG": "C.UTF-8"}, "cpus": 1.0, "memory": 64 << 20, "timeout": 60.0, "deadline": 0.0,
        "inputs": [InputRef("chunk", digest(CHUNK), len(CHUNK), f"/api/v1/blobs/{digest(CHUNK)}")],
    } | changes  # fmt: skip
    return Grant(**fields)


def execute(tmp_path: Path, runner: Runner, g: Grant, why: str = "") -> tuple[Disposition, Any, Spool]:
    spool = Spool(str(tmp_path / "results"))
    executor = Executor(
        str(tmp_path / "attempts"), ChunkCache(str(tmp_path / "cache"), 1 << 20), Blobs(), runner, spool, "c1"
    )  # type: ignore[arg-type]
    attempt = Attempt(g)
    if why:
        attempt.stop(why)
    disposition, report = executor.execute(attempt)
    assert list((tmp_path / "attempts").iterdir()) == []  # nothing of the attempt is left
    return disposition, report, spool


def writes(data: bytes) -> Callable[[RunSpec], RunOutcome]:
    def body(spec: RunSpec) -> RunOutcome:
        Path(spec.output_dir, "result").write_bytes(data)
        return RunOutcome(None, exit_code=0, runtime=0.5)

    return body


def test_the_container_sees_its_inputs_and_a_writable_output(tmp_path: Path) -> None:
    seen: dict[str, Any] = {}

    def body(spec: RunSpec) -> RunOutcome:
        seen["inputs"] = {p.name: p.read_bytes() for p in Path(spec.input_dir).iterdir()}
        seen["modes"] = [stat.S_IMODE(os.stat(d).st_mode) for d in (spec.input_dir, spec.output_dir)]
        seen["private"] = stat.S_IMODE(os.stat(Path(spec.input_dir).parent).st_mode)
        return writes(CHUNK.upper())(spec)

    runner = OneShot(body)
    disposition, report, spool = execute(tmp_path, runner, grant())
    assert disposition == Disposition.SPOOLED and report.status == "succeeded"
    assert report.output_hash == digest(CHUNK.upper()) and report.runtime == 0.5
    assert seen == {"inputs": {"chunk": CHUNK}, "modes": [0o755, 0o777], "private": 0o700}
    (spec,) = runner.specs
    assert (spec.client, spec.attempt, spec.command, spec.env) == ("c1", "a1", ("sim",), (("LANG", "C.UTF-8"),))
    assert [i.attempt for i in spool.pending()] == ["a1"]


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"inputs": [InputRef("../../etc/cron.d/x", digest(CHUNK), 1, "/")]}, "not a plain, unique file name"),
        ({"inputs": [InputRef(".hidden", digest(CHUNK), 1, "/")]}, "not a plain"),
        ({"inputs": [InputRef("chunk", "../../x", 1, "/")]}, "32 lowercase hex"),
        ({"mode": "service"}, "not supported by this client"),
        ({"env": {"A=B": "c"}}, "not a plain name"),
        ({"memory": 0}, "greater than 0"),
    ],
)
def test_a_grant_this_client_cannot_run_safely_is_reported_never_run(
    tmp_path: Path, changes: dict[str, Any], fragment: str
) -> None:
    runner = OneShot(writes(b"never"))
    disposition, report, _ = execute(tmp_path, runner, grant(**changes))
    assert disposition == Disposition.SPOOLED and report.error == ErrorKind.CLIENT
    assert fragment in report.stderr_tail and runner.specs == []
    assert fragment in check_grant(grant(**changes))


def test_an_input_sent_in_the_grant_is_placed_without_a_download_and_checked(tmp_path: Path) -> None:
    params = b'{"SEED": 7}\n'
    seen: list[bytes] = []

    def body(spec: RunSpec) -> RunOutcome:
        seen.append(Path(spec.input_dir, "params.json").read_bytes())
        return writes(b"ok\n")(spec)

    sent = InputRef("params.json", digest(params), len(params), "", params)
    _, report, _ = execute(tmp_path, OneShot(body), grant(inputs=[sent]))
    assert report.status == "succeeded" and seen == [params]
    assert not list((tmp_path / "cache").rglob("*" + digest(params)))  # nothing cached, nothing fetched

    forged = InputRef("params.json", digest(params), len(params), "", b'{"SEED": 8}\n')
    runner = OneShot(body)
    _, report, _ = execute(tmp_path / "forged", runner, grant(inputs=[forged]))
    assert report.error == ErrorKind.INTEGRITY and "does not match its hash" in report.stderr_tail
    assert runner.specs == []  # never run


def test_a_result_that_links_elsewhere_on_the_host_is_refused(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(b"the host's secret")

    def body(spec: RunSpec) -> RunOutcome:
        os.symlink(secret, Path(spec.output_dir, "result"))
        return RunOutcome(None, exit_code=0)

    _, report, _ = execute(tmp_path, OneShot(body), grant())
    assert report.error == ErrorKind.NO_RESULT and "symbolic link" in report.stderr_tail
    assert not any(b"secret" in Path(p).read_bytes() for p in (tmp_path / "results").iterdir())


def test_a_container_that_exits_0_without_a_result_is_the_unit_s_failure(tmp_path: Path) -> None:
    _, report, _ = execute(tmp_path, OneShot(lambda spec: RunOutcome(None, exit_code=0)), grant())
    assert (report.status, report.error, report.exit_code) == ("errored", ErrorKind.NO_RESULT, 0)
    assert "without writing /output/result" in report.stderr_tail


def test_a_failure_keeps_its_kind_exit_code_and_stderr(tmp_path: Path) -> None:
    outcome = RunOutcome(ErrorKind.EXIT_NONZERO, exit_code=2, stderr_tail="x" * 5000 + "the end", runtime=3.0)
    _, report, _ = execute(tmp_path, OneShot(lambda spec: outcome), grant())
    assert (report.error, report.exit_code, report.runtime) == (ErrorKind.EXIT_NONZERO, 2, 3.0)
    assert report.stderr_tail.endswith("the end") and len(report.stderr_tail) == 4096


@pytest.mark.parametrize(("why", "expected"), [("shutdown", Disposition.RELEASE), ("abort", Disposition.DROP)])
def test_a_stopped_attempt_is_released_or_dropped(tmp_path: Path, why: str, expected: Disposition) -> None:
    runner = OneShot(writes(b"never"))
    disposition, report, spool = execute(tmp_path, runner, grant(), why=why)
    assert (disposition, report, runner.specs, spool.pending()) == (expected, None, [], [])
