"""Thousands of hostile msgpack bodies of the client messages (register, heartbeat, lease,
results, release) at a real master: mutated where each message's schema says it matters (a
field of another type, at or past its cap, at the ends of its range, NaN, ext types, nesting
past every limit, keys missing, unknown or twice) and as bytes (cut short, bits flipped,
headers that announce more than there is), each value written in a random one of msgpack's
legal forms. tests/api/test_fuzz.py sends shallow mutations to every endpoint and method;
this one goes deep into the five messages a daemon sends.

Each reply is checked against what the protocol itself makes of the body (``judge``): none is
a 5xx; a body the protocol refuses gets 400 (or 413) with an {"error": ...} a person can read
and no 2xx; a 2xx reply is the message the protocol says it is. Afterwards the master serves a
normal lease, and its log has no traceback and no line that a log record did not begin.

Seeded: DOCKERCOMP_FUZZ_SEED reproduces a failure, another seed explores further;
DOCKERCOMP_CLIENT_FUZZ_CASES says how many bodies (5,000 by default)."""

import collections
import os
import random
import re
import time
from dataclasses import dataclass
from typing import Any

import requests

from dockercomp.protocol import codec
from dockercomp.protocol.errors import ProtocolError
from dockercomp.protocol.messages import (
    AckBatch,
    ContainerInfo,
    ErrorKind,
    Heartbeat,
    HeartbeatReply,
    HostFacts,
    LeaseReply,
    LeaseRequest,
    Message,
    RegisterReply,
    RegisterRequest,
    ReleaseRequest,
    ResultBatch,
    ResultReport,
    ResultStatus,
)
from tests.protocol.test_codec_fuzz import FORGED_LINE, hostile_body, judge, nested, write
from tests.sim import MSGPACK, create_job, digest, job_file, job_status

from .helpers import registered

SEED = int(os.environ.get("DOCKERCOMP_FUZZ_SEED", "20261121"))
CASES = int(os.environ.get("DOCKERCOMP_CLIENT_FUZZ_CASES", "5000"))
MAX_BODY = 1 << 20
LOG_RECORD = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) ")
CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


@dataclass(frozen=True)
class Endpoint:
    path: str
    request: type[Message]
    reply: type[Message]
    wire: dict[str, Any]  # a valid request, every field present
    token: str  # "" for none


def endpoints(master: Any) -> list[Endpoint]:
    """The five client calls, each with a valid request of real ids: a job of many units, a
    client holding leases of it (mutations that stay valid reach the store, not just the door)."""
    url = master.url
    job = create_job(url, job_file("fuzz", redundancy={"replicas": 1}), [b"unit %d\n" % i for i in range(150)])
    client = registered(url, "fuzz", slots=64)
    grants = client.lease(6)
    attempts = [g["attempt"] for g in grants]
    output = b"UNIT 0\n"
    image = grants[0]["image"]
    containers = [
        ContainerInfo(g["attempt"][:12], g["attempt"], g["unit"], job, image, 1.0, 64 << 20, "running", time.time(),
                      12.5, 1 << 20)
        for g in grants[:2]
    ]  # fmt: skip
    results = [
        ResultReport(attempts[0], ResultStatus.SUCCEEDED, None, 0, digest(output), output, len(output), "warn", 0.5,
                     1 << 20),
        ResultReport(attempts[1], ResultStatus.ERRORED, ErrorKind.OOM, 137, None, None, None, "Killed", 1.0, 64 << 20),
    ]  # fmt: skip
    host = HostFacts(8, 16 << 30, "linux", "amd64", "27.0", 0)
    return [
        Endpoint("/clients/register", RegisterRequest, RegisterReply, RegisterRequest("vol", 4, host).to_wire(), ""),
        Endpoint("/clients/heartbeat", Heartbeat, HeartbeatReply,
                 Heartbeat(4, 2, containers, False, 8 << 30, 0, 10 << 30).to_wire(), client.token),
        Endpoint("/lease", LeaseRequest, LeaseReply,
                 LeaseRequest(2, 2.0, 1 << 32, [image], 0, 1 << 40).to_wire(), client.token),
        Endpoint("/results", ResultBatch, AckBatch, ResultBatch(results).to_wire(), client.token),
        Endpoint("/release", ReleaseRequest, AckBatch, ReleaseRequest([attempts[2], "gone"]).to_wire(), client.token),
    ]  # fmt: skip


def regressions(points: list[Endpoint]) -> list[tuple[Endpoint, bytes]]:
    """Bodies that once got a 500 or put a forged line in the master's log, sent first."""
    results = next(p for p in points if p.path == "/results")
    lease = next(p for p in points if p.path == "/lease")
    head = b"\x81\xa7results\x91\x83\xa7attempt\xa1a\xa6status\xa7errored\xa5error"
    cases = [(results, head + b"\x91" * depth + b"\xc0") for depth in (990, 1000, 1010, 1020, 1023)]
    cases.append(
        (results, write({"results": [{"attempt": "a", "status": "errored", "error": nested(random.Random(1), 1000)}]}))
    )
    cases += [(point, write({**point.wire, FORGED_LINE: 1})) for point in points]
    cases.append((lease, write({**lease.wire, "\x1b[2J\x1b[H": 1})))
    cases += [(point, b"\x91" * 1100 + b"\xc0") for point in points]  # the decoder's own limit: a message says so
    cases.append((lease, b"\x81\xa9max_units\xc1"))
    return cases


