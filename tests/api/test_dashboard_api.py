"""The dashboard's JSON API and its live feed, against a real master with simulated clients."""

import json
import time
from typing import Any

import requests

from tests.sim import SimClient, create_job, job_file, wait_for

STATES = {"ready", "running", "done", "failed", "cancelled", "suspended"}


def get(master: Any, path: str, **params: Any) -> Any:
    response = requests.get(f"{master.api}{path}", params=params, timeout=10, headers=master.headers)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    return response.json()


def busy_cluster(master: Any) -> tuple[SimClient, SimClient, str, list[dict[str, Any]]]:
    """Two clients; a job of four units, one unit done, two running in the first client's
    heartbeat with their containers, one unit errored."""
    a, b = SimClient(master.url, "alpha"), SimClient(master.url, "beta")
    a.register()
    b.register()
    job = create_job(master.url, job_file("dash", resources={"cpus": 1, "memory": "64MiB"}), [b"x\n"] * 4)
    grants = a.lease(4, cpus=4.0, memory=1 << 30)
    assert len(grants) == 4
    a.upload([a.report(grants[0])])
    a.upload([{"attempt": grants[1]["attempt"], "status": "errored", "error": "exit_nonzero", "exit_code": 1}])
    a.heartbeat(grants[2:])
    b.heartbeat()
    return a, b, job, grants


def test_the_page_and_its_assets_are_served(master: Any) -> None:
    page = requests.get(f"{master.url}/", timeout=10)
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    assert "/dashboard/app.js" in page.text and "uPlot.iife.min.js" in page.text
    for asset in ("app.js", "style.css", "vendor/uPlot.iife.min.js", "vendor/uPlot.min.css", "vendor/uPlot.LICENSE"):
        response = requests.get(f"{master.url}/dashboard/{asset}", timeout=10)
        assert response.status_code == 200, asset
        assert len(response.content) > 100, asset
    assert requests.get(f"{master.url}/dashboard/../server/app.py", timeout=10).status_code in (403, 404)
    assert requests.get(f"{master.url}/dashboard/nothing.js", timeout=10).status_code == 404


def test_overview_counts_clients_slots_units_and_the_last_hour(master: Any) -> None:
    busy_cluster(master)
    body = get(master, "/dashboard/overview")
    o = body["overview"]
    assert (o["clients_online"], o["clients_offline"]) == (2, 0)
    assert (o["slots"], o["busy"], o["containers"]) == (4, 2, 2)
    assert set(o["units"]) >= STATES
    assert o["units"]["done"] == 1 and o["units"]["running"] == 2 and o["units"]["ready"] == 1
    assert o["completed_per_minute"] == 1
    assert o["errors_hour"] == 1 and o["invalid_results_hour"] == 0 and o["integrity_errors_hour"] == 0
    series = body["series"]
    assert len(series["t"]) == len(series["completed"]) == len(series["active_clients"]) == 60
    assert series["completed"][-1] == 1 and series["active_clients"][-1] == 1
    assert series["t"] == sorted(series["t"]) and series["t"][-1] <= time.time()


def test_clients_carry_host_facts_and_their_containers_with_limits(master: Any) -> None:
    _, _, job, grants = busy_cluster(master)
    body = get(master, "/dashboard/clients")
    assert body["total"] == 2
    alpha, beta = body["clients"]
    assert (alpha["name"], beta["name"]) == ("alpha", "beta")
    assert alpha["online"] and alpha["host"]["cores"] == 2 and alpha["host"]["os"] == "linux"
    assert alpha["valid"] == 1 and alpha["errors"] == 1 and 0 <= alpha["reliability"] <= 1
    assert [c["container"] for c in alpha["containers"]] == [g["attempt"][:12] for g in grants[2:]]
    container = alpha["containers"][0]
    assert (container["job"], container["cpus"], container["memory"]) == (job, 1.0, 64 << 20)
    assert len(container["container"]) == 12 and container["unit"] == grants[2]["unit"]
    assert beta["containers"] == []


