"""The dashboard's JSON API and its live feed, against a real master with simulated clients."""

import json
import random
import time
from typing import Any

import requests

from dockercomp.server.dashboard import KEYED, ClientView, Feed, Subscriber, apply, diff
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
    assert set(body) >= {"now", "overview", "series", "clients", "jobs", "online_window", "total", "view"}
    assert len(body["clients"]) == 2 and len(body["jobs"]) == 1 and body["total"] == 2
    assert body["view"] == {"offset": 0, "limit": 50, "sort": "name", "order": "asc", "state": "all", "q": "",
                            "expand": []}  # fmt: skip


def test_the_snapshot_pages_sorts_and_filters_the_clients_and_opens_rows(master: Any) -> None:
    a, b, _, grants = busy_cluster(master)
    for name in ("gamma", "Delta", "epsilon"):
        SimClient(master.url, name).register()
    names = lambda **q: [c["name"] for c in get(master, "/dashboard", **q)["clients"]]  # noqa: E731
    assert names() == ["alpha", "beta", "Delta", "epsilon", "gamma"]  # by name, whatever the case
    assert names(order="desc") == ["gamma", "epsilon", "Delta", "beta", "alpha"]
    assert names(sort="busy", order="desc")[0] == "alpha" and names(sort="busy")[-1] == "alpha"
    assert names(sort="errors", order="desc") == ["alpha", "beta", "Delta", "epsilon", "gamma"]  # ties by name
    assert names(sort="last_seen", order="desc")[0] == "epsilon"  # the newest heartbeat
    body = get(master, "/dashboard", offset=1, limit=2)
    assert body["total"] == 5 and [c["name"] for c in body["clients"]] == ["beta", "Delta"]
    assert get(master, "/dashboard", offset=10)["clients"] == [] and get(master, "/dashboard", offset=10)["total"] == 5
    assert names(q="ELT") == ["Delta"] and names(q=a.id[:12]) == ["alpha"]
    assert names(state="online") == names() and get(master, "/dashboard", state="offline")["total"] == 0
    assert get(master, "/dashboard", state="quarantined")["total"] == 0
    rows = get(master, "/dashboard")["clients"]
    assert all("containers" not in c for c in rows)  # rows stay small: a count only
    assert [c["running"] for c in rows[:2]] == [2, 0]
    opened = get(master, "/dashboard", expand=f"{a.id},{b.id}")["clients"]
    assert [len(c["containers"]) for c in opened[:2]] == [2, 0] and "containers" not in opened[2]
    assert [c["container"] for c in opened[0]["containers"]] == [g["attempt"][:12] for g in grants[2:]]
    assert set(opened[0]["containers"][0]) >= {"container", "unit", "job", "image", "state", "cpu_percent",
                                               "memory_usage", "cpus", "memory"}  # fmt: skip


BAD_VIEWS = [
    ({"limit": "0"}, "limit must be an integer from 1 to 200"),
    ({"limit": "201"}, "limit must be an integer from 1 to 200"),
    ({"offset": "-1"}, "offset must be an integer"),
    ({"offset": "ten"}, "offset must be an integer"),
    ({"sort": "shoe size"}, "sort must be one of name, state, busy"),
    ({"order": "up"}, "order must be asc or desc"),
    ({"state": "asleep"}, "state must be one of all, online, offline, quarantined"),
    ({"q": "x" * 65}, "q must be at most 64"),
    ({"q": "a\x00b"}, "q must be at most 64 printable"),
    ({"expand": ",".join(f"c{i}" for i in range(21))}, "expand must be at most 20 client ids"),
    ({"expand": "../etc"}, "expand must be at most 20 client ids"),
    ({"page": "2"}, "unknown parameter 'page'"),
    ([("limit", "5"), ("limit", "6")], "give limit once"),
]


