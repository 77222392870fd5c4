"""Thousands of random and mutated requests at every endpoint and method of a real master:
none may get a 5xx, a reply without an {"error": ...} body, or a dropped connection, and the
master must still serve normal requests afterwards without a traceback in its log.

The generator is seeded, so a failure reproduces with the same seed."""

import copy
import json
import math
import os
import random
import re
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import msgpack
import requests
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dockercomp.protocol import signing
from tests.sim import MSGPACK, create_job, digest, job_file, job_status

from .helpers import registered, small_body_master

SEED = int(os.environ.get("DOCKERCOMP_FUZZ_SEED", "20261121"))  # another seed explores further
REQUESTS = 5000
MAX_BODY = 16 * 1024
METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS")


@dataclass
class World:
    """Real ids the fuzzer mixes into its requests, so mutations reach past the first checks,
    and a token of every role (``tokens``), so requests get past the door to the handlers."""

    token: str
    client: str
    job: str
    attempts: list[str]
    hashes: list[str]
    tokens: dict[str, str]  # role -> token: operator, scientist, volunteer, client
    image: dict[str, Any]  # the stub image the master holds, with its layers and signature
    keys: list[str]  # names of keys that may be revoked (never the operator's or the fuzz client's)


def setup_world(master: Any) -> World:
    url = master.url
    chunks = [b"line %d\n" % i for i in range(20)]
    job = create_job(url, job_file(redundancy={"replicas": 2, "quorum": 2}), chunks)
    client = registered(url, "fuzz")
    grants = client.lease(4)
    tokens = {"operator": master.token, "scientist": master.key("scientist", "fuzz-scientist"),
              "volunteer": master.key("volunteer", "fuzz-volunteer"), "client": client.token}  # fmt: skip
    keys = [f"victim-{i}" for i in range(3)]
    for name in keys:
        master.key("scientist", name)
    image = requests.get(f"{master.api}/images/dockercomp/sim:latest", headers=master.headers, timeout=10).json()
    signed = signing.sign(Ed25519PrivateKey.generate(), image["id"])
    body = {"key": signed.key, "public_key": signed.public_key, "signature": signed.signature}
    response = requests.post(
        f"{master.api}/images/{image['id']}/signatures", json=body, headers=master.headers, timeout=10
    )
    assert response.status_code == 201, response.text
    image["signature"] = body
    hashes = [digest(c) for c in chunks]
    return World(client.token, client.id, job, [g["attempt"] for g in grants], hashes, tokens, image, keys)


PROTOCOL = ("/clients/heartbeat", "/lease", "/results", "/release")
ANONYMOUS = ("/health", "/signers/", "/session")


def right_roles(path: str, method: str) -> tuple[str, ...]:
    """The roles a request to ``path`` should mostly carry to reach its handler (server/app.py ROUTES)."""
    if path.startswith("/clients/register"):
        return ("volunteer", "")  # no token: open enrollment
    if path.startswith(PROTOCOL):
        return ("client",)
    if path.startswith(("/blobs/", "/layers/", "/images/")) and method in ("GET", "HEAD"):
        return ("client", "operator", "scientist")
    if path.startswith(("/clients", "/keys", "/dashboard", "/session")):
        return ("operator",)
    if path.startswith(ANONYMOUS):
        return ("", "operator")
    return ("operator", "scientist")


