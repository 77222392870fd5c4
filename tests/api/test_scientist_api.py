"""The scientist's API under /api/v1/ (JSON), one behaviour per test, over real HTTP against a
real master process."""

import pytest
import requests

from tests.sim import (
    MSGPACK,
    Fleet,
    SimClient,
    compute,
    create_job,
    digest,
    job_file,
    job_status,
    job_units,
    pack,
    put_blob,
    unpack,
    wait_job,
)

from .helpers import assert_error, image_id, jobs, post_job, registered, small_body_master

UNIT_STATES = {"ready", "running", "done", "failed", "cancelled", "suspended"}


# -- creating jobs ----------------------------------------------------------------------------


def test_create_a_job_and_follow_its_status(master):
    chunks = [b"alpha\n", b"beta\n", b"gamma\n"]
    hashes = [put_blob(master.url, c) for c in chunks]
    response = post_job(master.url, {"job": job_file("counts", priority=5), "chunks": hashes})
    assert response.status_code == 201 and response.headers["Content-Type"] == "application/json"
    job = response.json()["job"]
    assert response.json() == {"job": job, "image": image_id(master)}  # the tag, resolved to the pushed image
    status = job_status(master.url, job)
    assert status["job"] == status["id"] == job
    assert (status["name"], status["image"], status["state"], status["units"]) == (
        "counts",
        image_id(master),
        "running",
        {**dict.fromkeys(UNIT_STATES, 0), "ready": 3},
    )
    assert status["reduce"] is False and status["priority"] == 5 and status["finished_at"] is None
    client = registered(master.url)
    client.upload([client.report(g) for g in client.lease(2)])
    units = job_status(master.url, job)["units"]
    assert (units["done"], units["ready"], units["running"]) == (2, 1, 0)


def test_job_creation_with_chunks_not_uploaded_is_400_and_creates_nothing(shared_master):
    before = jobs(shared_master.url)
    there = put_blob(shared_master.url, b"uploaded\n")
    missing = digest(b"never uploaded\n")
    message = assert_error(post_job(shared_master.url, {"job": job_file(), "chunks": [there, missing]}), 400, "PUT")
    assert missing in message and "1 chunk(s) not uploaded" in message
    assert jobs(shared_master.url) == before


@pytest.mark.parametrize(
    ("body", "fragments"),
    [
        ({"job": {"name": "x"}, "chunks": ["0" * 32]}, ["image is required"]),
        ({"job": {"image": "x"}, "chunks": ["0" * 32]}, ["name is required"]),
        ({"job": job_file(image="Not An Image")}, ["not a valid Docker image reference"]),
        ({"job": job_file(image="never/pushed")}, ["no image 'never/pushed'", "push it first"]),
        ({"job": job_file(redundancy={"replicas": 1, "quorum": 2})}, ["quorum (2) cannot exceed", "replicas (1)"]),
        ({"job": job_file(resources={"memory": "lots"})}, ["resources.memory", "256MiB"]),
        ({"job": job_file(resources={"timeout": "0s"})}, ["resources.timeout"]),
        ({"job": job_file(chunking={"by": "words"})}, ["chunking.by must be one of", "lines"]),
        ({"job": job_file(colour="blue")}, ["unknown key(s) colour", "allowed:"]),
        ({"job": job_file(command="python3 run.py")}, ["command must be a non-empty list of strings"]),
        ({"job": job_file(env={"1BAD": "x"})}, ["env name"]),
        ({"job": job_file(), "chunks": []}, ["non-empty list", "empty"]),
        ({"job": job_file(), "chunks": "abc"}, ["chunks must be a non-empty list"]),
        ({"job": job_file(), "chunks": ["abc"]}, ["chunks[0]", "32 lowercase hex digits"]),
        ({"job": job_file(), "chunks": ["0" * 32], "extra": 1}, ['body must be {"job"']),
        (["not", "an", "object"], ['body must be {"job"']),
        ({"chunks": ["0" * 32]}, ["a job file must be a JSON object"]),
    ],
)
def test_an_invalid_job_file_is_400_with_a_helpful_message_and_creates_nothing(shared_master, body, fragments):
    before = jobs(shared_master.url)
    if isinstance(body, dict) and "chunks" not in body:
        body["chunks"] = [put_blob(shared_master.url, b"some input\n")]
    assert_error(post_job(shared_master.url, body), 400, *fragments)
    assert jobs(shared_master.url) == before


@pytest.mark.parametrize("size", [0, "0", "0MiB"])
def test_a_chunk_size_of_zero_is_400(shared_master, size):
    chunk = put_blob(shared_master.url, b"input\n")
    body = {"job": job_file(chunking={"by": "bytes", "size": size}), "chunks": [chunk]}
    assert_error(post_job(shared_master.url, body), 400, "chunking.size must be greater than zero")
    response = requests.post(
        f"{shared_master.api}/chunks",
        params={"by": "bytes", "size": str(size)},
        data=b"abc",
        headers=shared_master.headers,
    )
    assert_error(response, 400, "chunking.size must be greater than zero")