def test_a_bad_view_is_refused_with_what_to_fix(master: Any) -> None:
    for path in ("/dashboard", "/events"):
        for params, message in BAD_VIEWS:
            response = requests.get(f"{master.api}{path}", params=params, timeout=10, headers=master.headers)
            assert response.status_code == 400, (path, params, response.text)
            assert message in response.json()["error"], (path, params, response.json())


def events(master: Any, timeout: float = 10.0, sizes: list[tuple[str, int]] | None = None, **view: Any) -> Any:
    """Yield the page's picture after each event of the live feed: a ``snapshot`` as it is, a
    ``patch`` applied to the picture before (as dashboard/app.js does); ``sizes`` gets each
    event's name and the bytes of its data."""
    with requests.get(f"{master.api}/events", params=view, stream=True, timeout=timeout, headers=master.headers) as r:
        assert r.status_code == 200
        assert r.headers["Content-Type"].startswith("text/event-stream")
        event, snap = "", None
        for line in r.iter_lines(decode_unicode=True):
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                if sizes is not None:
                    sizes.append((event, len(line[6:].encode())))
                if event == "snapshot":
                    snap = json.loads(line[6:])
                else:
                    assert event == "patch" and snap is not None, event
                    snap = apply(snap, json.loads(line[6:]))
                yield snap


def test_the_event_stream_pushes_a_new_client_and_a_finished_unit_within_two_seconds(master: Any) -> None:
    stream = events(master)
    first = next(stream)
    assert first["clients"] == [] and first["overview"]["clients_online"] == 0 and first["total"] == 0
    client = SimClient(master.url, "newcomer")
    client.register()
    started = time.monotonic()
    snap = wait_for(lambda: (s := next(stream)) and s["clients"] and s, 2, "the newcomer")
    assert time.monotonic() - started < 2.0
    assert [c["name"] for c in snap["clients"]] == ["newcomer"] and snap["total"] == 1
    stream.close()
    opened = events(master, expand=client.id)
    assert next(opened)["clients"][0]["containers"] == []
    create_job(master.url, job_file("live"), [b"a\n"])
    (grant,) = client.lease(1)
    client.heartbeat([grant])
    snap = wait_for(lambda: (s := next(opened)) and s["clients"][0]["containers"] and s, 5, "the container")
    assert snap["clients"][0]["containers"][0]["container"] == grant["attempt"][:12]
    assert snap["clients"][0]["running"] == 1
    client.upload([client.report(grant)])
    started = time.monotonic()
    snap = wait_for(lambda: (s := next(opened)) and s["overview"]["units"]["done"] == 1 and s, 5, "the unit done")
    assert time.monotonic() - started < 2.0
    opened.close()


def test_the_patches_add_up_to_the_snapshot_and_are_small(master: Any) -> None:
    """Patches applied in order give what a fresh snapshot of the same view shows, once the
    master is quiet; and they carry only what changed."""
    clients = [SimClient(master.url, f"p-{i:02d}") for i in range(30)]
    for c in clients:
        c.register()
    view = {"limit": "10", "sort": "last_seen", "order": "desc", "q": "p-"}
    sizes: list[tuple[str, int]] = []
    stream = events(master, sizes=sizes, **view)
    next(stream)
    create_job(master.url, job_file("patched"), [b"x\n", b"y\n"])
    for round_ in range(3):  # heartbeats reorder the page; a lease and a result change counts
        for c in clients[round_ * 7 : round_ * 7 + 7]:
            c.heartbeat()
        if round_ == 1:
            (grant,) = clients[0].lease(1)
            clients[0].upload([clients[0].report(grant)])
        time.sleep(1.2)
    SimClient(master.url, "p-new").register()
    time.sleep(1.5)
    fresh = get(master, "/dashboard", **view)  # the master is quiet now: only its clock moves
    snap = wait_for(lambda: (s := next(stream)) and s["now"] >= fresh["now"] and s, 5, "the feed to pass the snapshot")
    for key in ("clients", "total", "jobs", "overview", "view"):
        assert snap[key] == fresh[key], key
    assert fresh["total"] == 31 and fresh["clients"][0]["name"] == "p-new"
    patches = [n for event, n in sizes if event == "patch"]
    assert sizes[0][0] == "snapshot" and len(patches) >= 3, sizes
    assert min(patches) < 200 < sizes[0][1]  # a second when only the clock moved: a few bytes
    stream.close()