def test_clients_are_filtered_sorted_and_paginated(master: Any) -> None:
    for name in ("c", "a", "b"):
        SimClient(master.url, name).register()
    assert [c["name"] for c in get(master, "/dashboard/clients")["clients"]] == ["a", "b", "c"]
    page = get(master, "/dashboard/clients", offset=1, limit=1)
    assert page["total"] == 3 and [c["name"] for c in page["clients"]] == ["b"]
    assert [c["name"] for c in get(master, "/dashboard/clients", sort="last_seen")["clients"]] == ["b", "a", "c"]
    assert get(master, "/dashboard/clients", state="offline") == {"total": 0, "clients": []}
    assert get(master, "/dashboard/clients", state="online")["total"] == 3
    for bad in ({"state": "asleep"}, {"sort": "shoe size"}, {"limit": "0"}, {"offset": "-1"}):
        response = requests.get(f"{master.api}/dashboard/clients", params=bad, timeout=10, headers=master.headers)
        assert response.status_code == 400, bad
        assert "error" in response.json()


def test_jobs_have_counts_per_state_throughput_and_eta(master: Any) -> None:
    _, _, job, _ = busy_cluster(master)
    (row,) = get(master, "/dashboard/jobs")["jobs"]
    assert row["id"] == job and row["name"] == "dash" and row["state"] == "running"
    assert row["counts"]["done"] == 1 and row["counts"]["running"] == 2 and row["counts"]["ready"] == 1
    assert row["per_minute"] > 0 and row["eta"] > 0


def test_a_job_page_lists_units_with_attempts_clients_and_timings(master: Any) -> None:
    a, _, job, grants = busy_cluster(master)
    body = get(master, f"/dashboard/jobs/{job}")
    assert body["job"]["id"] == job and body["job"]["counts"]["done"] == 1
    units = body["units"]
    assert [u["index"] for u in units] == [0, 1, 2, 3]
    done = units[[g["unit"] for g in grants].index(grants[0]["unit"])]
    assert done["state"] == "done" and done["attempts"] == 1 and done["clients"] == [a.id]
    assert done["first_leased"] <= done["last_finished"]
    assert done["history"][0]["state"] == "succeeded" and done["history"][0]["validity"] == "valid"
    assert get(master, f"/dashboard/jobs/{job}", offset=3, limit=1)["units"][0]["index"] == 3
    missing = requests.get(f"{master.api}/dashboard/jobs/nosuchjob", timeout=10, headers=master.headers)
    assert missing.status_code == 404 and "error" in missing.json()


def test_the_whole_snapshot_in_one_call(master: Any) -> None:
    busy_cluster(master)
    body = get(master, "/dashboard")
    assert set(body) >= {"now", "overview", "series", "clients", "jobs", "online_window"}
    assert len(body["clients"]) == 2 and len(body["jobs"]) == 1


def events(master: Any, timeout: float = 10.0) -> Any:
    """Yield each ``snapshot`` event of the live feed, decoded."""
    with requests.get(f"{master.api}/events", stream=True, timeout=timeout, headers=master.headers) as response:
        assert response.status_code == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        event = ""
        for line in response.iter_lines(decode_unicode=True):
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: ") and event == "snapshot":
                yield json.loads(line[6:])


def test_the_event_stream_pushes_a_new_client_and_a_finished_unit_within_two_seconds(master: Any) -> None:
    stream = events(master)
    first = next(stream)
    assert first["clients"] == [] and first["overview"]["clients_online"] == 0
    client = SimClient(master.url, "newcomer")
    client.register()
    started = time.monotonic()
    snap = next(stream)
    assert time.monotonic() - started < 2.0
    assert [c["name"] for c in snap["clients"]] == ["newcomer"]
    create_job(master.url, job_file("live"), [b"a\n"])
    (grant,) = client.lease(1)
    client.heartbeat([grant])
    snap = wait_for(lambda: (s := next(stream)) and s["clients"][0]["containers"] and s, 5, "the container")
    assert snap["clients"][0]["containers"][0]["container"] == grant["attempt"][:12]
    client.upload([client.report(grant)])
    started = time.monotonic()
    snap = wait_for(lambda: (s := next(stream)) and s["overview"]["units"]["done"] == 1 and s, 5, "the unit done")
    assert time.monotonic() - started < 2.0
    stream.close()


def test_two_hundred_clients_load_quickly(master: Any) -> None:
    for i in range(200):
        SimClient(master.url, f"sim-{i:03d}").register()
    started = time.monotonic()
    page = requests.get(f"{master.url}/", timeout=10)
    body = get(master, "/dashboard")
    assert page.status_code == 200 and len(body["clients"]) == 200
    assert time.monotonic() - started < 1.0