def test_malformed_json_is_400(shared_master):
    for data in (b"{", b"\xff\xfe", b"[1, 2", b"NaN-ish", b""):
        response = requests.post(
            f"{shared_master.api}/jobs", data=data, headers=shared_master.headers | {"Content-Type": "application/json"}
        )
        assert_error(response, 400)


def test_msgpack_is_spoken_when_asked(shared_master):
    headers = {"Content-Type": MSGPACK, "Accept": MSGPACK}
    response = requests.post(
        f"{shared_master.api}/jobs", data=pack({"job": {}}), headers=shared_master.headers | headers
    )
    assert_error(response, 400, "name is required")
    listed = requests.get(f"{shared_master.api}/jobs", headers=shared_master.headers | {"Accept": MSGPACK})
    assert listed.headers["Content-Type"] == MSGPACK and "jobs" in unpack(listed.content)


def test_oversized_bodies_are_413(master_factory):
    master = small_body_master(master_factory)
    chunk = put_blob(master.url, b"x\n")
    body = {"job": job_file(description="d" * 4096), "chunks": [chunk]}
    assert_error(post_job(master.url, body), 413, "limit of 2048")
    assert_error(requests.post(f"{master.api}/chunks", data=b"line\n" * 1000, headers=master.headers), 413, "exceeds")
    assert jobs(master.url) == []


# -- reading jobs -----------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/jobs/nope", "/jobs/nope/units", "/jobs/nope/results", "/jobs/%2E%2E/units"])
def test_an_unknown_job_is_404(shared_master, path):
    assert_error(requests.get(f"{shared_master.api}{path}", headers=shared_master.headers), 404, "no job")


def test_unknown_endpoints_are_404_and_wrong_methods_405(shared_master):
    assert_error(requests.get(f"{shared_master.api}/nothing"), 404, "no endpoint GET /api/v1/nothing")
    assert_error(requests.get(f"{shared_master.url}/api/v2/jobs"), 404, "no endpoint")
    assert_error(requests.delete(f"{shared_master.api}/jobs"), 405, "method not allowed")
    assert_error(requests.get(f"{shared_master.api}/lease"), 405, "method not allowed")


def test_units_list_in_order_with_their_attempts(master):
    job = create_job(master.url, job_file(), [b"%d\n" % i for i in range(7)])
    client = registered(master.url)
    client.upload([client.report(g) for g in client.lease(2)])
    page = requests.get(
        f"{master.api}/jobs/{job}/units", params={"offset": 1, "limit": 3}, headers=master.headers
    ).json()["units"]
    assert [u["index"] for u in page] == [1, 2, 3]
    assert [u["state"] for u in page] == ["done", "ready", "ready"]
    done = page[0]
    assert done["id"] == f"{job}.1" and done["kind"] == "map" and done["output"] == digest(b"1\n")
    (attempt,) = done["attempts"]
    assert (attempt["client"], attempt["state"], attempt["validity"], attempt["output"]) == (
        client.id,
        "succeeded",
        "valid",
        digest(b"1\n"),
    )
    assert len(job_units(master.url, job)) == 7
    for params in ({"limit": 0}, {"limit": 1001}, {"offset": -1}, {"limit": "x"}):
        assert_error(
            requests.get(f"{master.api}/jobs/{job}/units", params=params, headers=master.headers),
            400,
            "must be an integer",
        )


def test_results_are_409_until_the_job_is_done_then_the_outputs_in_unit_order(master):
    chunks = [b"first line\n", b"second line\n", b"third line\n"]
    job = create_job(master.url, job_file(redundancy={"replicas": 2, "quorum": 2}), chunks)
    url = f"{master.api}/jobs/{job}/results"
    assert_error(requests.get(url, headers=master.headers), 409, "is running", "0 units done", "partial=1")
    a, b = registered(master.url, "a"), registered(master.url, "b")
    for client in (a, b):
        (grant,) = client.lease(1)
        client.upload([client.report(grant)])
    assert_error(requests.get(url, headers=master.headers), 409, "1 units done")
    partial = requests.get(url, params={"partial": 1}, headers=master.headers)
    assert partial.status_code == 200 and partial.content == b"FIRST LINE\n"
    with Fleet([SimClient(master.url, name=f"c{i}") for i in range(2)]):
        assert wait_job(master.url, job)["state"] == "done"
    response = requests.get(url, headers=master.headers)
    assert response.status_code == 200 and response.headers["Content-Type"] == "application/octet-stream"
    assert response.content == b"".join(chunks).upper()


