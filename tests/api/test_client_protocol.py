"""The client protocol under /api/v1/ (msgpack), one behaviour per test, over real HTTP
against a real master process."""

import itertools
import math
import time

import pytest
import requests

from tests.sim import MSGPACK, SimClient, create_job, digest, job_file, job_status, job_units, wait_for

from .helpers import assert_error, decoded, image_id, post_mp, registered, small_body_master

FAST_EXPIRY = ("--lease-slack", "0", "--reap-interval", "0.2")


def attempt_states(url: str, job_id: str) -> dict[str, str]:
    return {a["id"]: a["state"] for u in job_units(url, job_id) for a in u["attempts"]}


# -- registration and authentication ---------------------------------------------------------


def test_register_returns_a_client_id_a_token_and_the_heartbeat_interval(master):
    response = post_mp(master.url, "/clients/register", {"name": "vol-1", "slots": 4, "host": {"cores": 8}})
    assert response.status_code == 200
    assert response.headers["Content-Type"] == MSGPACK
    reply = decoded(response)
    assert set(reply) == {"client", "token", "heartbeat_interval"}
    assert len(reply["token"]) >= 40 and reply["client"] not in reply["token"]  # random, not derived from the id
    assert reply["heartbeat_interval"] > 0
    clients = requests.get(f"{master.api}/clients", headers=master.headers).json()["clients"]
    assert [(c["id"], c["name"], c["slots"], c["host"]["cores"]) for c in clients] == [(reply["client"], "vol-1", 4, 8)]
    assert clients[0]["account"].startswith("open-")  # open enrollment: an account of its own
    assert post_mp(master.url, "/clients/heartbeat", {"slots": 4}, reply["token"]).status_code == 200


def test_register_needs_a_volunteer_token_without_open_enrollment(master_factory):
    master = master_factory(open_enrollment=False)
    body = {"name": "a", "slots": 1}
    assert_error(post_mp(master.url, "/clients/register", body), 401, "token")
    assert_error(post_mp(master.url, "/clients/register", body, "a-guessed-token"), 401, "unknown token")
    assert_error(post_mp(master.url, "/clients/register", body, master.key("scientist")), 403, "volunteer")
    assert_error(post_mp(master.url, "/clients/register", body, master.token), 403, "volunteer")
    assert requests.get(f"{master.api}/clients", headers=master.headers).json()["clients"] == []
    client = registered(master.url, "laptop", enroll=master.key("volunteer", "alice"))
    assert client.lease() == []
    (listed,) = requests.get(f"{master.api}/clients", headers=master.headers).json()["clients"]
    assert (listed["id"], listed["name"], listed["account"]) == (client.id, "laptop", "alice")
    # the volunteer's token registers machines and nothing else; the client's token is no volunteer's
    assert_error(post_mp(master.url, "/lease", {"max_units": 1}, client.enroll), 403)
    assert_error(post_mp(master.url, "/clients/register", body, client.token), 403, "volunteer")


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"name": ""}, "name"),
        ({"name": "x" * 129}, "name"),
        ({"name": "a", "slots": 0}, "slots"),
        ({"name": "a", "slots": "2"}, "slots must be an integer"),
        ({"slots": 1}, "missing field name"),
        ({"name": "a", "colour": "blue"}, "unknown field(s) colour"),
        ({"name": "a", "host": {"cores": "many"}}, "host.cores"),
        (["name", "a"], "must be a map"),
    ],
)
def test_register_bad_input_is_400_naming_the_field(shared_master, body, fragment):
    assert_error(post_mp(shared_master.url, "/clients/register", body), 400, fragment)


