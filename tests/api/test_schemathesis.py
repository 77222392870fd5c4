"""schemathesis against a live master: thousands of requests generated from the master's own
OpenAPI document (GET /api/v1/openapi.json), for every operation, with data that fits the
document (positive) and data that does not (negative), sent over real HTTP on loopback.

No reply may be a 5xx; a reply to data that fits the document must conform to it too (its
status, media type and body schema). The master's log must hold no traceback (the ``master``
fixture checks it when the master stops). Hypothesis is derandomized, so CI is reproducible."""

import os
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import msgpack
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, reject, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.masters import MasterProcess
from tests.sim import create_job, digest, job_file

from .helpers import registered

# per operation and mode (and again with real path parameters where it has some); more explores further
EXAMPLES = int(os.environ.get("DOCKERCOMP_SCHEMATHESIS_EXAMPLES", "40"))
SKIPPED = {("GET", "/api/v1/events")}  # an endless event stream (tests/api/test_dashboard_api.py reads it)
LAST = {("DELETE", "/api/v1/keys/{name}")}  # revoking keys goes last, so it cannot starve the rest
POSITIVE_CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
NEGATIVE_CHECKS = [not_a_server_error]


@schemathesis.serializer("application/msgpack")
def _msgpack_body(ctx: Any, value: Any) -> bytes:
    try:
        return msgpack.packb(value, use_bin_type=True)
    except OverflowError:  # an integer past 64 bits, which msgpack cannot carry (JSON bodies do)
        reject()


@schemathesis.deserializer("application/msgpack")
def _msgpack_reply(ctx: Any, response: Any) -> Any:
    return msgpack.unpackb(response.content, raw=False)


def tokens_for(master: MasterProcess) -> dict[str, str]:
    """A token of every role, and a real job, blob, image and layer to aim at."""
    job = create_job(master.url, job_file(), [b"a\n", b"b\n"])
    client = registered(master.url, "schemathesis")
    image = requests.get(f"{master.api}/images/dockercomp/sim:latest", headers=master.headers, timeout=10).json()
    return {
        "operator": master.token,
        "scientist": master.key("scientist", "st-scientist"),
        "volunteer": master.key("volunteer", "st-volunteer"),
        "client": client.token,
        "revoker": master.key("operator", "st-revoker"),
        "job_id": job,
        "blob": digest(b"a\n"),
        "ref": image["id"],
        "image_id": image["id"],
        "digest": image["layers"][0]["digest"],
    }


def token_of(roles: list[str], method: str, path: str, mode: GenerationMode, world: dict[str, str]) -> str | None:
    """The token a request needs to get past the door: the role the route admits."""
    if (method, path) in LAST:
        return world["revoker"]
    if roles == ["anonymous"]:
        return None
    if "client" in roles and "operator" not in roles:
        return world["client"]
    if "volunteer" in roles:
        return world["volunteer"]
    if "scientist" in roles and mode == GenerationMode.NEGATIVE:
        return world["scientist"]
    return world["operator"]


def run(operation: Any, mode: GenerationMode, headers: dict[str, str], path_parameters: dict[str, str] | None,
        count: Callable[[int], None]) -> None:  # fmt: skip
    """Up to EXAMPLES cases of one operation; raises on the first failing one."""
    session = requests.Session()
    checks = POSITIVE_CHECKS if mode == GenerationMode.POSITIVE else NEGATIVE_CHECKS

    @given(case=operation.as_strategy(generation_mode=mode, path_parameters=path_parameters))
    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None, print_blob=False,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))  # fmt: skip
    def test(case: Any) -> None:
        session.cookies.clear()  # POST /session sets the cookie: each case says who it is itself
        response = case.call(session=session, headers=headers, timeout=30)
        count(response.status_code)
        case.validate_response(response, checks=checks, headers=headers)

    test()


def test_schemathesis_finds_no_server_error(master: MasterProcess) -> None:
    schema = schemathesis.openapi.from_url(f"{master.api}/openapi.json")
    world = tokens_for(master)
    operations = [result.ok() for result in schema.get_all_operations()]
    operations.sort(key=lambda op: (op.method.upper(), op.path) in LAST)
    statuses: Counter[int] = Counter()
    ok: Counter[str] = Counter()  # per operation, the replies below 300: how far the cases got
    current = ""

    def count(status: int) -> None:
        statuses[status] += 1
        ok[current] += status < 300

    failures = []
    spent: dict[str, float] = {}
    started = time.monotonic()
    for operation in operations:
        method, path = operation.method.upper(), operation.path
        if (method, path) in SKIPPED:
            continue
        roles = operation.definition.raw.get("x-roles", [])
        names = [p["name"] for p in operation.definition.raw.get("parameters", []) if p["in"] == "path"]
        current = f"{method} {path}"
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            token = token_of(roles, method, path, mode, world)
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            fixed = (
                [None, {name: world[name] for name in names}] if names and all(n in world for n in names) else [None]
            )
            for path_parameters in fixed:
                began = time.monotonic()
                try:
                    run(operation, mode, headers, path_parameters, count)
                except Unsatisfiable:  # nothing of it can be made invalid (no body, no parameters)
                    pass
                except Exception as exc:  # every operation runs; the failures are reported together
                    failures.append(f"{method} {path} ({mode.value}, path {path_parameters}):\n{exc}")
                spent[f"{method} {path} {mode.value}"] = spent.get(f"{method} {path} {mode.value}", 0) + (
                    time.monotonic() - began
                )
    elapsed = time.monotonic() - started
    cases = statuses.total()
    print(f"statuses: {dict(sorted(statuses.items()))}")
    print(f"operations never answered below 300: {sorted(op for op, n in ok.items() if not n)}")
    print(f"schemathesis: {cases} cases over {len(operations) - len(SKIPPED)} operations in {elapsed:.1f}s")
    slowest = sorted(spent.items(), key=lambda kv: -kv[1])[:5]
    print("slowest: " + ", ".join(f"{name} {seconds:.1f}s" for name, seconds in slowest))
    assert not failures, f"{len(failures)} operation(s) failed:\n\n" + "\n\n".join(failures)
    assert cases >= 2000, f"only {cases} cases ran"
    assert requests.get(f"{master.api}/health", timeout=10).status_code == 200


@pytest.fixture
def master(master_factory: Any) -> MasterProcess:
    """A master of its own (the fuzzing leaves jobs, keys and clients behind)."""
    return master_factory()
