"""Parameter sweeps through the scientist's API: a job file with a "sweep" and no chunks
becomes one unit per parameter set, its parameters in the grant's env and as its params.json
input, sent in the grant; a bad sweep is refused with 400 and creates nothing."""

import base64
import json

import pytest
import requests

from tests.sim import compute, digest, job_file, job_status, job_units, put_blob, wait_job

from .helpers import assert_error, jobs, post_job, registered


def test_a_range_sweep_makes_one_unit_per_step_with_its_range(master):
    response = post_job(master.url, {"job": job_file("range", sweep={"start": 1, "end": 26, "step": 10})})
    assert response.status_code == 201, response.text
    job = response.json()["job"]
    assert job_status(master.url, job)["units"]["ready"] == 3
    client = registered(master.url)
    grants = client.lease(5)
    assert [(g["unit"], g["env"]) for g in grants] == [
        (f"{job}.0", {"START": "1", "END": "11"}),
        (f"{job}.1", {"START": "11", "END": "21"}),
        (f"{job}.2", {"START": "21", "END": "26"}),
    ]
    assert [g["inputs"][0]["url"] for g in grants] == [""] * 3  # sent in the grant: no blob to fetch
    params = [json.loads(client.fetch(g["inputs"][0])) for g in grants]  # checked by hash
    assert [g["inputs"][0]["name"] for g in grants] == ["params.json"] * 3
    assert params == [{"START": 1, "END": 11}, {"START": 11, "END": 21}, {"START": 21, "END": 26}]
    client.upload([client.report(g) for g in grants])
    assert wait_job(master.url, job)["state"] == "done"
    expected = b"".join(compute("map", [client.fetch(g["inputs"][0])]) for g in grants)
    assert requests.get(f"{master.api}/jobs/{job}/results", headers=master.headers).content == expected


def test_a_list_sweep_gives_each_unit_its_object_over_the_jobs_env(master):
    sweep = [{"SEED": 1, "MODEL": "small"}, {"SEED": 2, "MODEL": "large", "RATE": 0.5, "FAST": True}]
    job_body = job_file("list", env={"LANG": "C.UTF-8", "MODEL": "none"}, sweep=sweep, reduce={"command": ["sum"]})
    response = post_job(master.url, {"job": job_body, "chunks": []})  # an empty chunk list is no chunk list
    assert response.status_code == 201, response.text
    job = response.json()["job"]
    client = registered(master.url)
    first, second = client.lease(2)
    assert first["env"] == {"LANG": "C.UTF-8", "SEED": "1", "MODEL": "small"}
    assert second["env"] == {"LANG": "C.UTF-8", "SEED": "2", "MODEL": "large", "RATE": "0.5", "FAST": "true"}
    assert json.loads(client.fetch(second["inputs"][0])) == sweep[1]
    client.upload([client.report(g) for g in (first, second)])
    (reduce,) = client.lease(1)  # created with the last map unit's result
    assert reduce["kind"] == "reduce" and reduce["env"] == {"LANG": "C.UTF-8", "MODEL": "none"}
    client.upload([client.report(reduce)])
    assert wait_job(master.url, job)["state"] == "done"


def test_units_with_the_same_parameters_get_the_same_params_json(master):
    sweep = [{"N": 1}, {"N": 1}, {"N": 2}]
    job = post_job(master.url, {"job": job_file("same", sweep=sweep)}).json()["job"]
    assert len(job_units(master.url, job)) == 3
    client = registered(master.url)
    inputs = [g["inputs"][0]["hash"] for g in client.lease(3)]
    assert inputs[0] == inputs[1] == digest(b'{"N": 1}\n') != inputs[2]


@pytest.mark.parametrize(
    ("sweep", "fragments"),
    [
        ({"start": 1, "end": 10, "step": 0}, ["sweep.step must be a positive integer"]),
        ({"start": 10, "end": 1}, ["sweep.end (1) must be greater than sweep.start (10)"]),
        ({"start": 5, "end": 5}, ["must be greater than", "end is exclusive"]),
        ({"start": 0, "end": 10**9}, ["the sweep makes 1000000000 units, more than 1000000", "larger step"]),
        ([], ["sweep is an empty list"]),
        ([{"1X": 1}], ["sweep[0]: parameter name '1X'"]),
        ([{"A": 1}, {"A": [2]}], ["sweep[1].A must be a string"]),
        ([{}], ["sweep[0] must be an object"]),
        ("1-10", ["sweep must be"]),
    ],
    ids=lambda v: repr(v)[:40],
)
def test_a_bad_sweep_is_400_with_a_helpful_message_and_creates_nothing(shared_master, sweep, fragments):
    before = jobs(shared_master.url)
    assert_error(post_job(shared_master.url, {"job": job_file(sweep=sweep)}), 400, *fragments)
    assert jobs(shared_master.url) == before


def test_a_sweep_with_chunks_or_chunking_is_400_and_creates_nothing(shared_master):
    before = jobs(shared_master.url)
    chunk = put_blob(shared_master.url, b"an input\n")
    body = {"job": job_file(sweep={"start": 0, "end": 3}), "chunks": [chunk]}
    assert_error(post_job(shared_master.url, body), 400, "a sweep job takes no chunks", "params.json")
    body = {"job": job_file(sweep={"start": 0, "end": 3}, chunking={"by": "lines"})}
    assert_error(post_job(shared_master.url, body), 400, "no input files to chunk")
    assert_error(post_job(shared_master.url, {"job": job_file()}), 400, "chunks must be a non-empty list")
    assert jobs(shared_master.url) == before


def test_a_client_speaking_json_gets_params_json_in_base64(master):
    """JSON has no bytes: the grant's params.json travels as {"base64": TEXT} there (msgpack's
    bin for the daemon), and its hash holds for the decoded bytes."""
    job = post_job(master.url, {"job": job_file("json", sweep={"start": 0, "end": 2})}).json()["job"]
    token = requests.post(f"{master.api}/clients/register", json={"name": "json-sweeper"}).json()["token"]
    lease = requests.post(f"{master.api}/lease", json={"max_units": 1}, headers={"Authorization": f"Bearer {token}"})
    assert lease.status_code == 200, lease.text
    (grant,) = lease.json()["attempts"]
    params = grant["inputs"][0]
    data = base64.b64decode(params["data"]["base64"], validate=True)
    assert (grant["unit"], digest(data), len(data)) == (f"{job}.0", params["hash"], params["size"])
    assert json.loads(data) == {"START": 0, "END": 1}