@pytest.mark.parametrize("path", ["/clients/heartbeat", "/lease", "/results", "/release"])
def test_missing_or_forged_tokens_are_401(shared_master, path):
    client = registered(shared_master.url)
    forged = client.id + "." + "0" * 32
    body = {"slots": 1, "max_units": 1, "results": [], "attempts": []}
    for headers in (
        {},
        {"Authorization": f"Basic {client.token}"},
        {"Authorization": "Bearer "},
        {"Authorization": f"Bearer {forged}"},
        {"Authorization": "Bearer someone-else.ffffffffffffffffffffffffffffffff"},
        {"Authorization": f"Bearer {client.token}x"},
    ):
        response = requests.post(
            f"{shared_master.api}{path}", data=b"\x80", headers={"Content-Type": MSGPACK, **headers}, timeout=10
        )
        assert_error(response, 401, "token")
    # the same request with the real token is taken (or refused for its body, not its token)
    endpoint = {"/clients/heartbeat": "slots", "/lease": "max_units", "/results": "results", "/release": "attempts"}
    response = post_mp(shared_master.url, path, {endpoint[path]: body[endpoint[path]]}, client.token)
    assert response.status_code == 200, response.text


def test_tokens_are_tied_to_the_store_not_to_a_master_process(master_factory, tmp_path):
    data = tmp_path / "shared"
    first = master_factory(data_dir=data)
    client = registered(first.url)
    assert first.stop() == 0
    second = master_factory(data_dir=data)
    client.urls = itertools.repeat(second.url)
    assert client.heartbeat()["commands"] == []


# -- heartbeat ---------------------------------------------------------------------------------


def test_heartbeat_records_the_containers_and_aborts_unknown_attempts(master):
    create_job(master.url, job_file(), [b"x\n"])
    client = registered(master.url)
    (grant,) = client.lease(1)
    ghost = dict(grant, attempt="not-an-attempt")
    reply = client.heartbeat([grant, ghost])
    assert reply["interval"] > 0
    assert reply["commands"] == [{"action": "abort", "attempt": "not-an-attempt"}]
    (listed,) = requests.get(f"{master.api}/clients", headers=master.headers).json()["clients"]
    assert listed["busy"] == 2 and listed["online"] is True
    assert [c["attempt"] for c in listed["containers"]] == [grant["attempt"], "not-an-attempt"]


def test_heartbeat_aborts_attempts_of_decided_units(master):
    job = create_job(master.url, job_file(redundancy={"replicas": 2, "quorum": 1}), [b"x\n"])
    a, b = registered(master.url, "a"), registered(master.url, "b")
    (grant_a,), (grant_b,) = a.lease(1), b.lease(1)
    assert grant_a["unit"] == grant_b["unit"]
    assert b.heartbeat([grant_b])["commands"] == []
    assert a.upload([a.report(grant_a)])[0]["accepted"] is True
    assert job_status(master.url, job)["state"] == "done"
    assert b.heartbeat([grant_b])["commands"] == [{"action": "abort", "attempt": grant_b["attempt"]}]
    # the foreign attempt in a heartbeat is aborted too: it is not this client's to run
    assert a.heartbeat([grant_b])["commands"] == [{"action": "abort", "attempt": grant_b["attempt"]}]


def test_heartbeat_bad_input_is_400(shared_master):
    client = registered(shared_master.url)
    assert_error(post_mp(shared_master.url, "/clients/heartbeat", {"slots": -1}, client.token), 400, "slots")
    assert_error(
        post_mp(shared_master.url, "/clients/heartbeat", {"busy": 1}, client.token), 400, "missing field slots"
    )
    bad = {"slots": 1, "containers": [{"container": "c"}]}
    assert_error(post_mp(shared_master.url, "/clients/heartbeat", bad, client.token), 400, "containers[0]")
    assert_error(post_mp(shared_master.url, "/clients/heartbeat", {"slots": 1, "busy": -1}, client.token), 400, "busy")
    container = {"container": "c", "attempt": "a", "unit": "u", "job": "j", "image": "i", "memory": 1}
    for cpus in (math.inf, -1.0):
        bad = {"slots": 1, "containers": [dict(container, cpus=cpus)]}
        assert_error(post_mp(shared_master.url, "/clients/heartbeat", bad, client.token), 400, "finite")
    assert_error(
        post_mp(shared_master.url, "/clients/heartbeat", {"slots": 1, "busy": 2**64 - 1}, client.token), 400, "64"
    )


# -- lease -------------------------------------------------------------------------------------