def templates(world: World) -> dict[str, Any]:
    """A valid body for every endpoint that takes one."""
    output = b"OUT\n"
    (layer,) = world.image["layers"]
    container = {"container": "abcdef012345", "attempt": world.attempts[0], "unit": f"{world.job}.0",
                 "job": world.job, "image": "dockercomp/sim", "cpus": 1.0, "memory": 1 << 28,
                 "state": "running", "started_at": 1.5, "cpu_percent": 3.5, "memory_usage": 1000}  # fmt: skip
    return {
        "/clients/register": {"name": "n", "slots": 2,
                              "host": {"cores": 4, "memory": 1 << 30, "os": "linux", "arch": "x86_64", "docker": "27"}},
        "/clients/heartbeat": {"slots": 2, "busy": 1, "containers": [container]},
        "/lease": {"max_units": 2, "cpus": 2.0, "memory": 1 << 32, "images": ["dockercomp/sim"]},
        "/results": {"results": [
            {"attempt": world.attempts[1], "status": "succeeded", "output_hash": digest(output), "output": output,
             "exit_code": 0, "stderr_tail": "", "runtime": 0.1, "peak_memory": 100},
            {"attempt": world.attempts[2], "status": "errored", "error": "oom", "exit_code": 137},
        ]},
        "/release": {"attempts": [world.attempts[3], "unknown"]},
        "/jobs": {"job": job_file(chunking={"by": "lines", "size": "1MiB"}, redundancy={"replicas": 1},
                                  resources={"cpus": 1, "memory": "64MiB", "timeout": "5m"},
                                  reduce={"command": ["r"]}, env={"A": "b"}, priority=1),
                  "chunks": world.hashes[:3]},
        "/keys": {"name": "fuzz-made", "role": "scientist", "expires": "30d"},
        "/images": {"config": world.image["config"], "id": world.image["id"], "tags": ["fuzz/image:1"]},
        "/layers": {"size": layer["size"], "pieces": layer["pieces"]},
        "/signatures": world.image["signature"],
    }  # fmt: skip


