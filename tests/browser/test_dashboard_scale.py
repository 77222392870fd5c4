"""The dashboard with a few thousand simulated clients in real headless Chromium against a
real master: the master pages, sorts and filters the clients (the page shows 50 of them and the
total), a row opens to its containers with their live cpu and memory use, and no message of
the live stream weighs 50 KB."""

import json
import random
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests

from dockercomp.server.dashboard import diff
from tests.sim import SimClient, wait_for

pytestmark = pytest.mark.slow
CLIENTS = 3000
TIMEOUT = 10000  # ms, for the page
MAX_MESSAGE = 50 * 1024


def box(client: SimClient, n: int, cpu: float) -> list[dict[str, Any]]:
    return [
        {"container": f"{client.id[:8]}{k:04d}", "attempt": f"{client.id}{k}", "unit": f"unit-{k}", "job": "scale",
         "image": "dockercomp/sim@sha256:" + "ab" * 32, "cpus": 1.0, "memory": 64 << 20, "started_at": time.time(),
         "cpu_percent": cpu, "memory_usage": (10 + k) << 20}
        for k in range(n)
    ]  # fmt: skip


def beat(client: SimClient, busy: int, cpu: float) -> None:
    client.call("/clients/heartbeat", {"slots": 2, "busy": busy, "containers": box(client, busy, cpu)})


def volunteers(master: Any) -> list[SimClient]:
    """CLIENTS clients named vol-0000 ...; client i runs i % 3 containers."""

    def one(i: int) -> SimClient:
        client = SimClient(master.url, f"vol-{i:04d}")
        client.slots = 2
        client.register()
        beat(client, i % 3, 12.5)
        return client

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(one, range(CLIENTS)))


def names(page: Any) -> list[str]:
    return page.eval_on_selector_all("#clients > tbody > tr.client", "els => els.map((e) => e.dataset.name)")


def shows(page: Any, first: str, count: str) -> None:
    page.wait_for_selector(f'#clients > tbody > tr.client:first-child[data-name="{first}"]', timeout=TIMEOUT)
    page.wait_for_selector(f"#client-count:text-is('{count}')", timeout=TIMEOUT)


def served(master: Any, **view: Any) -> list[str]:
    response = requests.get(f"{master.api}/dashboard", params=view, headers=master.headers, timeout=30)
    assert response.status_code == 200, response.text
    return [c["name"] for c in response.json()["clients"]]