def test_lease_hands_out_units_in_batches_in_order(master):
    chunks = [b"unit %d\n" % i for i in range(5)]
    job = create_job(master.url, job_file(env={"LANG": "C"}, resources={"cpus": 1, "timeout": "30s"}), chunks)
    client = registered(master.url, slots=3)  # room for 6 leases
    before = time.time()
    first = client.lease(3)
    assert [g["unit"] for g in first] == [f"{job}.0", f"{job}.1", f"{job}.2"]
    grant = first[0]
    assert grant["job"] == job and grant["kind"] == "map" and grant["mode"] == "batch"
    assert grant["image"] == image_id(master) and grant["command"] == ["sim"] and grant["env"] == {"LANG": "C"}
    assert grant["cpus"] == 1.0 and grant["timeout"] == 30.0
    assert before + 30 <= grant["deadline"] <= time.time() + 30 + 120 + 1  # timeout + the default slack
    (ref,) = grant["inputs"]
    assert ref == {"name": "chunk", "hash": digest(chunks[0]), "size": len(chunks[0]), "url": ref["url"], "data": None}
    assert client.fetch(ref) == chunks[0]
    assert len({g["attempt"] for g in first}) == 3
    second = client.lease(3)
    assert [g["unit"] for g in second] == [f"{job}.3", f"{job}.4"]
    response = post_mp(master.url, "/lease", {"max_units": 3}, client.token)
    assert decoded(response)["attempts"] == [] and decoded(response)["retry_after"] > 0
    assert job_status(master.url, job)["units"]["running"] == 5


def test_lease_never_gives_one_client_the_same_unit_twice(master):
    job = create_job(master.url, job_file(redundancy={"replicas": 3, "quorum": 2}), [b"a\n", b"b\n"])
    a, b = registered(master.url, "a"), registered(master.url, "b")
    assert len(a.lease(10)) == 2
    assert a.lease(10) == []
    assert len(b.lease(10)) == 2
    units = job_units(master.url, job)
    assert [sorted(x["client"] for x in u["attempts"]) for u in units] == [sorted([a.id, b.id])] * 2


def test_lease_gives_only_what_fits_the_free_cpus_and_memory(master):
    create_job(master.url, job_file(resources={"cpus": 2, "memory": "1GiB"}), [b"a\n", b"b\n", b"c\n"])
    client = registered(master.url)
    assert client.lease(3, cpus=1.0) == []
    assert client.lease(3, cpus=8.0, memory=512 << 20) == []
    assert len(client.lease(3, cpus=4.0, memory=8 << 30)) == 2


def test_units_that_do_not_fit_do_not_block_those_that_do(master):
    big = create_job(master.url, job_file("big", priority=10, resources={"cpus": 64}), [b"%d\n" % i for i in range(60)])
    small = create_job(master.url, job_file("small"), [b"small\n"])
    client = registered(master.url)
    (grant,) = client.lease(1, cpus=2.0)
    assert grant["job"] == small
    assert job_status(master.url, big)["units"]["ready"] == 60


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"max_units": -1}, "max_units"),
        ({"max_units": 1001}, "max_units"),
        ({"max_units": "3"}, "max_units must be an integer"),
        ({"max_units": 1, "cpus": -1}, "cpus"),
        ({"max_units": 1, "images": "x"}, "images must be a list"),
        ({}, "missing field max_units"),
    ],
)
def test_lease_bad_input_is_400(shared_master, body, fragment):
    client = registered(shared_master.url)
    assert_error(post_mp(shared_master.url, "/lease", body, client.token), 400, fragment)


# -- results -----------------------------------------------------------------------------------


def test_result_is_taken_and_a_repeat_is_idempotent(master):
    job = create_job(master.url, job_file(), [b"hello\n"])
    client = registered(master.url)
    (grant,) = client.lease(1)
    report = client.report(grant)
    taken = {"attempt": grant["attempt"], "accepted": True, "reason": "", "again": False}
    assert client.upload([report]) == [taken]
    assert client.upload([report]) == [taken | {"reason": "duplicate"}]
    (unit,) = job_units(master.url, job)
    assert unit["state"] == "done" and unit["output"] == digest(b"HELLO\n")
    assert [(a["state"], a["validity"]) for a in unit["attempts"]] == [("succeeded", "valid")]
    assert job_status(master.url, job)["state"] == "done"


