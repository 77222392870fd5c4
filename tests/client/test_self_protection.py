"""The volunteer protects itself from a unit and from a master that may be compromised: a
result past ``max_result`` is refused unread (a sparse one too) and never spooled; /output
as a whole is bounded (the unit is killed past it, its files freed); no redirect is ever
followed; the master's strings reach no log line with their escape codes; the images
fetched from the master stay within ``image_budget``. Containers and engines are real."""

import http.server
import io
import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import docker
import pytest

from dockercomp.client import images
from dockercomp.client.attempt import Attempt, Disposition, Executor
from dockercomp.client.cache import ChunkCache
from dockercomp.client.docker_runner import DockerRunner
from dockercomp.client.errors import MasterError, MasterUntrusted
from dockercomp.client.master import MasterSession
from dockercomp.client.provision import Provisioner
from dockercomp.client.runner import LABEL_CLIENT, ResultTooLarge, open_result
from dockercomp.client.settings import ClientSettings
from dockercomp.client.spool import Spool
from dockercomp.protocol.images import ImageInfo, LayerInfo
from dockercomp.protocol.messages import ErrorKind, Grant, LeaseRequest, ResultReport, ResultStatus
from dockercomp.scientist import Master
from dockercomp.scientist import MasterError as ScientistError
from dockercomp.settings import SettingsError

MIB = 1 << 20
CLIENT = f"test-protect-{uuid.uuid4().hex[:10]}"


class NoBlobs:
    """The master session of a grant without inputs: nothing may be downloaded."""

    def download(self, blob: str, dest: BinaryIO, **kw: Any) -> None:
        raise AssertionError(f"nothing should be downloaded, got {blob}")


def grant(script: str, attempt: str = "a1", **fields: Any) -> Grant:
    values: dict[str, Any] = {
        "attempt": attempt, "job": "j", "unit": f"j.{attempt}", "kind": "map", "image": images.BASE_IMAGE,
        "command": ["python3", "-c", script], "env": {}, "cpus": 0.5, "memory": 96 * MIB, "timeout": 60.0,
        "deadline": 0.0, "inputs": [],
    } | fields  # fmt: skip
    return Grant(**values)


@pytest.fixture
def executor(tmp_path: Path, docker_client: docker.DockerClient, base_image: str) -> Iterator[Executor]:
    """An Executor on the real engine with a result cap of 8 MiB; no container may be left."""
    spool = Spool(str(tmp_path / "results"))
    cache = ChunkCache(str(tmp_path / "cache"), 16 * MIB)
    runner = DockerRunner(docker_client)
    yield Executor(str(tmp_path / "attempts"), cache, NoBlobs(), runner, spool, CLIENT, max_result=8 * MIB)  # type: ignore[arg-type]
    left = docker_client.containers.list(all=True, filters={"label": f"{LABEL_CLIENT}={CLIENT}"})
    assert not left, f"containers left behind: {left}"


def spooled_bytes(tmp_path: Path) -> int:
    return sum(f.stat().st_blocks * 512 for f in (tmp_path / "results").iterdir())


# --- the result cap -------------------------------------------------------------------------


def test_a_sparse_1GiB_result_is_refused_unread_and_the_daemon_goes_on(tmp_path: Path, executor: Executor) -> None:
    """A container leaves a sparse 1 GiB /output/result (a few blocks on disk): it is refused
    by its apparent size at once, REFUSED with a clear message, nothing of it spooled; the
    next attempt on the same executor succeeds."""
    sparse = "f = open('/output/result', 'wb'); f.truncate(1 << 30); f.close()"
    started = time.monotonic()
    disposition, report = executor.execute(Attempt(grant(sparse)))
    took = time.monotonic() - started
    assert disposition == Disposition.SPOOLED and report is not None
    assert report.status == ResultStatus.ERRORED and report.error == ErrorKind.REFUSED
    assert "/output/result is 1.0GiB" in report.stderr_tail and "8.0MiB (max_result)" in report.stderr_tail
    assert took < 30, f"refusing took {took:.1f}s"
    assert not list((tmp_path / "results").glob("*.out")), "no output of it is spooled"
    assert spooled_bytes(tmp_path) < 64 << 10
    assert list((tmp_path / "attempts").iterdir()) == []

    disposition, report = executor.execute(Attempt(grant("open('/output/result', 'w').write('ok')", "a2")))
    assert report is not None and report.status == ResultStatus.SUCCEEDED and report.output_size == 2


