"""The daemon's HTTP session: which answers are retried (with backoff) and which are final,
resumed downloads, and the saved identity. Against a scripted HTTP server in a thread."""

import io
import os
import socket
import stat
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from dockercomp.client.errors import MasterRefused, MasterUnavailable, NotRegistered
from dockercomp.client.master import PIECE, Backoff, Identity, MasterSession
from dockercomp.protocol import codec
from dockercomp.protocol.messages import LeaseReply, LeaseRequest

BLOB = bytes(range(256)) * (4 * PIECE // 256)  # four of the session's pieces
HASH = "0" * 32


class Script(BaseHTTPRequestHandler):
    """Answers each request with the next (status, body, headers) of the server's script;
    GET /api/v1/blobs/... serves BLOB, cut off halfway the first time."""

    def do_POST(self) -> None:
        self.server.seen.append((self.path, dict(self.headers)))  # type: ignore[attr-defined]
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        status, body, headers = self.server.script.pop(0)  # type: ignore[attr-defined]
        data = codec.pack(body)
        self.send_response(status)
        for name, value in {"Content-Type": codec.MSGPACK, **headers}.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self.server.seen.append((self.path, dict(self.headers)))  # type: ignore[attr-defined]
        start = int(self.headers.get("Range", "bytes=0-").split("=")[1].rstrip("-"))
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(BLOB) - start))
        self.end_headers()
        if not start:  # the first transfer breaks off halfway
            self.wfile.write(BLOB[: len(BLOB) // 2])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(BLOB[start:])

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[ThreadingHTTPServer]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Script)
    httpd.script = []  # type: ignore[attr-defined]
    httpd.seen = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def session(server: ThreadingHTTPServer) -> MasterSession:
    return MasterSession(f"http://127.0.0.1:{server.server_port}", backoff=Backoff(0.01, 0.05), token="c.tok")


def lease(s: MasterSession, **kw: object) -> LeaseReply:
    return s.lease(LeaseRequest(2), **kw)  # type: ignore[arg-type]


def test_a_failing_master_is_retried_until_it_answers(server: ThreadingHTTPServer) -> None:
    server.script += [  # type: ignore[attr-defined]
        (503, {"error": "busy", "status": 503}, {"Retry-After": "0"}),
        (500, {"error": "internal error", "status": 500}, {}),
        (200, {"attempts": [], "retry_after": 3.0}, {}),
    ]
    s = session(server)
    assert lease(s).retry_after == 3.0
    assert (s.retries, s.failures) == (2, 0)
    path, headers = server.seen[0]  # type: ignore[attr-defined]
    assert path == "/api/v1/lease" and headers["Authorization"] == "Bearer c.tok"
    assert headers["Content-Type"] == codec.MSGPACK


@pytest.mark.parametrize("status", [400, 403, 409, 413, 422])
def test_a_refusal_is_final(server: ThreadingHTTPServer, status: int) -> None:
    server.script.append((status, {"error": "max_units must be from 0 to 1000", "status": status}, {}))  # type: ignore[attr-defined]
    with pytest.raises(MasterRefused, match="max_units must be") as raised:
        lease(session(server))
    assert raised.value.status == status and not isinstance(raised.value, NotRegistered)
    assert len(server.seen) == 1  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("status", "message"), [(401, "invalid client token; register again"), (404, "no client 'x'; register again")]
)
def test_an_unknown_client_is_told_to_register(server: ThreadingHTTPServer, status: int, message: str) -> None:
    server.script.append((status, {"error": message, "status": status}, {}))  # type: ignore[attr-defined]
    with pytest.raises(NotRegistered):
        lease(session(server))


def test_a_master_that_is_down_is_given_up_on_after_the_tries_or_when_told() -> None:
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    s = MasterSession(f"http://127.0.0.1:{port}", backoff=Backoff(0.01, 0.02))
    with pytest.raises(MasterUnavailable, match="cannot reach it"):
        lease(s, tries=3)
    assert s.retries == 2 and s.failures == 3 and "ConnectionError" in s.last_error
    stop = threading.Event()
    threading.Timer(0.2, stop.set).start()
    began = time.monotonic()
    with pytest.raises(MasterUnavailable, match="stopped waiting"):
        lease(s, until=stop)
    assert time.monotonic() - began < 2


def test_a_download_cut_off_is_resumed_where_it_stopped(server: ThreadingHTTPServer) -> None:
    dest = io.BytesIO()
    session(server).download(HASH, dest, url=f"/api/v1/blobs/{HASH}", tries=3)
    assert dest.getvalue() == BLOB
    (first, _), (second, headers) = server.seen  # type: ignore[attr-defined]
    assert first == second == f"/api/v1/blobs/{HASH}"
    assert headers["Range"] == f"bytes={len(BLOB) // 2}-"  # what came before the cut is kept


def test_a_grant_never_sends_the_daemon_to_another_host(server: ThreadingHTTPServer) -> None:
    s = session(server)
    assert s.blob_url(HASH, f"/api/v1/blobs/{HASH}") == f"{s.url}/api/v1/blobs/{HASH}"
    for url in ("http://elsewhere.example/x", "//elsewhere.example/x", ""):
        assert s.blob_url(HASH, url) == f"{s.url}/api/v1/blobs/{HASH}"


def test_backoff_grows_to_its_cap_with_jitter() -> None:
    backoff = Backoff(1.0, 8.0)
    for failures, ceiling in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (10, 8.0), (100, 8.0)]:
        delays = {backoff.delay(failures) for _ in range(50)}
        assert all(ceiling / 2 <= d <= ceiling for d in delays) and len(delays) > 1


def test_the_identity_is_kept_for_its_master_only_and_private(tmp_path: Path) -> None:
    path = str(tmp_path / "identity.json")
    Identity("http://m:1", "c1", "c1.tok").save(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert Identity.load(path, "http://m:1") == Identity("http://m:1", "c1", "c1.tok")
    assert Identity.load(path, "http://other:1") is None
    Path(path).write_text("{not json")
    assert Identity.load(path, "http://m:1") is None
