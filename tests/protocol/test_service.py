"""Service mode's framing and the workload's side of it (protocol/service.py), over real
Unix socket pairs: frames both ways, every way a hostile peer can break one, and the serve
loop a workload runs, with a function that succeeds, raises, and a daemon that hangs up."""

import os
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dockercomp.protocol import service
from dockercomp.protocol.service import (
    MAX_FRAME,
    Closed,
    FrameError,
    Unit,
    encode_frame,
    main_of,
    read_frame,
    send_frame,
)


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    yield a, b
    a.close()
    b.close()


def test_a_frame_is_its_length_then_its_json(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    message = {"type": "unit", "id": "a1", "env": {"K": "6", "É": "ü"}, "input": "/input/u000001"}
    assert encode_frame(message)[:4] == struct.pack(">I", len(encode_frame(message)) - 4)
    send_frame(a, message)
    send_frame(a, {"type": "done", "id": "a1"})
    assert read_frame(b, timeout=1) == message
    assert read_frame(b, timeout=1) == {"type": "done", "id": "a1"}


def test_a_clean_hang_up_between_frames_is_closed(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    a.close()
    with pytest.raises(Closed):
        read_frame(b, timeout=1)


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (struct.pack(">I", 0), "a frame of 0 bytes announced"),
        (struct.pack(">I", MAX_FRAME + 1), f"at most {MAX_FRAME} are accepted"),
        (struct.pack(">I", 0xFFFFFFFF), "at most"),
        (struct.pack(">I", 4) + b"\xff\xfe{}", "not UTF-8 JSON"),
        (struct.pack(">I", 5) + b"nope!", "not UTF-8 JSON"),
        (struct.pack(">I", 2) + b"[]", "not a JSON object with a type"),
        (struct.pack(">I", 11) + b'{"type": 1}', "not a JSON object with a type"),
        (struct.pack(">I", 10) + b"{}", "closed 2 bytes into a 10-byte read"),
        (b"\x00\x00", "closed 2 bytes into a 4-byte read"),
    ],
)
def test_a_broken_frame_is_refused_with_what_broke(
    pair: tuple[socket.socket, socket.socket], raw: bytes, fragment: str
) -> None:
    a, b = pair
    a.sendall(raw)
    a.shutdown(socket.SHUT_WR)
    with pytest.raises(FrameError, match=fragment):
        read_frame(b, timeout=1)


def test_a_frame_nested_past_the_recursion_limit_is_refused(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    body = b"[" * 200_000 + b"]" * 200_000
    threading.Thread(target=a.sendall, args=(struct.pack(">I", len(body)) + body,), daemon=True).start()
    with pytest.raises(FrameError, match="not UTF-8 JSON"):
        read_frame(b, timeout=5)


def test_a_smaller_limit_refuses_a_longer_frame_unread(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    send_frame(a, {"type": "done", "id": "x" * 5000})
    with pytest.raises(FrameError, match="at most 4096"):
        read_frame(b, limit=4096, timeout=1)


def test_a_frame_too_long_to_send_is_not_sent() -> None:
    with pytest.raises(FrameError, match="longer than"):
        encode_frame({"type": "unit", "env": {"A": "x" * MAX_FRAME}})


def test_a_peer_that_trickles_its_frame_is_cut_off_at_the_deadline(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    frame = encode_frame({"type": "done", "id": "a1"})

    def trickle() -> None:
        for byte in frame:
            try:
                a.send(bytes([byte]))
            except OSError:
                return
            time.sleep(0.05)

    threading.Thread(target=trickle, daemon=True).start()
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        read_frame(b, timeout=0.3)
    assert time.monotonic() - started < 1.0


def serve_on(path: Path, handle: object) -> tuple[threading.Thread, list[int]]:
    codes: list[int] = []
    thread = threading.Thread(target=lambda: codes.append(service.serve(handle, str(path))), daemon=True)  # type: ignore[arg-type]
    thread.start()
    return thread, codes


def test_serve_runs_the_function_per_unit_and_reports_its_exceptions(tmp_path: Path) -> None:
    """The daemon's side played here: ready, a unit that works, one that raises, another that
    works (the same process goes on), then a hang-up ends serve with 0."""
    path = tmp_path / "service.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)
    seen: list[Unit] = []

    def handle(unit: Unit) -> None:
        seen.append(unit)
        if unit.id == "bad":
            raise ValueError("no such chunk")
        (Path(unit.output) / "result").write_text(f"{unit.id} {os.getpid()}\n")

    thread, codes = serve_on(path, handle)
    conn, _ = listener.accept()
    assert read_frame(conn, timeout=5) == {"type": "ready", "protocol": service.PROTOCOL}
    for attempt in ("a1", "bad", "a2"):
        out = tmp_path / attempt
        out.mkdir()
        send_frame(conn, {"type": "unit", "id": attempt, "job": "j", "unit": "u", "env": {"K": "6"},
                          "input": str(tmp_path), "output": str(out)})  # fmt: skip
        reply = read_frame(conn, timeout=5)
        assert reply["id"] == attempt
        if attempt == "bad":
            assert reply["type"] == "error"
            assert reply["error"] == "ValueError: no such chunk"
            assert "Traceback" in reply["traceback"] and reply["traceback"].endswith("ValueError: no such chunk\n")
        else:
            assert reply == {"type": "done", "id": attempt}
            assert (out / "result").read_text() == f"{attempt} {os.getpid()}\n"
    conn.close()
    thread.join(5)
    assert codes == [0]
    assert [u.env for u in seen] == [{"K": "6"}] * 3
    listener.close()


def test_main_of_runs_a_batch_entry_point_on_the_units_directories(tmp_path: Path) -> None:
    calls: list[list[str]] = []

    def main(argv: list[str]) -> int:
        calls.append(argv)
        return 0 if len(calls) == 1 else 3

    handle = main_of(main)
    unit = Unit(id="a", job="j", unit="u", input="/input/u000001", output="/output/u000001")
    handle(unit)
    assert calls == [["main", "/input/u000001/chunk", "/output/u000001/result"]]
    with pytest.raises(RuntimeError, match="exit code 3"):
        handle(unit)
