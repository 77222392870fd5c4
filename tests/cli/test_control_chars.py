"""A master's strings (job names, images, ids, error texts) reach the terminal of `dockercomp
status`, `dockercomp jobs`, `dockercomp clients` and `dockercomp client status` without their
escape codes or control characters. The master is a tiny HTTP server on 127.0.0.1."""

import http.server
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dockercomp import cli
from dockercomp.client import status
from dockercomp.protocol.transport import printable

EVIL = "\x1b]0;owned\x07\x1b[2J\x1b[31mred\x1b[0m\r\x08\x9b1m\u202eevil\nforged line"
JOB = {
    "job": "job-1", "name": EVIL, "state": "running", "drmaa2": "RUNNING",
    "units": {"ready": 1, "running": 2, "done": 0}, "unrunnable": {"message": "wait " + EVIL},
}  # fmt: skip
ROUTES: dict[str, tuple[int, Any]] = {
    "/api/v1/jobs/job-1": (200, JOB),
    "/api/v1/jobs/gone": (404, {"error": "no job " + EVIL}),
    "/api/v1/jobs": (200, {"jobs": [{"id": "job-1", "name": EVIL, "state": "running\x1b[5m", "units": 3}]}),
}
CLIENT = {"id": "c1", "name": EVIL, "online": True, "busy": 1, "slots": 2, "valid": 3, "errors": 0, "reliability": 1.0}
ROUTES["/api/v1/clients"] = (200, {"clients": [CLIENT]})


@pytest.fixture(scope="module")
def master() -> Iterator[str]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            code, body = ROUTES.get(self.path.split("?")[0], (404, {"error": "no route"}))
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def clean(text: str) -> bool:
    return not any(c in text for c in "\x1b\x07\x08\r\x9b\u202e")


def test_printable_strips_escapes_and_controls() -> None:
    assert printable(EVIL) == "red 1mevil forged line"
    assert printable(EVIL, lines=True) == "red1mevil\nforged line"
    assert printable("plain text, ünïcode — kept\ttab") == "plain text, ünïcode — kept tab"


@pytest.mark.parametrize(
    "argv",
    [("status", "job-1"), ("jobs",), ("clients",)],
)
def test_listings_from_the_master_show_no_control_characters(
    master: str, capsys: pytest.CaptureFixture[str], argv: tuple[str, ...]
) -> None:
    code, out, err = run(capsys, *argv, "--server", master, "--token", "t")
    assert code == 0, err
    assert "red" in out and "evil" in out
    assert clean(out) and clean(err), repr(out)
    assert "\nforged line" not in out, "a newline of the master's starts no line of its own"


def test_the_masters_error_message_shows_no_control_characters(master: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "status", "gone", "--server", master, "--token", "t")
    assert code == 2
    assert "no job red 1mevil forged line (HTTP 404)" in err and "(HTTP 404)" in err
    assert clean(err), repr(err)


def test_json_output_escapes_what_it_carries(master: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "status", "job-1", "--server", master, "--token", "t", "--json")
    assert code == 0 and clean(out) and json.loads(out)["state"] == "running"


def test_client_status_shows_no_control_characters(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The status file holds what the master granted (job, unit, image, ids) and its last
    error: `client status` shows all of it, none of it raw."""
    row = {
        "attempt": "a\x1b[1m1", "job": EVIL, "unit": "u\x1b[Hnit", "image": "img\x1b]8;;http://x\x07link",
        "cpus": 1.0, "memory": 1 << 20, "phase": "running", "started_at": time.time(),
    }  # fmt: skip
    data = {
        "pid": os.getpid(), "state": "running", "updated_at": time.time(), "client": "c\x1b[7m1", "name": EVIL,
        "master": "http://127.0.0.1:1", "master_ok": False, "master_error": "HTTP 500: " + EVIL, "slots": 2,
        "memory": 1 << 30, "running": [row], "queued": [{"unit": EVIL, "attempt": "q1"}],
    }  # fmt: skip
    status.write_status(str(tmp_path), data)
    code, out, err = run(capsys, "client", "status", "--work-dir", str(tmp_path))
    assert code == 0, err
    assert "imglink" in out and "unit" in out and "HTTP 500: red 1mevil forged line" in out
    assert clean(out), repr(out)
    assert not any(line.startswith("forged line") for line in out.splitlines())


def test_a_log_line_cannot_be_repainted_or_forged() -> None:
    import io
    import logging

    from dockercomp.cli import PrintableFormatter

    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(PrintableFormatter("%(levelname)s %(message)s"))
    log = logging.getLogger("test-control-chars")
    log.addHandler(handler)
    log.warning("image %s is not here", "evil\x1b[2J\x07\nINFO forged line")
    assert out.getvalue() == "WARNING image evil INFO forged line is not here\n"
