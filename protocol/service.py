"""Service mode's wire between a volunteer's daemon and a warm container, and the workload's side of it.

This one module is both halves: the daemon imports it (``dockercomp.protocol.service``) for the
framing, and ``dockercomp workloads build`` copies it into every workload image as
``/app/dockercomp_runner.py``, where a workload's service entry point calls ``serve``. So it
is Python 3.11 standard library only, and imports nothing of dockercomp.

The daemon listens on a Unix socket, ``/input/service.sock`` inside the container (its
/input is read-only, as in batch mode; a socket there can still be connected to). The
container connects once at start and says ``ready``; then, one unit at a time:

    daemon -> container  {"type": "unit", "id": ATTEMPT, "job": ..., "unit": ...,
                          "env": {...}, "input": "/input/u000001", "output": "/output/u000001"}
    container -> daemon  {"type": "done", "id": ATTEMPT}
                      or {"type": "error", "id": ATTEMPT, "error": "ValueError: ...", "traceback": "..."}

The unit's result is ``OUTPUT/result``, as ``/output/result`` is in batch mode. Each frame is
a 4-byte big-endian length, then that many bytes of one UTF-8 JSON object; no frame is longer
than MAX_FRAME either way, and each side refuses a longer one unread.

A workload:

    from dockercomp_runner import serve

    def handle(unit):  # unit.input, unit.output: the unit's directories; unit.env: the job's env
        ...write os.path.join(unit.output, "result")...

    serve(handle)

An exception raised by ``handle`` is reported as the unit's failure (its traceback's tail is
the unit's stderr) and the container takes the next unit; one that ends the process (an
out-of-memory kill, ``os._exit``) fails the unit and the daemon starts another container.
"""

import json
import os
import select
import socket
import struct
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

PROTOCOL = 1
SOCKET = "/input/service.sock"  # where the container finds the daemon
SOCKET_NAME = "service.sock"  # its name in the directory mounted at /input
MAX_FRAME = 1 << 20  # bytes of one frame's JSON, either way
MAX_TEXT = 8192  # characters of an error message or traceback the workload sends back
_HEADER = struct.Struct(">I")


class FrameError(Exception):
    """The peer broke the framing: a frame too long, not JSON, not an object, or cut short."""


class Closed(FrameError):
    """The peer closed the connection between frames."""


def encode_frame(message: dict[str, Any]) -> bytes:
    body = json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    if len(body) > MAX_FRAME:
        raise FrameError(f"a frame of {len(body)} bytes is longer than {MAX_FRAME}")
    return _HEADER.pack(len(body)) + body


def send_frame(sock: socket.socket, message: dict[str, Any]) -> None:
    sock.sendall(encode_frame(message))


def read_frame(sock: socket.socket, limit: int = MAX_FRAME, timeout: float | None = None) -> dict[str, Any]:
    """The next frame; ``timeout``: seconds the whole frame may take once it is asked for
    (None: wait as long as it takes). Raises Closed at a clean end, FrameError for anything
    else that is not a frame of at most ``limit`` bytes, TimeoutError when it is too slow."""
    header = _read_exactly(sock, _HEADER.size, timeout, at_start=True)
    (length,) = _HEADER.unpack(header)
    if not 0 < length <= limit:
        raise FrameError(f"a frame of {length} bytes announced; at most {limit} are accepted")
    body = _read_exactly(sock, length, timeout)
    try:
        message = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise FrameError(f"a frame that is not UTF-8 JSON ({type(exc).__name__})") from None
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise FrameError("a frame that is not a JSON object with a type")
    return message


def _read_exactly(sock: socket.socket, size: int, timeout: float | None, at_start: bool = False) -> bytes:
    """``size`` bytes, all within ``timeout`` (a peer sending a byte at a time is cut off too)."""
    buffer = bytearray(size)
    view, got = memoryview(buffer), 0
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        while got < size:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise TimeoutError
            sock.settimeout(left)
            n = sock.recv_into(view[got:])
            if n == 0:
                if at_start and got == 0:
                    raise Closed("the peer closed the connection")
                raise FrameError(f"the connection closed {got} bytes into a {size}-byte read")
            got += n
    except TimeoutError:
        raise TimeoutError(f"a frame did not arrive within {timeout:g}s") from None
    return bytes(buffer)


def readable(sock: socket.socket, timeout: float) -> bool:
    """Whether the peer has sent something (or closed) within ``timeout`` seconds."""
    ready, _, _ = select.select([sock], [], [], max(0.0, timeout))
    return bool(ready)


# -- the workload's side ----------------------------------------------------------------------


@dataclass(frozen=True)
class Unit:
    """One unit as the workload's function gets it."""

    id: str  # the attempt's id
    job: str
    unit: str
    input: str  # its input directory (read-only): "chunk", "params.json", or "000000", ...
    output: str  # its output directory: write "result" there
    env: dict[str, str] = field(default_factory=dict)  # the job's environment (also os.environ)


def serve(handle: Callable[[Unit], None], path: str = SOCKET) -> int:
    """Connect to the daemon at ``path`` and run ``handle`` for every unit it sends, until it
    hangs up; the exit code (0 when it hung up between units)."""
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.connect(path)
    send_frame(conn, {"type": "ready", "protocol": PROTOCOL})
    while True:
        try:
            message = read_frame(conn)
        except Closed:
            return 0
        if message.get("type") != "unit":
            print(f"dockercomp_runner: unexpected frame {message.get('type')!r:.40}", file=sys.stderr)
            return 2
        unit = Unit(
            id=str(message.get("id", "")),
            job=str(message.get("job", "")),
            unit=str(message.get("unit", "")),
            input=str(message.get("input", "")),
            output=str(message.get("output", "")),
            env={str(k): str(v) for k, v in (message.get("env") or {}).items()},
        )
        try:
            handle(unit)
        except Exception as exc:  # the unit's failure, not the container's: take the next one
            reply = {
                "type": "error",
                "id": unit.id,
                "error": f"{type(exc).__name__}: {exc}"[:MAX_TEXT],
                "traceback": traceback.format_exc()[-MAX_TEXT:],
            }
        else:
            reply = {"type": "done", "id": unit.id}
        sys.stderr.flush()
        send_frame(conn, reply)


def main_of(main: Callable[[list[str]], int], *args: str) -> Callable[[Unit], None]:
    """A batch entry point ``main(argv)`` taking ``[CHUNK [RESULT]]`` as a service function:
    the unit's ``input/chunk`` and ``output/result``; a non-zero return fails the unit."""

    def handle(unit: Unit) -> None:
        code = main(["main", os.path.join(unit.input, "chunk"), os.path.join(unit.output, "result"), *args])
        if code:
            raise RuntimeError(f"the workload returned exit code {code}")

    return handle
