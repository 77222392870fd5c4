"""A hostile master: a tiny HTTP server on loopback answers the daemon's real calls (register,
heartbeat, lease, results, release, an image's record) with thousands of mutated msgpack
replies and HTTP oddities: statuses of every class, wrong content types, bodies cut short or
longer than the client's cap, bombs of gzip, chunked framing gone wrong, headers too long or
too many, dates past year 9999, nesting past every limit, a master that closes, resets or
never answers.

A call returns the reply the protocol makes of the body, or raises one of the client's own
errors (client/errors.py): MasterError for a reply not understood or too large, MasterRefused
(NotRegistered) for a 4xx, MasterUntrusted for a redirect, MasterUnavailable when the master
keeps failing. Never TypeError, KeyError, RecursionError, MemoryError or any other; never past
its timeout; and nothing a master says reaches an error text with its control characters.

Seeded: DOCKERCOMP_FUZZ_SEED reproduces a failure; DOCKERCOMP_MASTER_FUZZ_CASES says how many."""

import collections
import dataclasses
import gzip
import os
import random
import re
import socket
import threading
import time
import traceback
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from dockercomp.client.errors import ClientError, MasterError, MasterRefused, MasterUnavailable, MasterUntrusted
from dockercomp.client.master import MAX_REPLY, Backoff, MasterSession
from dockercomp.protocol import codec
from dockercomp.protocol.errors import ProtocolError
from dockercomp.protocol.images import ImageInfo
from dockercomp.protocol.messages import (
    Ack,
    AckBatch,
    Command,
    ContainerSpec,
    Grant,
    Heartbeat,
    HeartbeatReply,
    InputRef,
    LeaseReply,
    LeaseRequest,
    Message,
    RegisterReply,
    RegisterRequest,
    ResultBatch,
    ResultReport,
    ResultStatus,
    UnitKind,
)
from dockercomp.protocol.transport import printable
from tests.protocol.test_codec_fuzz import FORGED_LINE, hostile_body, judge, nested, text, write
from tests.protocol.test_messages import SAMPLES

SEED = int(os.environ.get("DOCKERCOMP_FUZZ_SEED", "20261121"))
CASES = int(os.environ.get("DOCKERCOMP_MASTER_FUZZ_CASES", "5000"))
TIMEOUT = 0.5  # the session's: a master that says nothing for this long has failed the request
CAP = 256 << 10  # the replies the fuzzed session reads (its default, MAX_REPLY, is tested on its own)
SLACK = 3.0  # seconds a call may take past its timeouts on a busy machine
CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")
HASH = "0123456789abcdef0123456789abcdef"


# -- the hostile master ---------------------------------------------------------------------------


@dataclass
class Answer:
    """What the master does with a request: send ``data`` and close (``then`` says how), or
    stall, or stream ``data`` then ``forever`` without end."""

    data: bytes
    then: str = "close"  # close | reset | stall
    forever: bytes = b""


