"""Limits on everything a peer sends: string and list caps in every message, bounded integers,
clamped leases, streamed uploads with body and idle timeouts, rate limits, quotas, security
headers, a Host check for the dashboard, and no token in the master's log. Each refusal is a
4xx whose message says what to do."""

import socket
import time

import pytest
import requests

from dockercomp.protocol.errors import ProtocolError
from dockercomp.protocol.integrity import digest
from dockercomp.protocol.limits import MAX_STR, STDERR_TAIL
from dockercomp.protocol.messages import Heartbeat, HostFacts, ResultReport
from dockercomp.server.handlers import redact
from tests.sim import SimClient, create_job, job_file

from .helpers import assert_error, post_mp, registered

HUGE = "9" * 5000  # past what Python parses as an int at all (4300 digits)


def rss(pid: int) -> int:
    """Resident memory of a process, in bytes (VmRSS of /proc/PID/status)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


# -- 1. strings and lists in messages ------------------------------------------------------------


def test_every_string_and_list_of_a_message_is_bounded():
    with pytest.raises(ProtocolError, match=f"os is 300 characters long; at most {MAX_STR}"):
        HostFacts.from_wire({"os": "x" * 300})
    with pytest.raises(ProtocolError, match=r"containers\[0\].image is 1000 characters"):
        Heartbeat.from_wire({"slots": 1, "containers": [{"container": "c", "attempt": "a", "unit": "u", "job": "j",
                                                         "image": "i" * 1000, "cpus": 1.0, "memory": 1}]})  # fmt: skip
    report = {"attempt": "a", "status": "errored", "error": "oom"}
    assert ResultReport.from_wire(report | {"stderr_tail": "e" * STDERR_TAIL}).stderr_tail
    with pytest.raises(ProtocolError, match=f"stderr_tail is {STDERR_TAIL + 1} characters"):
        ResultReport.from_wire(report | {"stderr_tail": "e" * (STDERR_TAIL + 1)})


def test_host_facts_and_heartbeats_cannot_grow_the_clients_list(master):
    """A client's facts and containers were 37 MB of /clients once: now each string is capped
    (400), and a heartbeat lists at most 8 containers (a unit's most) per slot."""
    body = {"name": "big", "slots": 1, "host": {"os": "x" * 10_000_000}}
    assert_error(post_mp(master.url, "/clients/register", body), 400, "host.os is 10000000 characters", "at most 256")
    client = registered(master.url, "small")
    container = {"container": "c" * 12, "attempt": "a", "unit": "u", "job": "j", "image": "i", "cpus": 1.0, "memory": 1}
    long = {"slots": 1, "containers": [container | {"image": "i" * 100_000}]}
    assert_error(post_mp(master.url, "/clients/heartbeat", long, client.token), 400, "containers[0].image")
    many = {"slots": 1, "containers": [container] * 9}
    assert_error(post_mp(master.url, "/clients/heartbeat", many, client.token), 400, "9 containers", "8 for each")
    assert post_mp(master.url, "/clients/heartbeat", {"slots": 1, "containers": [container] * 8}, client.token).ok
    clients = requests.get(f"{master.api}/clients", headers=master.headers, timeout=10)
    assert clients.status_code == 200 and len(clients.content) < 20_000, len(clients.content)


# -- 2. bounded integers and clamped leases -------------------------------------------------------


def test_huge_integers_in_queries_and_headers_are_a_4xx(master):
    job = create_job(master.url, job_file(), [b"a\n"])
    for path in (f"/jobs?limit={HUGE}", f"/jobs/{job}/units?offset={HUGE}", f"/dashboard/clients?limit={HUGE}"):
        assert_error(requests.get(master.api + path, headers=master.headers, timeout=10), 400, "must be an integer")
    data = b"some blob bytes\n"
    blob = digest(data)
    put = {"Content-Type": "application/octet-stream"} | master.headers
    assert requests.put(f"{master.api}/blobs/{blob}", data=data, headers=put, timeout=10).status_code == 201
    get = master.headers
    past = requests.get(f"{master.api}/blobs/{blob}", headers=get | {"Range": f"bytes={HUGE}-"}, timeout=10)
    assert_error(past, 416, "starts past the end")
    assert past.headers["Content-Range"] == f"bytes */{len(data)}"
    to_end = requests.get(f"{master.api}/blobs/{blob}", headers=get | {"Range": f"bytes=2-{HUGE}"}, timeout=10)
    assert to_end.status_code == 206 and to_end.content == data[2:]
    suffix = requests.get(f"{master.api}/blobs/{blob}", headers=get | {"Range": f"bytes=-{HUGE}"}, timeout=10)
    assert suffix.status_code == 206 and suffix.content == data


def test_a_lease_is_clamped_to_the_clients_registered_host(master):
    create_job(master.url, job_file("wide", resources={"cpus": 3}), [b"a\n"])
    create_job(master.url, job_file("fat", resources={"cpus": 1, "memory": "2GiB"}), [b"b\n"])
    client = SimClient(master.url, name="one-core")
    client.register(slots=1)
    client.call("/clients/heartbeat", {"slots": 1, "memory": 1 << 30})  # donates 1GiB
    # it asks for 64 cpus and a TiB: it has one slot (2 cpus with a prefetch) and 1GiB
    assert client.lease(2, cpus=64.0, memory=1 << 40) == []
    create_job(master.url, job_file("fits", resources={"cpus": 1, "memory": "512MiB"}), [b"c\n"])
    (grant,) = client.lease(2, cpus=64.0, memory=1 << 40)
    assert grant["cpus"] == 1


# -- 4. streamed uploads, body and idle timeouts --------------------------------------------------


def _put_head(port: int, blob: str, size: int, token: str) -> socket.socket:
    conn = socket.create_connection(("127.0.0.1", port), timeout=30)
    conn.sendall(
        f"PUT /api/v1/blobs/{blob} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: application/octet-stream\r\nContent-Length: {size}\r\n\r\n".encode()
    )
    return conn


def _reply(conn: socket.socket) -> bytes:
    reply = b""
    while b"\r\n\r\n" not in reply or not reply.rstrip().endswith(b"}"):
        piece = conn.recv(65536)
        if not piece:
            break
        reply += piece
    return reply


def test_concurrent_large_uploads_are_streamed_to_disk(master, record_property):
    """Eight 48MiB uploads held open at once (40MiB of each sent) used to be held in memory,
    eight times over; streamed to disk, the master's resident memory barely moves."""
    size, held, n = 48 << 20, 40 << 20, 8
    bodies = [bytes([i]) * size for i in range(n)]
    pid = master.proc.pid
    before = rss(pid)
    conns = [_put_head(master.port, digest(body), size, master.token) for body in bodies]
    piece = 1 << 20
    for offset in range(0, held, piece):
        for conn, body in zip(conns, bodies, strict=True):
            conn.sendall(body[offset : offset + piece])
    time.sleep(0.5)
    during = rss(pid)
    for conn, body in zip(conns, bodies, strict=True):
        conn.sendall(body[held:])
    replies = [_reply(conn) for conn in conns]
    after = rss(pid)
    for conn in conns:
        conn.close()
    record_property("rss_mib", {"before": before >> 20, "held": during >> 20, "after": after >> 20})
    print(f"master RSS: {before >> 20} MiB before, {during >> 20} MiB with 8x40MiB held, {after >> 20} MiB after")
    assert all(r.startswith(b"HTTP/1.1 201 ") for r in replies), [r[:200] for r in replies]
    assert during - before < 32 << 20, (before, during)  # buffered, it was 320MiB more
    assert after - before < 128 << 20, (before, after)  # stored one at a time at most
    for body in bodies[:2]:
        got = requests.get(f"{master.api}/blobs/{digest(body)}", headers=master.headers | {"Range": "bytes=0-9"})
        assert got.content == body[:10]


def test_a_wrong_hash_upload_is_refused_and_left_nowhere(master):
    data = b"x" * (1 << 20)
    wrong = digest(b"other")
    put = master.headers | {"Content-Type": "application/octet-stream"}
    assert_error(requests.put(f"{master.api}/blobs/{wrong}", data=data, headers=put, timeout=10), 422, wrong)
    assert requests.head(f"{master.api}/blobs/{wrong}", headers=master.headers, timeout=10).status_code == 404
    uploads = master.data_dir / "uploads"
    assert not uploads.exists() or not list(uploads.iterdir())


def test_stalled_bodies_and_idle_connections_are_closed(master_factory):
    master = master_factory("--body-timeout", "1s", "--idle-timeout", "1s")
    conn = _put_head(master.port, digest(b"never"), 1000, master.token)
    conn.sendall(b"x" * 10)
    time.sleep(2.0)
    assert conn.recv(1000) == b""  # closed by the master
    conn.close()
    idle = socket.create_connection(("127.0.0.1", master.port), timeout=10)
    time.sleep(2.0)
    assert idle.recv(1000) == b""
    idle.close()
    assert requests.get(f"{master.api}/health", timeout=10).status_code == 200


# -- 5. rate limits ----------------------------------------------------------------------------


def test_registrations_and_bad_tokens_per_address_are_rate_limited(master_factory):
    master = master_factory("--register-burst", "3", "--register-rate", "0.01",
                            "--auth-failure-burst", "3", "--auth-failure-rate", "0.01")  # fmt: skip
    for i in range(3):
        registered(master.url, f"m{i}")
    refused = post_mp(master.url, "/clients/register", {"name": "m4", "slots": 1})
    assert_error(refused, 429, "too many machines registered", "try again in")
    assert int(refused.headers["Retry-After"]) > 1
    bad = {"Authorization": "Bearer dct_not-a-token"}
    for _ in range(3):
        assert_error(requests.get(f"{master.api}/jobs", headers=bad, timeout=10), 401, "unknown token")
    refused = requests.get(f"{master.api}/jobs", headers=bad, timeout=10)
    assert_error(refused, 429, "too many failed sign-ins")
    assert int(refused.headers["Retry-After"]) > 1
    # a good token from the same address still works: nobody can lock the operator out
    assert requests.get(f"{master.api}/jobs", headers=master.headers, timeout=10).status_code == 200


# -- 3. quotas -----------------------------------------------------------------------------------


def test_scientists_quotas_on_units_and_unfinished_jobs(master_factory):
    master = master_factory("--max-units-per-job", "3", "--max-running-jobs", "1", "--max-open-units", "5")
    headers = {"Authorization": f"Bearer {master.key('scientist', 'sci')}"}

    def submit(name: str, n: int, who: dict[str, str] = headers) -> requests.Response:
        chunks = [b"%s %d\n" % (name.encode(), i) for i in range(n)]
        put = who | {"Content-Type": "application/octet-stream"}
        for chunk in chunks:
            requests.put(f"{master.api}/blobs/{digest(chunk)}", data=chunk, headers=put, timeout=10)
        body = {"job": job_file(name), "chunks": [digest(c) for c in chunks]}
        return requests.post(f"{master.api}/jobs", json=body, headers=who, timeout=10)

    assert_error(submit("big", 4), 403, "4 units", "3 units a job may have", "larger chunks")
    assert submit("first", 3).status_code == 201
    refused = submit("second", 1)
    assert_error(refused, 429, "1 unfinished jobs", "wait for some to finish")
    assert refused.headers["Retry-After"] == "60"
    assert submit("operators", 4, master.headers).status_code == 201  # the operator has no quota


def test_a_scientist_s_byte_quota(master_factory):
    master = master_factory("--max-bytes-per-owner", "1KiB")
    headers = {"Authorization": f"Bearer {master.key('scientist', 'sci')}", "Content-Type": "application/octet-stream"}

    def put(data: bytes, who: dict[str, str] = headers) -> requests.Response:
        return requests.put(f"{master.api}/blobs/{digest(data)}", data=data, headers=who, timeout=10)

    first = b"a" * 600
    assert put(first).status_code == 201
    assert put(first).status_code == 201  # the same blob again costs nothing
    refused = put(b"b" * 600)  # its Content-Length alone says it cannot fit: refused before the body
    assert_error(refused, 413, "has stored 600 of the 1024 bytes", "ask the operator for more room")
    assert put(b"c" * 424).status_code == 201  # exactly full
    chunked = requests.put(f"{master.api}/blobs/{digest(b'd')}", data=iter([b"d"]), headers=headers, timeout=10)
    assert_error(chunked, 413, "has stored 1024 of the 1024 bytes")  # no length: counted once it arrived
    assert requests.head(f"{master.api}/blobs/{digest(b'd')}", headers=headers, timeout=10).status_code == 404
    assert put(b"e" * 900, master.headers | {"Content-Type": "application/octet-stream"}).status_code == 201
    other = headers | {"Authorization": f"Bearer {master.key('scientist', 'other')}"}
    lines = b"".join(b"%03d\n" % i for i in range(150))  # 600 bytes, 150 distinct one-line chunks
    chunks = requests.post(f"{master.api}/chunks?by=lines&size=1", data=lines, headers=other, timeout=10)
    assert chunks.status_code == 201 and len(chunks.json()["chunks"]) == 150
    big = requests.post(f"{master.api}/chunks?by=lines&size=1", data=lines.upper(), headers=other, timeout=10)
    assert_error(big, 413, "has stored 600 of the 1024 bytes")  # chunks count as the blobs they are


# -- 6. security headers and the Host check ---------------------------------------------------------


def test_security_headers_on_every_reply(shared_master):
    api = requests.get(f"{shared_master.api}/health", timeout=10)
    page = requests.get(f"{shared_master.url}/", timeout=10)
    missing = requests.get(f"{shared_master.api}/nope", timeout=10)
    for reply in (api, page, missing):
        assert reply.headers["X-Content-Type-Options"] == "nosniff"
        assert reply.headers["Referrer-Policy"] == "no-referrer"
        assert reply.headers["X-Frame-Options"] == "DENY"
        assert "frame-ancestors 'none'" in reply.headers["Content-Security-Policy"]
    assert api.headers["Cache-Control"] == "no-store" and missing.headers["Cache-Control"] == "no-store"
    csp = page.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "style-src 'self'" in csp and "connect-src 'self'" in csp
    assert "unsafe-eval" not in csp


def test_the_dashboard_answers_only_to_its_own_names(master_factory):
    master = master_factory("--allowed-host", "dash.example")
    for host in ("evil.example", "evil.example:8080", "localhost.evil.example"):
        for path in ("/", "/dashboard/app.js", "/api/v1/session", "/api/v1/dashboard"):
            reply = requests.get(f"{master.url}{path}", headers=master.headers | {"Host": host}, timeout=10)
            assert reply.status_code == 421, (host, path, reply.status_code)
            assert "--allowed-host" in reply.text
    for host in (f"127.0.0.1:{master.port}", f"localhost:{master.port}", "dash.example", "[::1]:1", "10.1.2.3"):
        reply = requests.get(f"{master.url}/api/v1/session", headers=master.headers | {"Host": host}, timeout=10)
        assert reply.status_code == 200, (host, reply.text)
    # the client protocol and the scientist's API do not care (a daemon may use any name)
    assert requests.get(f"{master.api}/health", headers={"Host": "evil.example"}, timeout=10).status_code == 200


# -- 7. no token in the log --------------------------------------------------------------------------


def test_redact_hides_every_token():
    line = "GET /x?token=dct_AbC-123_x (Authorization: Bearer abc.def) cookie dockercomp_token=dct_zz; ok"
    clean = redact(line)
    assert "AbC-123" not in clean and "abc.def" not in clean and "dct_zz" not in clean
    assert clean.startswith("GET /x?token=dct_[redacted]") and clean.endswith("; ok")


def test_tokens_never_reach_the_masters_log(master):
    secret = "dct_" + "S3cr3t" * 6
    requests.get(f"{master.api}/nope?token={secret}", timeout=10)
    requests.get(f"{master.api}/jobs?token={secret}", headers={"Authorization": f"Bearer {secret}"}, timeout=10)
    requests.get(f"{master.api}/jobs", headers={"Authorization": f"Bearer {secret}x"}, timeout=10)
    time.sleep(0.2)
    log = master.log()
    assert "/nope" in log  # the requests were logged
    assert "S3cr3t" not in log
    assert log.count(master.token[4:]) == 1  # only where the first start shows it, once (print, not a log line)