class Fuzzer:
    def __init__(self, rng: random.Random, world: World) -> None:
        self.rng = rng
        self.world = world
        self.templates = templates(world)

    # -- values --------------------------------------------------------------------------------
    def text(self) -> str:
        r = self.rng
        return r.choice(
            [
                "", "x", "\x00", "é", "日本", "\ud800", "\U0001f600", "a" * r.randint(100, 5000),
                "".join(chr(r.randint(1, 0x2FFF)) for _ in range(r.randint(1, 20))),
                r.choice(self.world.attempts), self.world.job, f"{self.world.job}.0", self.world.client,
                r.choice(self.world.hashes), f"{r.getrandbits(128):032x}", "succeeded", "errored", "oom",
            ]
        )  # fmt: skip

    def scalar(self) -> Any:
        r = self.rng
        return r.choice(
            [
                None, True, False, 0, -1, 1, 7, 4097, 2**31, 2**53 + 1, 2**63 - 1, -(2**63), 2**64 - 1, 10**30,
                -(10**30), 0.5, -0.0, 1e308, -1e308, math.inf, -math.inf, math.nan, b"", b"\x00\xff",
                bytes(r.getrandbits(8) for _ in range(r.randint(1, 64))), self.text(),
            ]
        )  # fmt: skip

    def value(self, depth: int = 0) -> Any:
        r = self.rng.random()
        if depth > 2 or r < 0.6:
            return self.scalar()
        if r < 0.8:
            return [self.value(depth + 1) for _ in range(self.rng.randint(0, 4))]
        return {self.text(): self.value(depth + 1) for _ in range(self.rng.randint(0, 4))}

    def mutate(self, body: Any) -> Any:
        """Change one random place of a valid body: a wrong type, a missing or unknown key."""
        body = copy.deepcopy(body)
        for _ in range(self.rng.randint(1, 3)):
            body = self._mutate_once(body)
        return body

    def _mutate_once(self, node: Any) -> Any:
        r = self.rng
        if isinstance(node, dict) and node and r.random() < 0.75:
            key = r.choice(list(node))
            choice = r.random()
            if choice < 0.15:
                del node[key]
            elif choice < 0.25:
                node[self.text()] = self.value()
            else:
                node[key] = self._mutate_once(node[key])
            return node
        if isinstance(node, list) and node and r.random() < 0.75:
            i = r.randrange(len(node))
            if r.random() < 0.2:
                node.append(copy.deepcopy(node[i]) if r.random() < 0.5 else self.value())
            else:
                node[i] = self._mutate_once(node[i])
            return node
        return self.value()

    # -- bodies --------------------------------------------------------------------------------
    def encode(self, obj: Any, ctype: str) -> bytes:
        if ctype == MSGPACK:
            return msgpack.packb(obj, use_bin_type=True, default=_packable, unicode_errors="surrogatepass")
        return json.dumps(obj, default=lambda b: b.decode("latin-1")).encode()

    def body(self, path: str, ctype: str) -> bytes:
        r = self.rng
        path = path.split("?")[0]
        if path.startswith("/layers/"):
            path = "/layers"
        elif path.endswith("/signatures"):
            path = "/signatures"
        template = self.templates.get(path, {"x": 1})
        kind = r.random()
        if kind < 0.45:
            return self.encode(self.mutate(template), ctype)
        valid = self.encode(template, ctype)
        if kind < 0.55:
            return valid[: r.randrange(len(valid) + 1)]
        if kind < 0.65:
            flipped = bytearray(valid)
            for _ in range(r.randint(1, 4)):
                flipped[r.randrange(len(flipped))] ^= 1 << r.randrange(8)
            return bytes(flipped)
        if kind < 0.75:
            return bytes(r.getrandbits(8) for _ in range(r.randint(0, 300)))
        if kind < 0.8:
            depth = r.choice([50, 1000, 100_000])
            return b"[" * depth + b"]" * depth if ctype != MSGPACK else b"\x91" * depth + b"\xc0"
        if kind < 0.83:
            return b"\x00" * (MAX_BODY + r.randint(1, 4096))  # past the limit
        if kind < 0.9:
            return self.encode(valid if ctype == MSGPACK and r.random() < 0.5 else template, ctype)
        return self.encode(self.value(), ctype)

    # -- requests ------------------------------------------------------------------------------
    def paths(self) -> list[str]:
        """Every endpoint, with random ids where it takes one, and a path that is none."""
        r, w = self.rng, self.world
        job = r.choice([w.job, "nope", q(self.text()), "%ff", "..", "0" * 300])
        blob = r.choice([*w.hashes, f"{r.getrandbits(128):032x}", "ABC", q(self.text()), "0" * 32])
        image_id, layer = w.image["id"], w.image["layers"][0]["digest"]
        image = r.choice([image_id, "dockercomp/sim:latest", "dockercomp/sim", "sha256:" + "0" * 64, "a/b/c",
                          "Not%20A%20Tag", "%ff", q(self.text())])  # fmt: skip
        signed = r.choice([image_id, "sha256:" + "f" * 64, "sha256:" + "F" * 64, q(self.text())])
        layer = r.choice([layer, "sha256:" + "0" * 64, "sha256:xyz", "a/b", q(self.text())])
        signer = r.choice([w.image["signature"]["key"], "0" * 64, q(self.text()), "%00"])
        key = r.choice([*w.keys, "nobody", "fuzz-made", q(self.text()), "%ff", "a" * 300])
        return [
            "/clients/register", "/clients/heartbeat", "/lease", "/results", "/release", f"/blobs/{blob}",
            "/chunks", "/jobs", f"/jobs/{job}", f"/jobs/{job}/units", f"/jobs/{job}/results", "/clients",
            f"/{q(self.text())}", "/keys", f"/keys/{key}", "/images", f"/images/{image}",
            f"/images/{signed}/signatures", f"/layers/{layer}", f"/signers/{signer}", "/session", "/health",
            "/dashboard", "/dashboard/overview", "/dashboard/clients", "/dashboard/jobs", f"/dashboard/jobs/{job}",
        ]  # fmt: skip

    def path(self, endpoint: int | None = None) -> str:
        r = self.rng
        query = "&".join(
            f"{name}={q(self.text() if r.random() < 0.5 else r.choice(['0', '1', '-1', '²', '9' * 40, '1e3', '']))}"
            for name in r.sample(["limit", "offset", "partial", "by", "size", "separator"], r.randint(0, 3))
        )
        paths = self.paths()
        path = paths[endpoint] if endpoint is not None else r.choice(paths)
        return f"{path}?{query}" if query else path

    def headers(self, path: str, method: str) -> dict[str, str]:
        r, w = self.rng, self.world
        headers = {}
        ctype = r.choice([MSGPACK, MSGPACK, "application/json", "application/json", "", "text/plain", "a/b; c=d"])
        if ctype:
            headers["Content-Type"] = ctype
        if r.random() < 0.3:
            headers["Accept"] = r.choice([MSGPACK, "application/json", "*/*", "text/html"])
        auth = r.random()
        if auth < 0.6:
            token = w.tokens.get(r.choice(right_roles(path, method)))
            if token:
                headers["Authorization"] = f"Bearer {token}"
        elif auth < 0.7:
            headers["Authorization"] = f"Bearer {r.choice(list(w.tokens.values()))}"  # often the wrong role
        elif auth < 0.85:
            token = r.choice([f"{w.client}.{'0' * 32}", "x", ".", "é.é", f"{w.token} extra", "a" * 500])
            headers["Authorization"] = r.choice(["Bearer ", "bearer ", "Basic ", ""]) + token
        if r.random() < 0.2:
            headers["Range"] = r.choice(["bytes=0-3", "bytes=-5", "bytes=99999-", "bytes=x", "bytes=5-1", "é"])
        if r.random() < 0.1:
            headers["If-None-Match"] = r.choice([f'"{r.choice(w.hashes)}"', "*", "garbage", '""'])
        return headers

    def request(self, endpoint: int | None = None, method: str | None = None) -> tuple[str, str, dict[str, str], bytes]:
        """A random request; to the given endpoint (an index into paths()) and method if given."""
        path = self.path(endpoint)
        method = method or self.rng.choice(["POST"] * 6 + ["GET"] * 3 + ["PUT", "HEAD"] + list(METHODS))
        headers = self.headers(path, method)
        quiet = method in ("GET", "HEAD") and self.rng.random() < 0.8
        return method, path, headers, b"" if quiet else self.body(path, headers.get("Content-Type", ""))

    def requests(self, n: int) -> Iterator[tuple[str, str, dict[str, str], bytes]]:
        """Three of every endpoint and method first, so none is left out; then random ones."""
        for endpoint in range(len(self.paths())):
            for method in METHODS:
                for _ in range(3):
                    yield self.request(endpoint, method)
        for _ in range(n):
            yield self.request()