def test_a_result_is_never_read_past_the_cap_even_while_it_grows(tmp_path: Path) -> None:
    """Opened within the cap, the file grows: the read stops with ResultTooLarge, and a
    spool copying it keeps nothing."""
    path = tmp_path / "result"
    path.write_bytes(b"x" * 1000)
    spool = Spool(str(tmp_path / "results"))
    with open_result(str(path), 4096) as output:
        with open(path, "ab") as f:
            f.write(b"y" * 10_000)
        report = ResultReport("g1", ResultStatus.SUCCEEDED, exit_code=0, output_hash="")
        with pytest.raises(ResultTooLarge, match=r"grew past 4.0KiB"):
            spool.add(report, "j", "j.0", output)
    assert list((tmp_path / "results").iterdir()) == []
    path.write_bytes(b"z" * 4096)  # exactly the cap is taken
    with open_result(str(path), 4096) as output:
        assert len(output.read()) == 4096


# --- /output bounded ------------------------------------------------------------------------


def test_a_unit_filling_output_past_the_cap_is_killed_and_its_files_freed(tmp_path: Path, executor: Executor) -> None:
    """Another file in /output grows past the 8 MiB cap: the container is killed well before
    its timeout (or, on a bounded /output, stopped by the full file system first), the unit is
    REFUSED saying why, and the attempt's directory is gone."""
    fill = (
        "import time\n"
        "f = open('/output/junk', 'wb')\n"
        "for i in range(64):\n"
        "    f.write(b'x' * (1 << 20)); f.flush()\n"
        "    time.sleep(0.02)\n"
        "time.sleep(60)\n"
    )
    started = time.monotonic()
    disposition, report = executor.execute(Attempt(grant(fill, timeout=120.0)))
    took = time.monotonic() - started
    assert disposition == Disposition.SPOOLED and report is not None
    assert report.error == ErrorKind.REFUSED
    assert report.stderr_tail.startswith(("killed: /output holds more than 8.0MiB", "refused: /output holds more")), (
        report.stderr_tail
    )
    assert took < 30, f"the unit ran {took:.1f}s"
    assert list((tmp_path / "attempts").iterdir()) == [], "the work dir is freed"
    assert spooled_bytes(tmp_path) < 64 << 10


# --- no redirects -------------------------------------------------------------------------


class Recorder(http.server.ThreadingHTTPServer):
    """A tiny HTTP server on 127.0.0.1 that answers every request with ``reply`` and records
    the paths it was asked for."""

    def __init__(self, status: int, headers: dict[str, str], body: bytes = b"") -> None:
        self.requests: list[str] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self) -> None:
                server.requests.append(f"{self.command} {self.path}")
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            do_GET = do_POST = do_PUT = do_HEAD = _answer

            def log_message(self, *args: Any) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.shutdown()
        self.server_close()


@pytest.fixture
def redirecting() -> Iterator[tuple[Recorder, Recorder]]:
    """A master that redirects everything to a target on another port, and the target."""
    target = Recorder(200, {"Content-Type": "application/octet-stream"}, b"secret of the volunteer's network")
    master = Recorder(302, {"Location": f"{target.url}/admin/\x1b[31mreboot"})
    yield master, target
    master.close()
    target.close()


def test_the_daemon_never_follows_a_redirect(redirecting: tuple[Recorder, Recorder]) -> None:
    """Calls, gets and downloads meet a redirect: each is MasterUntrusted naming where the
    master wanted to send the daemon, sent once (no retry), and the target hears nothing."""
    master, target = redirecting
    session = MasterSession(master.url, timeout=5)
    with pytest.raises(MasterUntrusted, match=r"redirected POST /lease to .*redirects are not followed") as exc:
        session.lease(LeaseRequest(max_units=1, cpus=1.0, memory=MIB), tries=3)
    assert "\x1b" not in str(exc.value) and "\x1b" not in session.last_error
    with pytest.raises(MasterUntrusted, match="not followed"):
        session.get("/images/sha256:" + "ab" * 32, ImageInfo, tries=3)
    dest = io.BytesIO()
    with pytest.raises(MasterUntrusted, match="not followed"):
        session.download("0" * 32, dest, tries=3)
    assert dest.getvalue() == b""
    assert len(master.requests) == 3, master.requests
    assert target.requests == [], "the daemon fetched the redirect's target"


def test_the_scientist_cli_never_follows_a_redirect(redirecting: tuple[Recorder, Recorder]) -> None:
    master, target = redirecting
    scientist = Master(master.url, timeout=5, token="t0ken")
    with pytest.raises(ScientistError, match=r"redirected GET /jobs to .*redirects are not followed") as exc:
        scientist.jobs()
    assert "\x1b" not in str(exc.value)
    assert target.requests == [], "the CLI fetched the redirect's target (with the token)"


def test_a_download_stops_past_its_limit() -> None:
    """A master sending more bytes than a blob may be: the download stops there, not retried."""
    flood = Recorder(200, {"Content-Type": "application/octet-stream"}, b"x" * (3 * MIB))
    try:
        dest = io.BytesIO()
        with pytest.raises(MasterError, match=r"sent more than 1.0MiB"):
            MasterSession(flood.url, timeout=5).download("0" * 32, dest, tries=3, limit=MIB)
        assert len(dest.getvalue()) <= MIB
        assert len(flood.requests) == 1
    finally:
        flood.close()