def problem(point: Endpoint, body: bytes, response: requests.Response) -> str | None:
    """What is wrong with the master's reply to ``body``, given what the protocol makes of it."""
    status = response.status_code
    try:
        expected = judge(point.request, body)
    except Exception as exc:  # a bug of the protocol itself: the master runs the same code
        return f"status {status}, and the protocol itself fails on it: {type(exc).__name__}: {exc}"
    if status >= 500:
        return f"status {status}: {response.content[:300]!r}"
    if b"Traceback" in response.content:
        return "traceback in the reply"
    ctype = response.headers.get("Content-Type", "")
    if not ctype.startswith((MSGPACK, codec.JSON)):
        return f"status {status} as {ctype!r}"
    try:  # JSON where the request's type was msgpack in other letters (the master reads it all the same)
        reply = codec.decode(response.content, ctype)
    except ProtocolError as exc:
        return f"status {status} with a body that does not decode: {exc}"
    if status >= 400:
        error = reply.get("error") if isinstance(reply, dict) else None
        if not isinstance(error, str) or not error.strip() or error.endswith(": "):
            return f"status {status} without an error message a person can act on: {reply!r:.200}"
        if CONTROLS.search(error):
            return f"status {status} with control characters in its error: {error!r:.200}"
        if isinstance(expected, ProtocolError) and status not in (400, 413):
            return f"status {status} for a body the protocol refuses ({expected}): {error!r:.200}"
        return None
    if isinstance(expected, ProtocolError):
        return f"status {status}: the master took a body the protocol refuses ({expected})"
    try:
        point.reply.from_wire(reply)
    except ProtocolError as exc:
        return f"status {status} with a reply that is no {point.reply.__name__}: {exc}"
    return None


def test_hostile_msgpack_client_messages_get_only_the_protocols_own_refusals(master_factory):
    master = master_factory("--max-body", f"{MAX_BODY}B", "--reap-interval", "0.2")
    points = endpoints(master)
    rng = random.Random(SEED)
    cases = regressions(points)
    fixed = len(cases)
    for _ in range(CASES):
        point = rng.choice(points)
        body = hostile_body(point.request, point.wire, rng)
        if rng.random() < 0.005:
            body += b"\xc0" * MAX_BODY  # past the body limit: 413
        cases.append((point, body))

    session = requests.Session()
    problems: list[str] = []
    statuses: dict[str, collections.Counter[int]] = collections.defaultdict(collections.Counter)
    refusals: set[str] = set()
    began = time.monotonic()
    for i, (point, body) in enumerate(cases):
        headers = {"Content-Type": rng.choice([MSGPACK] * 8 + ["application/msgpack; charset=binary",
                                                                 "Application/MsgPack"])}  # fmt: skip
        if point.token:
            headers["Authorization"] = f"Bearer {point.token}"
        what = f"#{i} POST {point.path} body={body[:160]!r}{'...' if len(body) > 160 else ''}"
        try:
            response = session.post(f"{master.api}{point.path}", data=body, headers=headers, timeout=30)
        except requests.RequestException as exc:
            problems.append(f"{what}: no reply ({type(exc).__name__}: {exc})")
            session = requests.Session()
            continue
        statuses[point.path][response.status_code] += 1
        wrong = problem(point, body, response)
        if wrong:
            problems.append(f"{what}: {wrong}")
        elif response.status_code >= 400:
            error = codec.decode(response.content, response.headers["Content-Type"])["error"]
            refusals.add(re.sub(r"\d+|'[^']*'", "_", error))
    elapsed = time.monotonic() - began
    served = {path: dict(counts) for path, counts in statuses.items()}
    print(f"{len(cases)} bodies ({fixed} regressions) in {elapsed:.1f}s, seed {SEED}: {served}; "
          f"{len(refusals)} kinds of refusal")  # fmt: skip
    assert not problems, f"{len(problems)} bad replies of {len(cases)} (seed {SEED}):\n" + "\n".join(problems[:25])
    assert sum(sum(c.values()) for c in statuses.values()) == len(cases)
    for path, counts in statuses.items():  # every call was both taken and refused, often
        assert sum(n for s, n in counts.items() if s < 300) > CASES // 50, (path, counts)
        assert counts[400] > CASES // 20, (path, counts)
    assert len(refusals) > 150, sorted(refusals)  # the bodies reached far into every message

    # the master still works normally
    job = create_job(master.url, job_file("after", priority=1000), [b"still alive\n"])
    client = registered(master.url, "after")
    (grant,) = client.lease(1)
    assert grant["job"] == job
    assert client.upload([client.report(grant)])[0]["accepted"] is True
    assert job_status(master.url, job)["state"] == "done"
    assert requests.get(f"{master.api}/jobs/{job}/results", headers=master.headers).content == b"STILL ALIVE\n"

    # and its log holds only what its log records wrote: no traceback, no line forged by a message
    log = master.log()
    assert "Traceback" not in log
    lines = log.split("\n")
    start = next(i for i, line in enumerate(lines) if "master listening on" in line)
    stray = [line for line in lines[start:] if line and not LOG_RECORD.match(line)]
    assert not stray, f"{len(stray)} lines of the log no record began:\n" + "\n".join(stray[:10])