def test_a_conflicting_repeat_is_refused(master):
    create_job(master.url, job_file(), [b"hello\n"])
    client = registered(master.url)
    (grant,) = client.lease(1)
    client.upload([client.report(grant)])
    (ack,) = client.upload([client.report(grant, b"something else")])
    assert ack["accepted"] is False and "different result" in ack["reason"]
    errored = {"attempt": grant["attempt"], "status": "errored", "error": "exit_nonzero", "exit_code": 1}
    (ack,) = client.upload([errored])
    assert ack["accepted"] is False and "different result" in ack["reason"]


def test_results_for_foreign_or_unknown_attempts_are_refused(master):
    job = create_job(master.url, job_file(), [b"hello\n"])
    a, b = registered(master.url, "a"), registered(master.url, "b")
    (grant,) = a.lease(1)
    acks = b.upload([b.report(grant), dict(b.report(grant), attempt="no-such-attempt")])
    assert [ack["accepted"] for ack in acks] == [False, False]
    assert all("unknown or was leased to another client" in ack["reason"] for ack in acks)
    assert attempt_states(master.url, job) == {grant["attempt"]: "leased"}
    assert a.upload([a.report(grant)])[0]["accepted"] is True


def test_a_result_with_an_impossible_runtime_is_refused(master):
    create_job(master.url, job_file(), [b"a\n"])
    client = registered(master.url)
    (grant,) = client.lease(1)
    for runtime in (math.inf, -1.0):
        (ack,) = client.upload([dict(client.report(grant), runtime=runtime)])
        assert ack["accepted"] is False and "runtime" in ack["reason"]
    assert client.upload([client.report(grant)])[0]["accepted"] is True
    (listed,) = requests.get(f"{master.api}/jobs", headers=master.headers).json()["jobs"]
    assert listed["state"] == "done"


def test_results_in_a_batch_are_acked_one_by_one_in_order(master):
    job = create_job(master.url, job_file(), [b"a\n", b"b\n", b"c\n"])
    client = registered(master.url)
    grants = client.lease(3)
    good, bad_hash, missing = client.report(grants[0]), client.report(grants[1]), client.report(grants[2])
    bad_hash["output_hash"] = digest(b"not the output")
    del missing["output"]  # neither inline nor uploaded beforehand
    acks = client.upload([good, bad_hash, missing])
    assert [a["attempt"] for a in acks] == [g["attempt"] for g in grants]
    assert [a["accepted"] for a in acks] == [True, False, False]
    assert "hashes to" in acks[1]["reason"] and "not uploaded" in acks[2]["reason"]
    # an output PUT as a blob first may be referred to by its hash alone
    output = client.output(grants[2])
    assert requests.put(f"{master.api}/blobs/{digest(output)}", data=output, headers=master.headers).status_code == 201
    assert client.upload([missing])[0]["accepted"] is True
    units = job_status(master.url, job)["units"]
    assert (units["done"], units["running"]) == (2, 1)


def test_an_errored_result_sends_the_unit_to_another_client(master):
    job = create_job(master.url, job_file(redundancy={"replicas": 1, "quorum": 1, "max_attempts": 2}), [b"a\n"])
    a, b = registered(master.url, "a"), registered(master.url, "b")
    (grant,) = a.lease(1)
    errored = {"attempt": grant["attempt"], "status": "errored", "error": "oom", "stderr_tail": "killed"}
    assert a.upload([errored])[0]["accepted"] is True
    assert job_status(master.url, job)["units"]["ready"] == 1
    (again,) = b.lease(1)
    assert again["unit"] == grant["unit"]
    b.upload([b.report(again)])
    assert job_status(master.url, job)["state"] == "done"
    errors = {
        c["name"]: c["errors"] for c in requests.get(f"{master.api}/clients", headers=master.headers).json()["clients"]
    }
    assert errors == {"a": 1, "b": 0}