def test_results_of_a_job_with_a_reduce_step_are_the_reduce_output(master):
    chunks = [b"one\ntwo\n", b"three\n", b"four\nfive\nsix\n"]
    job = create_job(master.url, job_file(reduce={"command": ["sim", "--reduce"]}), chunks)
    assert job_status(master.url, job)["reduce"] is True
    with Fleet([SimClient(master.url, name="c")]):
        status = wait_job(master.url, job)
    assert status["state"] == "done" and status["units"]["done"] == 4
    units = job_units(master.url, job)
    assert [u["kind"] for u in units] == ["map"] * 3 + ["reduce"]
    expected = compute("reduce", [compute("map", [c]) for c in chunks])
    assert expected.startswith(b"6 lines, 28 bytes")
    assert units[-1]["output"] == digest(expected)
    assert requests.get(f"{master.api}/jobs/{job}/results", headers=master.headers).content == expected


def test_jobs_are_listed_newest_first(master):
    assert jobs(master.url) == []
    ids = [create_job(master.url, job_file(f"job-{i}"), [b"%d\n" % i]) for i in range(3)]
    listed = jobs(master.url)
    assert [j["id"] for j in listed] == ids[::-1]
    assert [(j["name"], j["state"], j["units"]) for j in listed] == [(f"job-{i}", "running", 1) for i in (2, 1, 0)]
    assert [
        j["id"] for j in requests.get(f"{master.api}/jobs", params={"limit": 2}, headers=master.headers).json()["jobs"]
    ] == ids[:0:-1]
    for limit in ("0", "-1", "x", "10001"):
        assert_error(requests.get(f"{master.api}/jobs", params={"limit": limit}, headers=master.headers), 400, "limit")


def test_clients_are_listed_with_their_counts(master):
    job = create_job(master.url, job_file(), [b"a\n", b"b\n"])
    honest, failing = registered(master.url, "honest"), registered(master.url, "failing")
    honest.upload([honest.report(g) for g in honest.lease(1)])
    (grant,) = failing.lease(1)
    failing.upload([{"attempt": grant["attempt"], "status": "errored", "error": "exit_nonzero", "exit_code": 3}])
    assert job_status(master.url, job)["units"]["done"] == 1
    listed = {c["name"]: c for c in requests.get(f"{master.api}/clients", headers=master.headers).json()["clients"]}
    assert set(listed) == {"honest", "failing"}
    assert {k for k in listed["honest"]} >= {"id", "online", "slots", "busy", "valid", "errors", "reliability", "host"}
    assert (listed["honest"]["valid"], listed["honest"]["errors"], listed["honest"]["online"]) == (1, 0, True)
    assert (listed["failing"]["valid"], listed["failing"]["errors"]) == (0, 1)
    assert listed["honest"]["reliability"] == 1.0


# -- chunking on the master ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "data", "expected"),
    [
        ({"by": "lines", "size": "2"}, b"a\nb\nc\nd\ne\n", [b"a\nb\n", b"c\nd\n", b"e\n"]),
        ({"by": "lines", "size": "5B"}, b"aa\nbb\ncc\n", [b"aa\n", b"bb\n", b"cc\n"]),
        ({"by": "bytes", "size": "4B"}, b"0123456789", [b"0123", b"4567", b"89"]),
        ({"by": "records", "size": "1"}, b">r1\nAC\n>r2\nGT\n", [b">r1\nAC\n", b">r2\nGT\n"]),
        ({"by": "records", "separator": "@", "size": "1"}, b"@a\n1\n@b\n2\n", [b"@a\n1\n", b"@b\n2\n"]),
    ],
)
def test_chunks_are_cut_and_stored_on_the_master(shared_master, params, data, expected):
    response = requests.post(f"{shared_master.api}/chunks", params=params, data=data, headers=shared_master.headers)
    assert response.status_code == 201, response.text
    chunks = response.json()["chunks"]
    assert chunks == [{"hash": digest(c), "size": len(c)} for c in expected]
    for chunk, raw in zip(chunks, expected, strict=True):
        assert requests.get(f"{shared_master.api}/blobs/{chunk['hash']}", headers=shared_master.headers).content == raw
    body = {"job": job_file(), "chunks": [c["hash"] for c in chunks]}
    job = post_job(shared_master.url, body).json()["job"]
    assert job_status(shared_master.url, job)["units"]["ready"] == len(expected)


@pytest.mark.parametrize(
    ("params", "data", "fragment"),
    [
        ({"by": "files"}, b"x", "chunking by files happens on the scientist's side"),
        ({"by": "words"}, b"x", "chunking.by must be one of"),
        ({"size": "lots"}, b"x\n", "chunking.size"),
        ({"by": "records"}, b"no separator here\n", "no record separator"),
        ({"by": "lines"}, b"", "empty"),
    ],
)
def test_bad_chunking_requests_are_400(shared_master, params, data, fragment):
    assert_error(
        requests.post(f"{shared_master.api}/chunks", params=params, data=data, headers=shared_master.headers),
        400,
        fragment,
    )
