"""``GET /metrics``: the Prometheus text format, for the operator's token or the metrics token."""

import functools
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.api.helpers import registered
from tests.masters import MasterFactory, MasterProcess
from tests.sim import Fleet, SimClient, create_job, job_file, wait_for, wait_job

UNITS = 6
METRICS_TOKEN = "a-scraper-secret-of-the-test"


def scrape(master: MasterProcess, token: str | None) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return requests.get(f"{master.url}/metrics", headers=headers, timeout=30)


def samples(body: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a scrape: (name, labels) -> value."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(body)
        for s in family.samples
    }


def sample(got: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return got[(name, frozenset(labels.items()))]


@pytest.fixture
def worked(master_factory: MasterFactory, tmp_path: Path) -> MasterProcess:
    """A master whose small job three simulated clients have finished."""
    token_file = tmp_path / "metrics.token"
    token_file.write_text(METRICS_TOKEN + "\n")
    master = master_factory("--metrics-token-file", str(token_file), "--reap-interval", "0.2")
    job = create_job(master.url, job_file("metrics"), [b"line %d\n" % i for i in range(UNITS)])
    clients = [SimClient(master.url, name=f"sim-{i}", heartbeat_every=0.2) for i in range(3)]
    with Fleet(clients):
        assert wait_job(master.url, job, timeout=60)["state"] == "done"
    for client in clients:  # each is online, however soon the job was done
        if not client.token:
            client.register()
        client.heartbeat()
    online = ("dockercomp_clients_online", frozenset())  # the master reuses its list of them for a second
    wait_for(lambda: samples(scrape(master, master.token).text)[online] == 3 or None, 5, "three clients online")
    return master


def test_scrape_shows_the_store_and_this_process(worked: MasterProcess) -> None:
    for token in (worked.token, METRICS_TOKEN):
        response = scrape(worked, token)
        assert response.status_code == 200, response.text[:500]
        assert response.headers["Content-Type"].startswith("text/plain")
        got = samples(response.text)
        value = functools.partial(sample, got)
        assert value("dockercomp_jobs", state="done") == 1
        assert value("dockercomp_jobs", state="running") == 0
        # the job is done: no open job's units are left to count
        assert all(value("dockercomp_units", state=s) == 0 for s in ("ready", "running", "done"))
        assert value("dockercomp_attempts_finished_total", outcome="completed") >= UNITS
        assert value("dockercomp_attempts_finished_total", outcome="invalid") == 0
        assert value("dockercomp_clients_online") == 3
        assert value("dockercomp_slots_donated") == 6
        for route in ("lease", "results", "heartbeat"):
            assert value("dockercomp_request_seconds_count", route=route) > 0
        assert value("dockercomp_blob_bytes_served_total") > 0


def test_an_open_job_shows_its_units_and_progress(master_factory: MasterFactory) -> None:
    master = master_factory()
    job = create_job(master.url, job_file("open"), [b"a\n", b"b\n"])
    got = samples(scrape(master, master.token).text)
    assert sample(got, "dockercomp_units", state="ready") == 2
    assert sample(got, "dockercomp_job_progress_ratio", job=job) == 0.0


def test_others_are_refused(master_factory: MasterFactory) -> None:
    master = master_factory()
    client = registered(master.url)
    for token, status in ((None, 401), ("wrong-token", 401), (client.token, 403), (master.key("scientist"), 403)):
        response = scrape(master, token)
        assert response.status_code == status, (token, response.text)
        assert "error" in response.json()


@pytest.mark.parametrize("content", [None, ""])
def test_a_missing_or_empty_metrics_token_file_stops_the_start(tmp_path: Path, content: str | None) -> None:
    path = tmp_path / "metrics.token"
    if content is not None:
        path.write_text(content)
    args = [sys.executable, "-m", "dockercomp", "server", "--port", "0", "--data-dir", str(tmp_path / "data")]
    proc = subprocess.run([*args, "--metrics-token-file", str(path)], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2, proc.stderr
    assert "metrics_token_file" in proc.stderr and str(path) in proc.stderr, proc.stderr