class HostileMaster:
    """Answers each request, on a connection of its own, as ``answer`` says."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.answer: Callable[[bytes], Answer] = lambda request: Answer(b"")
        self.requests = 0
        self.sent = 0  # bytes of the last answer that went out
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(10)
            try:
                request = self._read(conn)
                self.requests += 1
                answer = self.answer(request)
                self.sent = 0
                conn.sendall(answer.data)
                self.sent += len(answer.data)
                while answer.forever and not self.stop.is_set():
                    conn.sendall(answer.forever)
                    self.sent += len(answer.forever)
                if answer.then == "reset":
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                elif answer.then == "stall":
                    self.stop.wait(TIMEOUT * 4)
                else:
                    conn.shutdown(socket.SHUT_WR)
            except OSError:  # the client gave up on us: what a hostile master expects
                pass

    @staticmethod
    def _read(conn: socket.socket) -> bytes:
        data = b""
        while b"\r\n\r\n" not in data:
            piece = conn.recv(65536)
            if not piece:
                return data
            data += piece
        head, _, body = data.partition(b"\r\n\r\n")
        match = re.search(rb"\r\ncontent-length: *(\d+)", head, re.IGNORECASE)
        while match and len(body) < int(match.group(1)):
            piece = conn.recv(65536)
            if not piece:
                break
            body += piece
        return head + b"\r\n\r\n" + body

    def close(self) -> None:
        self.stop.set()
        self.sock.close()


@pytest.fixture
def hostile() -> Iterator[HostileMaster]:
    master = HostileMaster()
    yield master
    master.close()


def session(master: HostileMaster, cap: int = CAP) -> MasterSession:
    return MasterSession(f"http://127.0.0.1:{master.port}", timeout=TIMEOUT, backoff=Backoff(0.001, 0.002),
                         token="c1.token", max_reply=cap)  # fmt: skip


def response(status: int = 200, body: bytes = b"", headers: dict[str, str] | None = None, *,
             reason: str = "OK", length: bool = True, close: bool = True) -> bytes:  # fmt: skip
    """An HTTP/1.1 response, framed properly unless told otherwise."""
    head = {"Content-Type": codec.MSGPACK} | (headers or {})
    if length:
        head["Content-Length"] = str(len(body))
    if close:
        head["Connection"] = "close"
    lines = [f"HTTP/1.1 {status} {reason}".encode("utf-8", "surrogatepass")]
    lines += [f"{k}: {v}".encode("latin-1") for k, v in head.items()]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


# -- the daemon's calls, and valid replies to them ---------------------------------------------------

GRANT = Grant(
    "a1", "j1", "j1.0", UnitKind.MAP, "sha256:" + "ab" * 32, ["python3", "/app/map.py"], {"LANG": "C.UTF-8"}, 1.0,
    256 << 20, 300.0, 2e9, [InputRef("input", HASH, 10, f"/api/v1/blobs/{HASH}")], "batch",
    [ContainerSpec("kv", "sha256:" + "cd" * 32, ["kv"], {"PORT": "7000"})], "main", 0,
)  # fmt: skip


@dataclass(frozen=True)
class Call:
    name: str
    reply: type[Message]
    template: Message  # a valid reply, every field present
    run: Callable[[MasterSession, int], Any]  # the call, with its tries


CALLS = [
    Call("register", RegisterReply, RegisterReply("c1", "c1.token", 10.0),
         lambda s, tries: s.register(RegisterRequest("laptop", 2), tries=tries)),
    Call("heartbeat", HeartbeatReply, HeartbeatReply([Command("abort", "a1"), Command("pause", "a2")], 5.0),
         lambda s, tries: s.heartbeat(Heartbeat(2, 1), tries=tries)),
    Call("lease", LeaseReply, LeaseReply([GRANT, dataclasses.replace(GRANT, attempt="a2", sidecars=[])], 0.0),
         lambda s, tries: s.lease(LeaseRequest(2), tries=tries)),
    Call("results", AckBatch, AckBatch([Ack("a1", True, ""), Ack("a2", False, "duplicate result")]),
         lambda s, tries: s.results(ResultBatch([ResultReport("a1", ResultStatus.SUCCEEDED, output_hash=HASH)]),
                                    tries=tries)),
    Call("release", AckBatch, AckBatch([Ack("a1", True, "")]), lambda s, tries: s.release(["a1"], tries=tries)),
    Call("image", ImageInfo, ImageInfo.from_wire(SAMPLES[ImageInfo]),
         lambda s, tries: s.get(f"/images/sha256:{'b' * 64}", ImageInfo, tries=tries)),
]  # fmt: skip


def expected_reply(call: Call, message: Message) -> Message | None:
    """What the call returns for a reply the protocol takes (the master's reasons printable), or
    None when the client refuses it all the same (a token no header could carry)."""
    if isinstance(message, AckBatch) and call.name in ("results", "release"):
        return AckBatch([dataclasses.replace(a, reason=printable(a.reason)) for a in message.acks])
    if isinstance(message, RegisterReply) and not re.fullmatch(r"[!-~]{1,256}", message.token):
        return None
    return message


# -- hostile answers --------------------------------------------------------------------------------

Outcome = str  # "judge" (the body decides) | "refused" | "untrusted" | "unavailable" | "too large" | "any"
STATUSES = [100, 101, 102, 103, 199, 200, 201, 202, 203, 204, 206, 226, 299, 300, 301, 302, 303, 304, 305, 307, 308,
            399, 400, 401, 402, 403, 404, 405, 406, 408, 409, 410, 413, 414, 415, 416, 418, 421, 422, 425, 426, 428,
            429, 431, 451, 499, 500, 501, 502, 503, 504, 505, 507, 511, 599, 600, 700, 999]  # fmt: skip
DATES = ["Mon, 01 Jan 99999999999 00:00:00 GMT", "Mon, 01 Jan 2020 00:00:00 +99999999999999999999",
         "Mon, 01 Jan 10000 00:00:00 GMT", "Mon, 01 Jan 9999 23:59:59 -9999", "garbage", "", "0",
         "Mon, 01 Jan 0001 00:00:00 +2359", "Thu, 01 Jan 1970 00:00:00 GMT", "Tue, 19 Jan 2038 03:14:08 GMT",
         "Mon, 32 Foo 2020 25:61:61 GMT", "\x7f\x80\xff"]  # fmt: skip
RETRY_AFTER = ["0", "-1", "nan", "inf", "-inf", "1e999", "99999999999999999999", "x", "", "1.5", "\xff", "0x10"]


def odd_headers(r: random.Random) -> dict[str, str]:
    """Headers that must change nothing about a reply: a Date of any kind, Retry-After."""
    headers: dict[str, str] = {}
    if r.random() < 0.5:
        headers["Date"] = r.choice(DATES)
    if r.random() < 0.2:
        headers["Retry-After"] = r.choice(RETRY_AFTER)
    if r.random() < 0.2:
        headers["Content-Type"] = r.choice(["text/html", codec.JSON, "", "application/msgpack; x=\xff",
                                            "application/octet-stream"])  # fmt: skip
    return headers


def error_body(r: random.Random) -> bytes:
    """What a master (or a proxy) says with an error status."""
    return r.choice(
        [
            lambda: write({"error": text(r), "status": 400}),
            lambda: write({"error": text(r) + FORGED_LINE}),
            lambda: write({"error": r.choice([None, 5, ["x"], {"a": 1}, b"bytes", nested(r)])}),
            lambda: codec.dump_json({"error": text(r).encode("utf-8", "replace").decode()}),
            lambda: b"<html><body>502 Bad Gateway\x1b[2J</body></html>",
            lambda: bytes(r.getrandbits(8) for _ in range(r.randint(0, 300))),
            lambda: b"",
            lambda: nested(r).data,
        ]
    )()


def expectation(status: int) -> Outcome:
    """What the client makes of an answer with this status and a sound frame."""
    if 300 <= status < 400:
        return "untrusted"
    if status >= 500 or status == 429:
        return "unavailable"
    if status >= 400:
        return "refused"
    return "judge"


def gzip_bomb(size: int) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)  # gzip framing
    zeros = bytes(1 << 20)
    return b"".join([*(compressor.compress(zeros) for _ in range(size >> 20)), compressor.flush()])


def chunked(body: bytes, r: random.Random) -> bytes:
    pieces, i = [], 0
    while i < len(body):
        n = r.randint(1, 4096)
        pieces.append(b"%x\r\n%s\r\n" % (n if i + n <= len(body) else len(body) - i, body[i : i + n]))
        i += n
    return b"".join(pieces) + b"0\r\n\r\n"


def hostile_answer(call: Call, r: random.Random) -> tuple[str, Outcome, bytes, Answer]:
    """One hostile answer to ``call``: (what it is, what the client should make of it, the body
    that decides when the outcome is "judge", the answer)."""
    wire = call.template.to_wire()
    kind = r.random()
    if kind < 0.45:  # a sound frame: the protocol decides
        body = hostile_body(call.reply, wire, r) if r.random() < 0.8 else write(wire, r)
        return "mutated body", "judge", body, Answer(response(200, body, odd_headers(r)))
    if kind < 0.65:  # every status
        status = r.choice(STATUSES)
        body = error_body(r) if status >= 300 else hostile_body(call.reply, wire, r)
        headers = odd_headers(r)
        if 300 <= status < 400 and r.random() < 0.7:
            headers["Location"] = r.choice(["http://10.0.0.1/x", "//evil\x1b[2J", "\x00", "http://[::1", "a" * 5000])
        outcome = expectation(status)
        if status in (100, 101):  # an interim status, then nothing: not HTTP the client can read
            outcome = "any"
        elif status < 200 or status in (204, 304):  # no body, whatever follows
            body = b""
        reason = re.sub(r"[\r\n]", "", text(r))[:20]  # a line break would end the status line: another test
        return f"status {status}", outcome, body, Answer(response(status, body, headers, reason=reason))
    if kind < 0.72:  # replies past the client's cap
        size = CAP + r.randint(1, CAP)
        pick = r.random()
        if pick < 0.3:
            body = write({**wire, "padding": "x" * size})
            return "too large", "too large", b"", Answer(response(200, body))
        if pick < 0.5:
            endless = Answer(response(200, length=False), forever=b"\xc0" * 65536)
            return "too large, no length", "too large", b"", endless
        if pick < 0.7:
            bomb = gzip_bomb(size * 16)
            return "gzip bomb", "too large", b"", Answer(response(200, bomb, {"Content-Encoding": "gzip"}))
        head = response(200, headers={"Transfer-Encoding": "chunked"}, length=False)
        return "too large, chunked", "too large", b"", Answer(head, forever=b"10000\r\n" + b"\xc0" * 65536 + b"\r\n")
    if kind < 0.96:  # framing gone wrong: any of the client's errors, or a reply
        return framing(call, wire, r)
    # the master closes, resets or stalls (a stall costs a timeout: a few of them)
    body = write(wire)
    pick = r.random()
    if pick < 0.4:
        return "closed at once", "unavailable", b"", Answer(b"")
    if pick < 0.7:
        return "reset", "unavailable", b"", Answer(b"", then="reset")
    if pick < 0.75:
        return "stalled before a byte", "unavailable", b"", Answer(b"", then="stall")
    if pick < 0.8:
        cut = response(200, body)[: r.randrange(len(response(200, body)))]
        return "stalled mid-reply", "unavailable", b"", Answer(cut, then="stall")
    cut = response(200, body)[: r.randrange(len(response(200, body)))]  # cut in the headers: the body ends at EOF
    return "cut short", "any", b"", Answer(cut, then=r.choice(["close", "reset"]))


def framing(call: Call, wire: dict[str, Any], r: random.Random) -> tuple[str, Outcome, bytes, Answer]:
    body = write(wire, r) if r.random() < 0.6 else hostile_body(call.reply, wire, r)
    pick = r.randrange(17)
    if pick == 0:
        return "no length, closed", "judge", body, Answer(response(200, body, length=False))
    if pick == 1:
        return "chunked", "judge", body, Answer(response(200, chunked(body, r), {"Transfer-Encoding": "chunked"},
                                                         length=False))  # fmt: skip
    if pick == 2:
        garbage = chunked(body, r).replace(b"\r\n", b"\r\nzz", 1)
        return "chunk sizes wrong", "any", b"", Answer(response(200, garbage, {"Transfer-Encoding": "chunked"},
                                                                length=False))  # fmt: skip
    if pick == 3:
        return "gzip", "judge", body, Answer(response(200, gzip.compress(body), {"Content-Encoding": "gzip"}))
    if pick == 4:
        broken = b"\x1f\x8b\x08\x00" + body
        return "gzip broken", "any", b"", Answer(response(200, broken, {"Content-Encoding": "gzip"}))
    if pick == 5:
        encoding = r.choice(["deflate", "br", "zstd", "x-unknown", "gzip, gzip", "identity"])
        return f"encoding {encoding}", "any", b"", Answer(response(200, body, {"Content-Encoding": encoding}))
    if pick == 6:
        frame = response(200, body, {"Content-Length": str(len(body) + r.randint(1, 100))}, length=False)
        return "longer than sent", "unavailable", b"", Answer(frame)
    if pick == 7:
        shorter = r.randrange(len(body) + 1)
        frame = response(200, body, {"Content-Length": str(shorter)}, length=False)
        return "shorter than sent", "judge", body[:shorter], Answer(frame)
    if pick == 8:
        value = r.choice(["-1", "abc", "1e3", "10" * 20, "99999999999999999999999999", f"{len(body)}, {len(body) + 1}",
                          " ", "0x10", "\xb2"])  # fmt: skip
        return f"Content-Length {value!r}", "any", b"", Answer(response(200, body, {"Content-Length": value},
                                                                        length=False))  # fmt: skip
    if pick == 9:
        status_line = r.choice([b"HTTP/1.1 abc OK", b"HTTP/9.9 200 OK", b"ICY 200 OK", b"\x00\xff", b"HTTP/1.1 20 OK",
                                b"HTTP/1.1 2000 OK", b"http/1.1 200 ok", b"HTTP/1.1 200", b"HTTP/1.1  200 OK",
                                b"HTTP/1.0 200 OK"])  # fmt: skip
        frame = status_line + response(200, body)[response(200, body).index(b"\r\n") :]
        return f"status line {status_line!r}", "any", body, Answer(frame)
    if pick == 10:
        return "no status line", "any", b"", Answer(body)
    if pick == 11:
        head = {"X-Long": "a" * r.choice([8000, 70000])}
        return "a long header", "any", body, Answer(response(200, body, head))
    if pick == 12:
        frame = response(200, body, {f"X-{i}": "v" for i in range(r.choice([99, 150, 1000]))})
        return "many headers", "any", body, Answer(frame)
    if pick == 13:
        frame = response(200, body).replace(b"\r\n", b"\r\nno colon here\r\n\tfolded\r\n", 1)
        return "malformed headers", "any", body, Answer(frame)
    if pick == 14:
        frame = b"HTTP/1.1 100 Continue\r\n\r\n" + response(200, body)
        return "100 first", "judge", body, Answer(frame)
    if pick == 15:
        frame = response(200, body, {"Content-Type": "application/json"})
        return "JSON said, msgpack sent", "judge", body, Answer(frame)
    json_body = codec.dump_json(codec.unpack(write(wire))) if call.reply is not ImageInfo else b"{}"
    return "JSON sent", "judge", json_body, Answer(response(200, json_body, {"Content-Type": codec.JSON}))


# -- the fuzzer ------------------------------------------------------------------------------------


def check(call: Call, outcome: Outcome, body: bytes, result: Any, error: BaseException | None) -> str | None:
    """What is wrong with what a call gave, or None."""
    if error is not None:
        if not isinstance(error, ClientError):
            return f"raised {type(error).__name__}: {error}\n{''.join(traceback.format_exception(error))[-1500:]}"
        if CONTROLS.search(str(error)):
            return f"{type(error).__name__} with control characters: {str(error)!r:.300}"
    if outcome == "judge":
        try:
            expected = judge(call.reply, body)
        except Exception as exc:  # a bug of the protocol itself
            return f"the protocol itself fails on the body: {type(exc).__name__}: {exc}"
        if len(body) > CAP:
            if type(error) is not MasterError or "more than" not in str(error):
                return f"expected a refusal of a reply of {len(body)} bytes, got {error or result!r:.300}"
        elif isinstance(expected, ProtocolError):
            if type(error) is not MasterError or "not understood" not in str(error):
                return f"expected MasterError (not understood: {expected}), got {error or result!r:.300}"
        elif expected_reply(call, expected) is None:
            if type(error) is not MasterError or "not understood" not in str(error):
                return f"expected MasterError (not understood: {expected!r:.200}), got {error or result!r:.300}"
        elif error is not None or result != expected_reply(call, expected):
            return f"expected the reply {expected!r:.200}, got {error or result!r:.300}"
    elif outcome == "any":
        if error is None and not isinstance(result, call.reply):
            return f"returned {result!r:.200}, no {call.reply.__name__}"
    else:
        wanted = {"refused": MasterRefused, "untrusted": MasterUntrusted, "unavailable": MasterUnavailable,
                  "too large": MasterError}[outcome]  # fmt: skip
        if not isinstance(error, wanted):
            return f"expected {wanted.__name__}, got {error or result!r:.300}"
        if outcome == "too large" and "more than" not in str(error):
            return f"expected a refusal of the reply's size, got {error!r:.300}"
    if isinstance(result, AckBatch) and any(CONTROLS.search(a.reason) for a in result.acks):
        return f"a reason with control characters reached the daemon: {result!r:.300}"
    return None


def next_call_with(master: HostileMaster, token: str) -> str | None:
    """What goes wrong with a heartbeat sent with the token a master gave, or None."""
    reply = HeartbeatReply([], 5.0)
    master.answer = lambda request: Answer(response(200, codec.pack(reply.to_wire())))
    s = session(master)
    s.token = token
    try:
        assert s.heartbeat(Heartbeat(1), tries=1) == reply
    except ClientError:
        pass
    except BaseException as exc:
        return f"the token {token!r:.60} it gave makes the next call raise {type(exc).__name__}: {exc}"
    return None


def test_a_hostile_master_only_ever_gets_the_clients_own_errors(hostile: HostileMaster) -> None:
    rng = random.Random(SEED)
    s = session(hostile)
    problems: list[str] = []
    seen: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    began = time.monotonic()
    for i in range(CASES):
        call = rng.choice(CALLS)
        what, outcome, body, answer = hostile_answer(call, rng)
        tries = 1 if outcome != "unavailable" or rng.random() < 0.8 else 2
        hostile.answer = lambda request, answer=answer: answer
        result: Any = None
        error: BaseException | None = None
        start = time.monotonic()
        try:
            result = call.run(s, tries)
        except BaseException as exc:  # everything: what is not the client's own is what this test looks for
            error = exc
        took = time.monotonic() - start
        kind = what.split(" ")[0] if what.startswith(("status", "encoding", "Content-Length")) else what
        seen[kind][type(error).__name__ if error else "reply"] += 1
        wrong = check(call, outcome, body, result, error)
        if took > tries * 2 * TIMEOUT + SLACK:
            wrong = (wrong or "") + f" took {took:.1f}s, past its timeout of {TIMEOUT}s"
        if CONTROLS.search(s.last_error):
            wrong = (wrong or "") + f" last_error has control characters: {s.last_error!r:.200}"
        if isinstance(result, RegisterReply) and not wrong:  # the token it gave must serve the next call
            wrong = next_call_with(hostile, result.token)
        if wrong:
            problems.append(f"#{i} {call.name}, {what}: {wrong}")
    elapsed = time.monotonic() - began
    outcomes = collections.Counter()
    for counts in seen.values():
        outcomes.update(counts)
    print(f"{CASES} answers in {elapsed:.1f}s, seed {SEED}: {dict(outcomes)}")
    assert not problems, f"{len(problems)} of {CASES} calls went wrong (seed {SEED}):\n" + "\n".join(problems[:20])
    assert outcomes["reply"] > CASES // 20 and outcomes["MasterError"] > CASES // 10, outcomes
    for kind in ("MasterRefused", "NotRegistered", "MasterUntrusted", "MasterUnavailable"):
        assert outcomes[kind] > CASES // 1000, (kind, outcomes)
    assert len(seen) > 25, sorted(seen)  # every kind of answer came up


# -- regressions and the real cap ------------------------------------------------------------------------


def test_a_reply_is_never_read_past_the_default_cap(hostile: HostileMaster) -> None:
    hostile.answer = lambda request: Answer(response(200, length=False), forever=b"\xc0" * 65536)
    s = session(hostile, cap=MAX_REPLY)
    began = time.monotonic()
    with pytest.raises(MasterError, match="more than") as raised:
        s.lease(LeaseRequest(2), tries=1)
    assert type(raised.value) is MasterError  # final: the same master would send the same
    assert time.monotonic() - began < 60
    time.sleep(0.2)
    assert MAX_REPLY < hostile.sent < MAX_REPLY + (16 << 20)  # what the sockets buffer, no more


def test_a_gzip_bomb_is_refused_past_the_cap(hostile: HostileMaster) -> None:
    bomb = gzip_bomb(64 << 20)
    assert len(bomb) < 128 << 10
    hostile.answer = lambda request: Answer(response(200, bomb, {"Content-Encoding": "gzip"}))
    with pytest.raises(MasterError, match="more than"):
        session(hostile, cap=1 << 20).heartbeat(Heartbeat(1), tries=1)


@pytest.mark.parametrize("date", DATES)
def test_any_date_header_leaves_a_sound_reply_alone(hostile: HostileMaster, date: str) -> None:
    body = codec.pack(RegisterReply("c1", "t", 10.0).to_wire())
    hostile.answer = lambda request: Answer(response(200, body, {"Date": date}))
    s = session(hostile)
    assert s.register(RegisterRequest("laptop"), tries=1) == RegisterReply("c1", "t", 10.0)
    assert abs(s.clock_offset) < 400 * 365 * 86400


def test_a_reply_with_a_field_that_forges_a_log_line_is_refused_in_one_printable_line(hostile: HostileMaster) -> None:
    body = codec.pack({"commands": [], "interval": 5.0, FORGED_LINE: 1, "\x1b[2J": 2})
    hostile.answer = lambda request: Answer(response(200, body))
    with pytest.raises(MasterError, match="not understood") as raised:
        session(hostile).heartbeat(Heartbeat(1), tries=1)
    assert not CONTROLS.search(str(raised.value)), str(raised.value)


def test_an_enum_nested_past_the_recursion_limit_is_a_reply_not_understood(hostile: HostileMaster) -> None:
    grant = {**GRANT.to_wire(), "kind": nested(random.Random(0), 1000)}
    hostile.answer = lambda request: Answer(response(200, write({"attempts": [grant], "retry_after": 0.0})))
    with pytest.raises(MasterError, match=r"attempts\[0\]\.kind must be one of map, reduce"):
        session(hostile).lease(LeaseRequest(1), tries=1)


def test_a_master_that_never_answers_fails_the_call_within_its_timeout(hostile: HostileMaster) -> None:
    hostile.answer = lambda request: Answer(b"HTTP/1.1 200 OK\r\n", then="stall")
    began = time.monotonic()
    with pytest.raises(MasterUnavailable, match="cannot reach it"):
        session(hostile).lease(LeaseRequest(1), tries=2)
    assert time.monotonic() - began < 2 * TIMEOUT + SLACK


@pytest.mark.parametrize("location", ["http://[::1", "http://[x]/", "//\x00", "http://a:99999999/", ""])
def test_a_redirect_anywhere_made_up_is_untrusted_before_it_is_parsed(hostile: HostileMaster, location: str) -> None:
    hostile.answer = lambda request: Answer(response(302, headers={"Location": location}))
    with pytest.raises(MasterUntrusted, match="redirects are not followed") as raised:
        session(hostile).lease(LeaseRequest(1), tries=1)
    assert not CONTROLS.search(str(raised.value))


def test_a_reply_whose_headers_contradict_themselves_is_not_understood(hostile: HostileMaster) -> None:
    body = codec.pack(HeartbeatReply([], 5.0).to_wire())
    lengths = {"Content-Length": f"{len(body)}, {len(body) + 1}"}
    hostile.answer = lambda request: Answer(response(200, body, lengths, length=False))
    with pytest.raises(MasterError, match="not understood: Content-Length contained multiple"):
        session(hostile).heartbeat(Heartbeat(1), tries=1)


@pytest.mark.parametrize("token", ["a\nb", "a\r\nX-Evil: 1", "\U0001f600", "é", "a b", "", "x" * 257])
def test_a_token_no_header_could_carry_is_a_reply_not_understood(hostile: HostileMaster, token: str) -> None:
    body = codec.pack(RegisterReply("c1", token, 10.0).to_wire())
    hostile.answer = lambda request: Answer(response(200, body))
    with pytest.raises(MasterError, match=r"reply is not understood: (its )?token"):
        session(hostile).register(RegisterRequest("laptop"), tries=1)
    good = codec.pack(RegisterReply("c1", "dct_" + "A-z_9" * 10, 10.0).to_wire())
    hostile.answer = lambda request: Answer(response(200, good))
    assert session(hostile).register(RegisterRequest("laptop"), tries=1).token == "dct_" + "A-z_9" * 10
