"""The job page's controls in real headless Chromium against a real master: no client is
connected, so a submitted job stays queued (running, DRMAA2 Queued) for as long as the test
needs. The buttons are the verbs the master lists for the job now; they act through the
session cookie with the X-Dockercomp-Session header, and the page follows."""

from pathlib import Path
from typing import Any

import pytest
import requests

from tests.sim import create_job, job_file, put_blob, wait_for

pytestmark = pytest.mark.slow
TIMEOUT = 5000  # ms, for the page


def verbs(page: Any) -> list[str]:
    """The control buttons the page offers, in order."""
    return page.eval_on_selector_all("#job-actions button[data-verb]", "els => els.map((e) => e.dataset.verb)")


def offers(page: Any, expected: list[str]) -> None:
    wait_for(lambda: verbs(page) == expected, TIMEOUT / 1000, f"the buttons {expected} (the page has {verbs(page)})")


def sign_in(page: Any, master: Any, token: str) -> None:
    page.goto(f"{master.url}/")
    page.wait_for_selector("#signin-form", state="visible", timeout=TIMEOUT)
    page.fill("#token", token)
    page.click("#signin-form button")
    page.wait_for_selector("#signin-form", state="hidden", timeout=TIMEOUT)


def open_job(page: Any, master: Any, job: str) -> None:
    page.goto(f"{master.url}/#/jobs/{job}")
    page.wait_for_selector("#job-states", state="visible", timeout=TIMEOUT)


def shows(page: Any, state: str, drmaa2: str) -> None:
    page.wait_for_selector(f"#job-state:text-is('{state}')", timeout=TIMEOUT)
    page.wait_for_selector(f"#job-drmaa2:text-is('{drmaa2}')", timeout=TIMEOUT)


def status(master: Any, job: str) -> dict[str, Any]:
    response = requests.get(f"{master.api}/jobs/{job}", headers=master.headers, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def test_the_operator_suspends_resumes_and_cancels_a_job_from_its_page(
    master_factory: Any, page: Any, tmp_path: Path
) -> None:
    master = master_factory()
    job = create_job(master.url, job_file("controlled"), [b"unit %d\n" % i for i in range(3)])
    sign_in(page, master, master.token)
    page.wait_for_selector("#conn.on", timeout=TIMEOUT)
    open_job(page, master, job)
    shows(page, "running", "Queued")
    offers(page, ["suspend", "hold", "cancel"])

    page.click("#job-actions button[data-verb=suspend]")
    shows(page, "suspended", "Suspended")
    offers(page, ["resume", "cancel"])
    assert status(master, job)["state"] == "suspended"
    assert page.inner_text("#job-error") == ""
    page.screenshot(path=str(tmp_path / "job-suspended.png"), full_page=True)

    page.click("#job-actions button[data-verb=resume]")
    shows(page, "running", "Queued")
    offers(page, ["suspend", "hold", "cancel"])

    # cancel asks first; "no" keeps the job
    page.click("#job-actions button[data-verb=cancel]")
    page.wait_for_selector("#job-confirm", state="visible", timeout=TIMEOUT)
    assert page.is_disabled("#job-actions button[data-verb=suspend]")
    page.click("#job-confirm button[data-confirm=no]")
    page.wait_for_selector("#job-confirm", state="detached", timeout=TIMEOUT)
    assert status(master, job)["state"] == "running"
    page.click("#job-actions button[data-verb=cancel]")
    page.click("#job-confirm button[data-confirm=yes]")
    shows(page, "cancelled", "Failed")
    offers(page, [])
    assert page.locator("#job-actions button").count() == 0
    assert status(master, job)["state"] == "cancelled"
    page.goto(f"{master.url}/#/jobs")  # the jobs list follows too
    page.wait_for_selector(f'tr.job[data-job="{job}"] td:text-is("cancelled")', timeout=TIMEOUT)


def test_a_refused_control_shows_the_masters_message(master_factory: Any, browser: Any, tmp_path: Path) -> None:
    """A page whose buttons are out of date (here: its live feed is cut off, and the job is
    cancelled behind its back) shows the master's 409 as it is, then the job as it is now."""
    master = master_factory()
    job = create_job(master.url, job_file("stale"), [b"one\n"])
    context = browser.new_context()
    try:
        page = context.new_page()
        page.route("**/api/v1/events", lambda route: route.abort())
        sign_in(page, master, master.token)
        open_job(page, master, job)
        offers(page, ["suspend", "hold", "cancel"])
        response = requests.post(f"{master.api}/jobs/{job}/cancel", headers=master.headers, timeout=10)
        assert response.status_code == 200, response.text
        page.click("#job-actions button[data-verb=suspend]")
        page.wait_for_selector(f"#job-error:has-text('job {job} is cancelled')", timeout=TIMEOUT)
        assert "cannot be" in page.inner_text("#job-error")
        shows(page, "cancelled", "Failed")
        offers(page, [])
    finally:
        context.close()


def test_a_scientist_sees_and_controls_only_their_own_jobs(master_factory: Any, page: Any) -> None:
    master = master_factory()
    alice = master.key("scientist", "alice")
    blob = put_blob(master.url, b"alice's input\n")
    response = requests.post(
        f"{master.api}/jobs", json={"job": job_file("alices"), "chunks": [blob]},
        headers={"Authorization": f"Bearer {alice}"}, timeout=10,
    )  # fmt: skip
    assert response.status_code == 201, response.text
    mine = response.json()["job"]
    operators = create_job(master.url, job_file("operators"), [b"the operator's\n"])

    sign_in(page, master, alice)
    page.wait_for_selector("#conn.on", timeout=TIMEOUT)
    assert page.inner_text("#viewer") == "alice (scientist)"
    assert page.is_hidden('nav a[data-page="clients"]')  # the clients are the operator's
    page.goto(f"{master.url}/#/jobs")
    page.wait_for_selector(f'tr.job[data-job="{mine}"]', timeout=TIMEOUT)
    assert page.locator("tr.job").count() == 1

    open_job(page, master, mine)
    shows(page, "running", "Queued")
    assert page.inner_text("#job-owner") == "alice"
    offers(page, ["suspend", "hold", "cancel"])
    page.click("#job-actions button[data-verb=hold]")
    shows(page, "held", "QueuedHeld")
    offers(page, ["release", "cancel"])
    assert status(master, mine)["state"] == "held"

    page.goto(f"{master.url}/#/jobs/{operators}")  # another's job is no job of hers
    page.wait_for_selector("#job-title:has-text('no job')", timeout=TIMEOUT)
    assert page.is_hidden("#job-states") and verbs(page) == []
    assert status(master, operators)["state"] == "running"