def _packable(value: Any) -> Any:
    """What msgpack cannot carry: integers past 64 bits go as strings of digits."""
    if isinstance(value, int):
        return str(value)
    raise TypeError(f"cannot pack {type(value).__name__}")


def q(text: str) -> str:
    """Percent-encode anything, lone surrogates included (as the invalid UTF-8 they would be)."""
    return quote(text, safe="", errors="surrogatepass")


def strict_json(data: bytes) -> Any:
    """Decode JSON as a browser would: Infinity and NaN are not JSON."""

    def refuse(constant: str) -> None:
        raise ValueError(f"{constant} is not JSON")

    return json.loads(data, parse_constant=refuse)


def check_reply(method: str, response: requests.Response) -> str | None:
    """What is wrong with a reply, or None."""
    status = response.status_code
    if status >= 500:
        return f"status {status}: {response.content[:300]!r}"
    if b"Traceback" in response.content:
        return "traceback in the reply"
    json_reply = response.headers.get("Content-Type", "").startswith("application/json")
    if method == "HEAD" or (status < 400 and not json_reply):
        return None
    try:
        reply = strict_json(response.content) if json_reply else msgpack.unpackb(response.content, raw=False)
    except ValueError as exc:
        return f"status {status} with a body that does not decode ({exc}): {response.content[:200]!r}"
    if status >= 400 and (not isinstance(reply, dict) or not isinstance(reply.get("error"), str) or not reply["error"]):
        return f"status {status} without an error message: {reply!r:.200}"
    return None