def test_the_dashboard_pages_sorts_filters_and_opens_thousands_of_clients(master_factory: Any, page: Any) -> None:
    master = master_factory("--register-rate", "0", "--register-burst", str(CLIENTS + 100))
    clients = volunteers(master)
    page.context.add_cookies([{"name": "dockercomp_token", "value": master.token, "url": master.url}])
    page.goto(f"{master.url}/#/clients")
    shows(page, "vol-0000", f"{CLIENTS} client(s)")
    assert names(page) == [f"vol-{i:04d}" for i in range(50)]
    assert page.inner_text("#page-no") == f"page 1 / {CLIENTS // 50}"

    page.click('#clients th[data-sort="name"]')  # the name again: Z to A
    shows(page, f"vol-{CLIENTS - 1:04d}", f"{CLIENTS} client(s)")
    page.click('#clients th[data-sort="busy"]')  # the busiest first, ties by name
    shows(page, "vol-0002", f"{CLIENTS} client(s)")
    assert names(page) == served(master, sort="busy", order="desc")
    assert names(page)[:3] == ["vol-0002", "vol-0005", "vol-0008"]
    assert page.is_visible('#clients th.sorted.desc[data-sort="busy"]')

    page.click('#clients th[data-sort="name"]')
    shows(page, "vol-0000", f"{CLIENTS} client(s)")
    page.fill("#client-filter", "vol-012")
    shows(page, "vol-0120", "10 client(s)")
    assert names(page) == [f"vol-{i:04d}" for i in range(120, 130)] and page.inner_text("#page-no") == "page 1 / 1"
    page.select_option("#client-state", "offline")
    page.wait_for_selector("#client-count:text-is('0 client(s)')", timeout=TIMEOUT)
    assert names(page) == []
    page.select_option("#client-state", "all")
    page.fill("#client-filter", "")
    shows(page, "vol-0000", f"{CLIENTS} client(s)")

    page.click("#next")
    shows(page, "vol-0050", f"{CLIENTS} client(s)")
    assert page.inner_text("#page-no") == f"page 2 / {CLIENTS // 50}"
    page.click("#prev")
    shows(page, "vol-0000", f"{CLIENTS} client(s)")
    page.click("#next")
    shows(page, "vol-0050", f"{CLIENTS} client(s)")

    # a row opens to its containers, and their use follows the heartbeats
    busy = clients[53]  # 53 % 3 == 2 containers
    page.click(f'tr.client[data-name="{busy.name}"]')
    opened = f'tr.containers-row[data-client="{busy.id}"] tr.container'
    page.wait_for_selector(opened, timeout=TIMEOUT)
    assert page.locator(opened).count() == 2
    assert page.inner_text(f"{opened} >> nth=0 >> td.use") == "12.5% / 10 MiB"
    assert "1 cpu / 64 MiB" in page.inner_text(f"{opened} >> nth=1 >> td.limits")
    beat(busy, 2, 87.5)
    use = lambda: page.inner_text(f"{opened} >> nth=0 >> td.use")  # noqa: E731
    wait_for(lambda: use() == "87.5% / 10 MiB", 5, f"the new cpu use on the page (it shows {use()})")
    assert page.locator("tr.containers-row").count() == 1  # only the row opened carries its containers

    for client in random.Random(3).sample(clients[50:100], 20):  # some of the page heartbeat: patches
        beat(client, 1, 50.0)
    wait_for(lambda: page.evaluate("window.dockercomp.feed.patches") >= 2, 10, "patches to the page")
    feed = page.evaluate("window.dockercomp.feed")
    assert 0 < feed["maxBytes"] < MAX_MESSAGE, feed
    assert feed["snapshots"] >= 1 and feed["patches"] >= 2

    # the page's picture, patched second by second, is what the master serves for its view now
    view = page.evaluate("window.dockercomp.view()")
    query = {k: ",".join(v) if isinstance(v, list) else v for k, v in view.items()}
    fresh = requests.get(f"{master.api}/dashboard", params=query, headers=master.headers, timeout=30).json()
    wait_for(lambda: page.evaluate("window.dockercomp.snap().now") >= fresh["now"], 5, "the feed after the snapshot")
    mine = page.evaluate("window.dockercomp.snap()")
    for key in ("clients", "total", "jobs", "overview", "view"):
        assert mine[key] == fresh[key], key
    assert len(fresh["clients"]) == 50 and fresh["clients"][3]["name"] == busy.name


def test_the_page_applies_the_masters_patches_as_the_master_makes_them(master_factory: Any, page: Any) -> None:
    """dashboard/app.js's applyPatch against server/dashboard.py's diff, on random snapshots."""
    master = master_factory()
    page.goto(f"{master.url}/")
    page.wait_for_selector("#signin-form", state="visible", timeout=TIMEOUT)
    rng = random.Random(11)

    def snap() -> dict[str, Any]:
        ids = rng.sample([f"c{i}" for i in range(10)], rng.randint(0, 7))
        s: dict[str, Any] = {
            "now": rng.random(),
            "total": rng.randint(0, 9),
            "clients": [{"id": i, "cpu": rng.randint(0, 2), "containers": [rng.randint(0, 1)]} for i in ids],
            "jobs": [{"id": j, "n": rng.randint(0, 1)} for j in rng.sample(["a", "b", "c"], rng.randint(0, 3))],
        }
        if rng.random() < 0.3:
            s["extra"] = {"x": rng.randint(0, 1)}
        return s

    cases = []
    old = snap()
    for _ in range(200):
        new = snap()
        cases.append([old, diff(old, new), new])
        old = new
    applied = page.evaluate("(cases) => cases.map(([o, p]) => window.dockercomp.apply(o, p))", cases)
    assert applied == [new for _, _, new in cases]
    assert json.dumps(applied) == json.dumps([new for _, _, new in cases])  # the order of the rows too