def test_diff_and_apply_agree_on_random_changes() -> None:
    """Any sequence of snapshots: each patch turns the one before into the next; an equal one
    needs no patch; rows come and go, change and move."""
    rng = random.Random(7)

    def snap() -> dict[str, Any]:
        ids = rng.sample([f"c{i}" for i in range(12)], rng.randint(0, 8))
        s: dict[str, Any] = {
            "now": rng.random(),
            "overview": {"online": rng.randint(0, 3)},
            "clients": [{"id": i, "busy": rng.randint(0, 2), "containers": [{"cpu": rng.randint(0, 2)}]} for i in ids],
            "jobs": [{"id": j, "done": rng.randint(0, 1)} for j in rng.sample(["j1", "j2", "j3"], rng.randint(0, 3))],
        }
        if rng.random() < 0.3:
            s["extra"] = rng.randint(0, 1)
        return s

    old = snap()
    assert diff(old, old) == {} and diff(old, json.loads(json.dumps(old))) == {}
    kinds: set[str] = set()
    for _ in range(500):
        new = snap() if rng.random() < 0.7 else json.loads(json.dumps(old))
        patch = diff(old, new)
        assert apply(old, patch) == new
        assert json.loads(json.dumps(patch)) == patch  # it goes as JSON
        kinds |= set(patch) | {k for part in KEYED if part in patch for k in patch[part]}
        for part in KEYED:  # only rows that are new or changed travel
            before = {r["id"]: r for r in old[part]}
            assert all(before.get(r["id"]) != r for r in patch.get(part, {}).get("rows", []))
        old = new
    assert kinds == {"set", "unset", "clients", "jobs", "rows", "order"}


def test_two_hundred_clients_load_quickly(master: Any) -> None:
    for i in range(200):
        SimClient(master.url, f"sim-{i:03d}").register()
    started = time.monotonic()
    page = requests.get(f"{master.url}/", timeout=10)
    body = get(master, "/dashboard", limit=200)
    assert page.status_code == 200 and len(body["clients"]) == 200 and body["total"] == 200
    assert len(get(master, "/dashboard")["clients"]) == 50  # a page by default
    assert time.monotonic() - started < 1.0


def test_the_feed_sends_a_patch_only_when_smaller_and_a_snapshot_to_a_browser_behind() -> None:
    sub = Subscriber(None, ClientView())
    rows = [{"id": f"c{i}", "busy": 0} for i in range(20)]
    first = {"now": 1.0, "clients": rows, "jobs": []}
    Feed._send(sub, first)
    Feed._send(sub, first)  # nothing changed: nothing sent
    Feed._send(sub, first | {"now": 2.0})
    Feed._send(sub, {"now": 3.0, "clients": [{"id": "x", "busy": 1}], "jobs": []})  # a patch would be bigger
    messages = [sub.queue.get_nowait() for _ in range(sub.queue.qsize())]
    assert [m.split("\n")[0] for m in messages] == ["event: snapshot", "event: patch", "event: snapshot"]
    assert json.loads(messages[1].split("data: ", 1)[1]) == {"set": {"now": 2.0}}
    for now in range(4, 9):  # the browser reads nothing: its backlog is replaced by the whole picture
        Feed._send(sub, first | {"now": float(now)})
    messages = [sub.queue.get_nowait() for _ in range(sub.queue.qsize())]
    assert messages[0].startswith("event: snapshot") and json.loads(messages[0].split("data: ", 1)[1])["now"] == 8.0
    state = json.loads(messages[0].split("data: ", 1)[1])
    for m in messages[1:]:
        state = apply(state, json.loads(m.split("data: ", 1)[1]))
    assert state == sub.sent