@pytest.mark.parametrize(
    ("report", "fragment"),
    [
        ({"status": "done"}, "must be one of succeeded, errored"),
        ({"status": "succeeded"}, "needs output_hash"),
        ({"status": "errored"}, "needs error"),
        ({"status": "errored", "error": "bored"}, "error must be one of"),
        ({"status": "succeeded", "output_hash": "abc", "runtime": "fast"}, "runtime must be a number"),
    ],
)
def test_malformed_result_reports_are_400(shared_master, report, fragment):
    client = registered(shared_master.url)
    body = {"results": [{"attempt": "x", **report}]}
    assert_error(post_mp(shared_master.url, "/results", body, client.token), 400, fragment)


def test_a_late_result_counts_while_its_unit_is_undecided(master_factory):
    master = master_factory(*FAST_EXPIRY)
    job = create_job(master.url, job_file(resources={"timeout": "1s"}), [b"late\n"])
    a, b = registered(master.url, "a"), registered(master.url, "b")
    (late,) = a.lease(1)
    wait_for(lambda: attempt_states(master.url, job) == {late["attempt"]: "timed_out"}, 10, "the lease to expire")
    assert job_status(master.url, job)["units"]["ready"] == 1
    (reissued,) = b.lease(1)
    assert reissued["unit"] == late["unit"]
    (ack,) = a.upload([a.report(late)])
    assert ack["accepted"] is True
    (unit,) = job_units(master.url, job)
    assert unit["state"] == "done" and unit["output"] == digest(b"LATE\n")
    states = attempt_states(master.url, job)
    assert states == {late["attempt"]: "succeeded", reissued["attempt"]: "released"}
    # the reissued attempt is no longer needed: its client is told to abort it, its result refused
    assert b.heartbeat([reissued])["commands"] == [{"action": "abort", "attempt": reissued["attempt"]}]
    (ack,) = b.upload([b.report(reissued)])
    assert ack["accepted"] is False and "released" in ack["reason"]


def test_a_result_for_a_decided_unit_is_refused(master_factory):
    master = master_factory(*FAST_EXPIRY)
    job = create_job(master.url, job_file(resources={"timeout": "1s"}), [b"late\n"])
    a, b = registered(master.url, "a"), registered(master.url, "b")
    (late,) = a.lease(1)
    wait_for(lambda: attempt_states(master.url, job) == {late["attempt"]: "timed_out"}, 10, "the lease to expire")
    (reissued,) = b.lease(1)
    assert b.upload([b.report(reissued)])[0]["accepted"] is True
    (ack,) = a.upload([a.report(late)])
    assert ack["accepted"] is False and "already done" in ack["reason"]
    assert attempt_states(master.url, job)[late["attempt"]] == "timed_out"
    (client_a,) = [
        c for c in requests.get(f"{master.api}/clients", headers=master.headers).json()["clients"] if c["id"] == a.id
    ]
    assert client_a["errors"] == 1  # the expired lease


def test_a_client_that_stops_heartbeating_loses_its_leases(master_factory):
    master = master_factory("--heartbeat-timeout", "0.5", "--reap-interval", "0.1")
    job = create_job(master.url, job_file(), [b"a\n"])
    client = registered(master.url)
    (grant,) = client.lease(1)
    wait_for(lambda: attempt_states(master.url, job) == {grant["attempt"]: "timed_out"}, 10, "the lease to expire")
    assert job_status(master.url, job)["units"]["ready"] == 1


# -- release -----------------------------------------------------------------------------------


def test_release_gives_leases_back_for_other_clients(master):
    job = create_job(master.url, job_file(), [b"a\n", b"b\n"])
    a, b = registered(master.url, "a"), registered(master.url, "b")
    grants = a.lease(2)
    ids = [g["attempt"] for g in grants]
    assert a.release(ids) == [{"attempt": i, "accepted": True, "reason": "", "again": False} for i in ids]
    assert job_status(master.url, job)["units"]["ready"] == 2
    assert [ack["reason"] for ack in a.release(ids)] == ["already released"] * 2
    (ack,) = a.upload([a.report(grants[0])])
    assert ack["accepted"] is False and "released" in ack["reason"]
    again = b.lease(2)
    assert [g["unit"] for g in again] == [g["unit"] for g in grants]
    (foreign,) = a.release([again[0]["attempt"]])
    assert foreign["accepted"] is False and "another client" in foreign["reason"]
    b.upload([b.report(again[0])])
    (finished,) = b.release([again[0]["attempt"]])
    assert finished["accepted"] is False and "succeeded" in finished["reason"]
    assert attempt_states(master.url, job)[again[1]["attempt"]] == "leased"


