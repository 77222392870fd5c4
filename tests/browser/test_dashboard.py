"""The dashboard in real headless Chromium against a real master with two real client
daemons running a job in real containers."""

import time
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.cluster import Daemons, submit, wait_for, wait_job

pytestmark = pytest.mark.slow
SCREENSHOTS = Path(__file__).resolve().parent.parent.parent / "docs"

CONFIG = "[server]\nheartbeat_interval = 0.3\nonline_window = 3\n"
FLAGS = ("--reap-interval", "0.2", "--heartbeat-timeout", "4", "--lease-slack", "5")


def shot(page: Any, out: Path, name: str) -> None:
    page.screenshot(path=str(out / f"{name}.png"), full_page=True)


def card(page: Any, name: str) -> int:
    return int(page.inner_text(f"#card-{name} .v"))


def sign_in(page: Any, master: Any) -> None:
    """The page asks for a token; a wrong one is refused on the page; the operator's opens it."""
    page.wait_for_selector("#signin-form", state="visible", timeout=5000)
    assert page.is_hidden("#page-overview")
    page.fill("#token", "not-a-token")
    page.click("#signin-form button")
    page.wait_for_selector("#signin-error:has-text('unknown token')", timeout=5000)
    page.fill("#token", master.token)
    page.click("#signin-form button")
    page.wait_for_selector("#signin-form", state="hidden", timeout=5000)


def test_the_dashboard_asks_for_a_token_and_its_data_needs_one(master_factory: Any, page: Any) -> None:
    master = master_factory()
    volunteer = master.key("volunteer")
    page.goto(f"{master.url}/")
    page.wait_for_selector("#signin-form", state="visible", timeout=5000)
    page.fill("#token", volunteer)  # a volunteer's token opens no dashboard
    page.click("#signin-form button")
    page.wait_for_selector("#signin-error:has-text('may not')", timeout=5000)
    assert page.evaluate("fetch('/api/v1/dashboard').then((r) => r.status)") == 401
    page.fill("#token", master.token)
    page.click("#signin-form button")
    page.wait_for_selector("#conn.on", timeout=5000)
    assert page.evaluate("fetch('/api/v1/dashboard').then((r) => r.status)") == 200
    page.click("#signout")
    page.wait_for_selector("#signin-form", state="visible", timeout=5000)
    assert page.evaluate("fetch('/api/v1/dashboard').then((r) => r.status)") == 401


def test_the_dashboard_follows_two_daemons_live(
    master_factory: Any, daemons: Daemons, probe_image: str, page: Any, tmp_path: Path
) -> None:
    config = tmp_path / "master.toml"
    config.write_text(CONFIG)
    master = master_factory(*FLAGS, "--config", str(config))
    out = tmp_path / "screenshots"
    out.mkdir()
    page.goto(f"{master.url}/")
    sign_in(page, master)
    page.wait_for_selector("#conn.on", timeout=5000)

    one, two = daemons.start(master, "volunteer-one", slots=2), daemons.start(master, "volunteer-two", slots=2)
    page.goto(f"{master.url}/#/clients")
    for daemon in (one, two):  # a new client shows up without a reload
        page.wait_for_selector(f'tr.client[data-name="{daemon.name}"] td.state.online', timeout=3000)

    chunks = [b"sleep 4 unit %d\n" % i for i in range(8)]
    job_spec = {"name": "dashboard-probe", "image": probe_image}
    job_spec["resources"] = {"cpus": 1, "memory": "64MiB", "timeout": "30s"}
    job, _ = submit(master, job_spec, chunks)
    for daemon in (one, two):  # a click opens a client's row to its containers
        client = page.get_attribute(f'tr.client[data-name="{daemon.name}"]', "data-client")
        page.click(f'tr.client[data-name="{daemon.name}"]')
        # its containers, with cpu and memory limits (a unit still fetching has none yet)
        row = f'tr.containers-row[data-client="{client}"] tr.container:not([data-container=""])'
        row += ':has(td.cstate:text-is("running"))'
        page.wait_for_selector(row, timeout=20000)
        limits = page.inner_text(f"{row} >> nth=0 >> td.limits")
        assert "1 cpu" in limits and "64 MiB" in limits, limits
        assert len(page.get_attribute(row, "data-container")) == 12
        assert page.inner_text(f'tr.client[data-name="{daemon.name}"] td.running').split()[-1] != "0"
    # and their use, as docker stats measures it on the volunteer's machine, live
    unknown = "\N{EN DASH}"  # what the page shows for a figure not measured yet
    use = f'tr.containers-row tr.container td.use:has(span.cpu:not(:text-is("{unknown}")))'
    use += f':has(span.mem:not(:text-is("{unknown}")))'
    page.wait_for_selector(use, timeout=15000)
    cpu, memory = page.inner_text(f"{use} >> nth=0").split(" / ")
    assert cpu.endswith("%") and float(cpu[:-1]) >= 0 and memory.endswith(("KiB", "MiB")), (cpu, memory)
    page.screenshot(path=str(SCREENSHOTS / "dashboard.png"))  # the README's picture: clients and their containers
    shot(page, out, "clients")
    shot(page, out, "dashboard-clients")

    page.goto(f"{master.url}/#/")
    page.wait_for_selector("#card-units-done", timeout=3000)
    seen = {card(page, "units-done")}
    wait_for(lambda: seen.add(card(page, "units-done")) or len(seen) >= 3, 40, "the done count to change live")
    page.goto(f"{master.url}/#/jobs")
    page.wait_for_selector(f'tr.job[data-job="{job}"] .bar', timeout=3000)
    shot(page, out, "jobs")
    assert wait_job(master, job, 60)["state"] == "done"
    page.goto(f"{master.url}/#/")
    wait_for(lambda: card(page, "units-done") == len(chunks), 5, "every unit done on the page")
    page.wait_for_selector("#plot-completed canvas", timeout=3000)
    shot(page, out, "overview")
    page.goto(f"{master.url}/#/jobs/{job}")
    page.wait_for_selector("#units tr.unit", timeout=3000)
    assert page.locator("#units tr.unit").count() == len(chunks)
    shot(page, out, "job")

    two.kill()  # no containers run now, so a killed daemon leaves none behind
    page.goto(f"{master.url}/#/clients")
    started = time.monotonic()
    page.wait_for_selector(f'tr.client[data-name="{two.name}"] td.state.offline', timeout=10000)
    assert page.is_visible(f'tr.client[data-name="{one.name}"] td.state.online')
    assert time.monotonic() - started < 10
    shot(page, out, "clients-offline")
