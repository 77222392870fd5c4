"""Resource matching over real HTTP against a real master: a job says why no online client
can run it, and its architecture comes from its image."""

from tests.sim import create_job, job_file, job_status, put_blob, wait_for

from .helpers import assert_error, post_job, registered


def beat(client, **offer) -> None:
    client.call("/clients/heartbeat", {"slots": 2, "busy": 0, "containers": [], **offer})


def test_a_job_no_online_client_can_run_says_why(master):
    job = create_job(master.url, job_file(resources={"cpus": 4}), [b"x\n"])
    assert job_status(master.url, job)["unrunnable"]["message"] == "no client is online"
    client = registered(master.url)
    beat(client, memory=1 << 30)
    assert client.lease(1, cpus=2.0) == []  # what it has free
    # the master reads who is online at most once a second
    status = wait_for(lambda: (s := job_status(master.url, job))["unrunnable"]["resource"] != "clients" and s, 5,
                      "the master to see the client")  # fmt: skip
    assert status["unrunnable"] == {
        "resource": "cpus", "needs": "4", "largest": "2",
        "message": "a unit needs 4 cpus; the largest online client offers 2",
    }  # fmt: skip
    assert status["state"] == "running"  # it waits, but not silently
    small = create_job(master.url, job_file(resources={"cpus": 1}), [b"y\n"])
    assert job_status(master.url, small)["unrunnable"] is None


def test_the_architecture_is_the_images(master):
    """The stub image is built for amd64: a job asking arm64 of it is refused; an arm64 client
    gets none of its units, and the job says so."""
    hashes = [put_blob(master.url, b"a\n")]
    assert_error(post_job(master.url, {"job": job_file(resources={"arch": "arm64"}), "chunks": hashes}), 400,
                 "resources.arch is arm64", "built for amd64")  # fmt: skip
    job = create_job(master.url, job_file(), [b"b\n"])
    arm = registered(master.url, "arm", arch="aarch64")
    beat(arm)
    assert arm.lease(1) == []
    why = wait_for(lambda: (s := job_status(master.url, job)["unrunnable"])["resource"] == "arch" and s, 5, "arch")
    assert why["message"] == "its image is amd64; the online clients are arm64"
    assert len(registered(master.url, "x86").lease(1)) == 1