def test_release_bad_input_is_400(shared_master):
    client = registered(shared_master.url)
    assert_error(
        post_mp(shared_master.url, "/release", {"attempts": "a"}, client.token), 400, "attempts must be a list"
    )
    assert_error(post_mp(shared_master.url, "/release", {"attempts": [1]}, client.token), 400, "attempts[0]")


# -- blobs -------------------------------------------------------------------------------------

DATA = bytes(range(256)) * 40


def test_blob_put_then_get_and_head_with_etag(shared_master):
    blob = digest(DATA)
    response = requests.put(f"{shared_master.api}/blobs/{blob}", data=DATA, headers=shared_master.headers)
    assert response.status_code == 201 and response.json() == {"hash": blob, "size": len(DATA)}
    assert (
        requests.put(f"{shared_master.api}/blobs/{blob}", data=DATA, headers=shared_master.headers).status_code == 201
    )  # idempotent
    got = requests.get(f"{shared_master.api}/blobs/{blob}", headers=shared_master.headers)
    assert got.status_code == 200 and got.content == DATA
    assert got.headers["ETag"] == f'"{blob}"' and got.headers["Accept-Ranges"] == "bytes"
    head = requests.head(f"{shared_master.api}/blobs/{blob}", headers=shared_master.headers)
    assert head.status_code == 200 and head.content == b""
    assert head.headers["Content-Length"] == str(len(DATA)) and head.headers["ETag"] == f'"{blob}"'
    cached = requests.get(
        f"{shared_master.api}/blobs/{blob}", headers=shared_master.headers | {"If-None-Match": f'"{blob}"'}
    )
    assert cached.status_code == 304 and cached.content == b""
    other = requests.get(
        f"{shared_master.api}/blobs/{blob}", headers=shared_master.headers | {"If-None-Match": '"0123"'}
    )
    assert other.status_code == 200 and other.content == DATA


@pytest.mark.parametrize(
    ("header", "start", "end"),
    [("bytes=0-9", 0, 10), ("bytes=100-", 100, len(DATA)), ("bytes=-16", len(DATA) - 16, len(DATA)),
     ("bytes=10000-99999", 10000, len(DATA)), ("bytes=5-5", 5, 6)],
)  # fmt: skip
def test_blob_range_is_206_with_content_range(shared_master, header, start, end):
    blob = digest(DATA)
    requests.put(f"{shared_master.api}/blobs/{blob}", data=DATA, headers=shared_master.headers)
    response = requests.get(f"{shared_master.api}/blobs/{blob}", headers=shared_master.headers | {"Range": header})
    assert response.status_code == 206
    assert response.headers["Content-Range"] == f"bytes {start}-{end - 1}/{len(DATA)}"
    assert response.content == DATA[start:end]


@pytest.mark.parametrize("header", ["bytes=10240-", "bytes=20000-", "bytes=20000-30000", "bytes=-0"])
def test_an_unsatisfiable_range_is_416(shared_master, header):
    blob = digest(DATA)
    requests.put(f"{shared_master.api}/blobs/{blob}", data=DATA, headers=shared_master.headers)
    response = requests.get(f"{shared_master.api}/blobs/{blob}", headers=shared_master.headers | {"Range": header})
    assert_error(response, 416, "range")
    assert response.headers["Content-Range"] == f"bytes */{len(DATA)}"


@pytest.mark.parametrize("header", ["lines=1-2", "bytes=a-b", "bytes=9-3", "bytes=0-1,5-6", "bytes=-", "bytes=\xb2-"])
def test_a_range_that_is_not_understood_is_ignored(shared_master, header):
    blob = digest(DATA)
    requests.put(f"{shared_master.api}/blobs/{blob}", data=DATA, headers=shared_master.headers)
    response = requests.get(f"{shared_master.api}/blobs/{blob}", headers=shared_master.headers | {"Range": header})
    assert response.status_code == 200 and response.content == DATA
    assert "Content-Range" not in response.headers