# --- the master's strings in logs -----------------------------------------------------------


def test_the_masters_ids_and_errors_reach_no_log_with_escape_codes() -> None:
    hostile = grant("", "a1", job="\x1b]0;owned\x07job", unit="u\x1b[2J\nforged line")
    assert "\x1b" not in str(Attempt(hostile)) and "\n" not in str(Attempt(hostile))
    evil = Recorder(403, {"Content-Type": "application/json"}, json.dumps({"error": "no\x1b[31m\nway"}).encode())
    try:
        with pytest.raises(MasterError) as exc:
            MasterSession(evil.url, timeout=5).lease(LeaseRequest(max_units=1, cpus=1.0, memory=MIB))
        assert "\x1b" not in str(exc.value) and "\n" not in str(exc.value) and "way" in str(exc.value)
    finally:
        evil.close()


# --- the image budget ---------------------------------------------------------------------


class ImageMaster:
    """Answers image records; any download is recorded (a refusal must come before one)."""

    def __init__(self, info: ImageInfo) -> None:
        self.info = info
        self.downloads: list[str] = []

    def get(self, path: str, reply: type, **kw: Any) -> ImageInfo:
        return self.info

    def download(self, blob: str, dest: BinaryIO, **kw: Any) -> None:
        self.downloads.append(blob)
        raise AssertionError("downloaded an image past the budget")


def test_an_image_past_the_image_budget_is_refused_before_a_byte_is_fetched(
    tmp_path: Path, docker_client: docker.DockerClient, base_image: str
) -> None:
    """The budget is 10 MiB; the images fetched before that the engine still holds take 9 MiB
    (a ledger entry of an image it no longer holds is dropped); a new image of 2 MiB is
    refused as REFUSED, saying so, and nothing of it is downloaded."""
    image_id = "sha256:" + "e1" * 32
    info = ImageInfo(
        id=image_id, config="0" * 32, config_size=1000,
        layers=[LayerInfo("sha256:" + "7" * 64, 2 * MIB, ["1" * 32])], tags=["x/big:1"], signatures=[],
    )  # fmt: skip
    held = docker_client.images.get(base_image).id
    ledger = tmp_path / "images" / "fetched.json"
    ledger.parent.mkdir()
    ledger.write_text(json.dumps({held: 9 * MIB, "sha256:" + "0f" * 32: 500 * MIB}))
    master = ImageMaster(info)
    settings = ClientSettings(memory="1GiB", slots=2, allow_unsigned=True, image_budget="10MiB")
    provisioner = Provisioner(settings, master, docker_client, str(tmp_path), 2, 1 << 30)  # type: ignore[arg-type]
    g = Grant(
        attempt="a1", job="j", unit="j.0", kind="map", image=image_id, command=["run"], env={}, cpus=1.0,
        memory=64 * MIB, timeout=60.0, deadline=0.0, inputs=[],
    )  # fmt: skip
    outcome = provisioner.prepare(g, threading.Event())
    assert outcome is not None and outcome.error == ErrorKind.REFUSED
    assert f"image {image_id} needs 2.0MiB downloaded" in outcome.stderr_tail
    assert "take 9.0MiB of this volunteer's image budget of 10.0MiB" in outcome.stderr_tail
    assert master.downloads == []
    assert json.loads(ledger.read_text()) == {held: 9 * MIB}, "an image the engine lost leaves the ledger"
    assert not [p for p in (tmp_path / "images").iterdir() if p.name.startswith("load-")]

    roomier = ClientSettings(memory="1GiB", slots=2, allow_unsigned=True, image_budget="12MiB")
    provisioner = Provisioner(roomier, master, docker_client, str(tmp_path), 2, 1 << 30)  # type: ignore[arg-type]
    with pytest.raises(AssertionError, match="past the budget"):  # within the budget: it is fetched
        provisioner.prepare(g, threading.Event())
    assert master.downloads == ["0" * 32]
    assert provisioner._reserved == 0, "a fetch that failed gives its share of the budget back"


def test_the_settings_bound_results_and_images() -> None:
    settings = ClientSettings()
    assert settings.max_result == 256 * MIB and settings.image_budget == 10 << 30
    assert ClientSettings(max_result="1GiB").max_result == 1 << 30
    with pytest.raises(SettingsError, match="max_result must be at least 1KiB"):
        ClientSettings(max_result="10B").validate()
    with pytest.raises(SettingsError, match="image_budget must be at least 1MiB"):
        ClientSettings(image_budget="1KiB").validate()