def test_random_and_mutated_requests_never_get_a_5xx(master_factory):
    master = master_factory("--max-body", f"{MAX_BODY}B", "--reap-interval", "0.2")
    world = setup_world(master)
    fuzzer = Fuzzer(random.Random(SEED), world)
    session = requests.Session()
    problems: list[str] = []
    statuses: dict[int, int] = {}
    for i, (method, path, headers, body) in enumerate(fuzzer.requests(REQUESTS)):
        what = f"#{i} {method} {path[:120]} {headers} body={body[:120]!r}"
        try:
            response = session.request(method, f"{master.api}{path}", headers=headers, data=body, timeout=30)
        except requests.RequestException as exc:
            problems.append(f"{what}: no reply ({exc.__class__.__name__}: {exc})")
            session = requests.Session()
            continue
        session.cookies.clear()  # a sign-in (POST /session) holds for its own request only
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        problem = check_reply(method, response)
        if problem:
            problems.append(f"{what}: {problem}")
    assert not problems, f"{len(problems)} bad replies (statuses {statuses}):\n" + "\n".join(problems[:25])
    assert len(statuses) > 8, statuses  # the requests reached far into the endpoints

    # the master still works normally, and never logged a traceback
    job = create_job(master.url, job_file("after", priority=1000), [b"still alive\n"])
    client = registered(master.url, "after")
    (grant,) = client.lease(1)
    assert grant["job"] == job
    assert client.upload([client.report(grant)])[0]["accepted"] is True
    assert job_status(master.url, job)["state"] == "done"
    assert requests.get(f"{master.api}/jobs/{job}/results", headers=master.headers).content == b"STILL ALIVE\n"
    assert "Traceback" not in master.log()


def raw_exchange(port: int, request: bytes) -> bytes:
    """Send raw bytes as one HTTP request; everything the master answers until it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.sendall(request)
        conn.shutdown(socket.SHUT_WR)
        reply = b""
        while piece := conn.recv(65536):
            reply += piece
    return reply


def test_malformed_http_gets_a_4xx_and_a_refused_body_closes_the_connection(master_factory):
    master = small_body_master(master_factory)
    host = b"Host: 127.0.0.1\r\n"
    for request in (
        b"GARBAGE\r\n\r\n",
        b"POST /api/v1/lease HTTP/1.1\r\n" + host + b"Content-Length: \xb2\r\n\r\nabc",
        b"POST /api/v1/lease HTTP/1.1\r\n" + host + b"Content-Length: -5\r\n\r\n",
        b"POST /api/v1/jobs HTTP/1.1\r\n" + host + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"GET /api/v1/jobs/\xff\xfe HTTP/1.1\r\n" + host + b"\r\n",
        b"GET /api/v1/jobs HTTP/1.1\r\n" + host + b"X-Bad: \x00\r\n\r\n",
    ):
        reply = raw_exchange(master.port, request)
        if request.startswith(b"GARBAGE") and not reply:
            continue  # not HTTP at all: closing the connection is an answer too
        assert re.match(rb"HTTP/1\.1 4\d\d ", reply), (request, reply)
        assert b"Traceback" not in reply

    # a body refused before it was read: the reply says so, and says the connection ends
    client = registered(master.url, "raw")
    for path, token in ((b"/api/v1/lease", client.token), (b"/api/v1/blobs/" + b"0" * 32, master.token),
                        (b"/api/v1/nowhere", None)):  # fmt: skip
        method = b"PUT " if b"blobs" in path else b"POST "
        bearer = b"Authorization: Bearer " + token.encode() + b"\r\n" if token else b""
        request = method + path + b" HTTP/1.1\r\n" + host + bearer + b"Content-Length: 4096\r\n\r\n" + b"x" * 4096
        head, _, body = raw_exchange(master.port, request).partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 413 ") and b"\r\nConnection: close" in head, head
        assert json.loads(body)["error"].startswith("request body of 4096 bytes exceeds the limit of 2048")
        if token:  # refused for its missing token before its body was read: the connection ends too
            request = request.replace(bearer, b"")
            head, _, body = raw_exchange(master.port, request).partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 401 ") and b"\r\nConnection: close" in head, head
            assert "needs a token" in json.loads(body)["error"]
    assert requests.get(f"{master.api}/jobs", headers=master.headers).status_code == 200