def test_a_blob_that_does_not_match_its_hash_is_refused_with_422(shared_master):
    blob = digest(b"the real bytes")
    assert_error(
        requests.put(f"{shared_master.api}/blobs/{blob}", data=b"other bytes", headers=shared_master.headers),
        422,
        "hashes to",
        blob,
    )
    assert_error(requests.get(f"{shared_master.api}/blobs/{blob}", headers=shared_master.headers), 404, "no blob")


def test_a_malformed_hash_is_400_and_a_missing_blob_404(shared_master):
    assert_error(
        requests.get(f"{shared_master.api}/blobs/NOT-A-HASH", headers=shared_master.headers),
        400,
        "32 lowercase hex digits",
    )
    assert_error(
        requests.put(f"{shared_master.api}/blobs/abc", data=b"x", headers=shared_master.headers),
        400,
        "32 lowercase hex digits",
    )
    assert_error(requests.get(f"{shared_master.api}/blobs/{'0' * 32}", headers=shared_master.headers), 404, "no blob")
    head = requests.head(f"{shared_master.api}/blobs/{'0' * 32}", headers=shared_master.headers)
    assert head.status_code == 404 and head.content == b""


# -- bodies ------------------------------------------------------------------------------------


def test_oversized_bodies_are_413_with_the_limit(master_factory):
    master = small_body_master(master_factory)
    big = b"x" * 4096
    assert_error(
        requests.put(f"{master.api}/blobs/{digest(big)}", data=big, headers=master.headers), 413, "limit of 2048"
    )
    client = registered(master.url)
    report = {"attempt": "a", "status": "succeeded", "output_hash": digest(big), "output": big}
    assert_error(post_mp(master.url, "/results", {"results": [report]}, client.token), 413, "exceeds")
    small = b"x" * 1024
    assert requests.put(f"{master.api}/blobs/{digest(small)}", data=small, headers=master.headers).status_code == 201


def test_chunked_bodies_past_the_limit_are_refused(master_factory):
    master = small_body_master(master_factory)
    big = b"y" * 8192

    def pieces():
        for i in range(0, len(big), 1024):
            yield big[i : i + 1024]

    try:
        response = requests.put(f"{master.api}/blobs/{digest(big)}", data=pieces(), headers=master.headers, timeout=10)
    except requests.RequestException:
        pass  # the master may close the connection while the body is still coming
    else:
        assert 400 <= response.status_code < 500 and "Traceback" not in response.text
    assert requests.get(f"{master.api}/blobs/{digest(big)}", headers=master.headers).status_code == 404
    small = b"y" * 1024
    assert requests.put(f"{master.api}/blobs/{digest(small)}", data=small, headers=master.headers).status_code == 201


@pytest.mark.parametrize(
    ("data", "ctype", "fragment"),
    [
        (b"\xc1", MSGPACK, "not valid msgpack"),
        (b"\x81\xa4na", MSGPACK, "not valid msgpack"),
        (b'{"name": ', "application/json", "not valid JSON"),
        (b'{"name": "a"}', MSGPACK, "not valid msgpack"),
        (b"", MSGPACK, "empty"),
    ],
)
def test_malformed_bodies_are_400(shared_master, data, ctype, fragment):
    response = requests.post(f"{shared_master.api}/clients/register", data=data, headers={"Content-Type": ctype})
    assert_error(response, 400, fragment)


def test_json_works_on_the_client_protocol_too(shared_master):
    response = requests.post(f"{shared_master.api}/clients/register", json={"name": "json-client"})
    assert response.status_code == 200 and response.headers["Content-Type"] == "application/json"
    token = response.json()["token"]
    lease = requests.post(
        f"{shared_master.api}/lease", json={"max_units": 1}, headers={"Authorization": f"Bearer {token}"}
    )
    assert lease.json() == {"attempts": [], "retry_after": lease.json()["retry_after"]}


def test_a_sim_client_round_trip(master):
    job = create_job(master.url, job_file(), [b"one\n", b"two\n"])
    client = SimClient(master.url)
    client.register()
    assert client.work_once() == 2
    assert job_status(master.url, job)["state"] == "done"
    assert requests.get(f"{master.api}/jobs/{job}/results", headers=master.headers).content == b"ONE\nTWO\n"
