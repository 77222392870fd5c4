"""The dashboard at 10,000 volunteers: what one update of its live stream weighs, how soon
Chromium draws the clients table, and what the master's Feed spends per second.

Starts one real master (SQLite store, 127.0.0.1, open enrollment, no registration limit, as
bench/scale.py does), and in a process of its own registers ``--clients`` simulated clients
(bench/scale.py's ``Conn``: msgpack over one keep-alive connection each), each heartbeating
once with one or two running containers (fake ones: the master lists them and orders their
abort, which the simulation ignores). Then for ``--duration`` seconds ``--beats`` heartbeats a
second go out from random clients with new cpu and memory use, while this process reads two
streams of /api/v1/events: the page's default view (the first 50 clients by name) and a busy
one (sorted by last heartbeat, newest first, so the page changes every second, with five rows
open to their containers). Meanwhile Chromium (/usr/bin/chromium via playwright, never a
downloaded browser) opens the page signed in (the session cookie) ``--paints`` times, each in a
fresh context, and the time from navigation to the clients table drawn is read from the page's
own ``performance.mark("clients-drawn")`` (dashboard/app.js).

    .venv/bin/python bench/dashboard.py [--clients 10000] [--duration 30] [--beats 200] [--quick]

Recorded: the bytes of the first (full) snapshot and of each later update (patch, or a full
snapshot where that is smaller), median and max per stream; first paint median and max; the
Feed's store read (one whole reading, and the store's ``list_clients`` within it) and its
paging of every subscriber, as the snapshot's ``feed`` reports them each second, median and max. Writes
bench/results/dashboard.json; the last stdout line holds the figures.
"""

import argparse
import asyncio
import http.client
import json
import multiprocessing
import os
import random
import statistics
import threading
import time
from collections.abc import Sequence
from typing import Any

from common import API, BENCH_IMAGE, Master, emit, load_average, record, say, vm_rss, write_result
from scale import REGISTERING, Conn

TARGET_FIRST_PAINT_MS = 1000.0
TARGET_UPDATE_BYTES = 50 * 1024
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
BUSY_VIEW = "sort=last_seen&order=desc"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=10_000, help="simulated clients (default 10000)")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of updates measured (default 30)")
    parser.add_argument("--beats", type=int, default=200, help="heartbeats a second while measuring (default 200)")
    parser.add_argument("--paints", type=int, default=5, help="page loads in Chromium (default 5)")
    parser.add_argument("--output", default="", help="result file (default bench/results/dashboard.json)")
    parser.add_argument(
        "--quick", action="store_true", help="a smoke run: 300 clients, 4 s, one page load, nothing written"
    )
    args = parser.parse_args()
    if args.quick:
        args.clients, args.duration, args.beats, args.paints = 300, 4.0, 50, 1
    if args.clients < 60 or args.duration <= 0 or args.beats < 0 or args.paints < 0:
        parser.error("--clients must be at least 60, --duration above 0, --beats and --paints not negative")
    params = {"clients": args.clients, "duration_s": args.duration, "beats_per_s": args.beats, "paints": args.paints}
    say(f"dashboard: {args.clients} clients, {args.duration:.0f} s at {args.beats} heartbeats/s, {args.paints} paints")
    run = run_once(params)
    figures = {k: run[k] for k in FIGURES}
    say(
        f"  first paint median {run['first_paint_median_ms']} ms max {run['first_paint_max_ms']} ms;"
        f" full snapshot {run['full_bytes']} B; updates median {run['update_median_bytes']} B"
        f" max {run['update_max_bytes']} B (busy view: {run['busy_update_median_bytes']} B /"
        f" {run['busy_update_max_bytes']} B); feed read median {run['feed_read_median_ms']} ms"
        f" max {run['feed_read_max_ms']} ms (list_clients {run['feed_list_clients_median_ms']} ms),"
        f" paging {run['feed_page_median_ms']} ms"
    )
    if not args.quick:
        targets = {"first_paint_ms": TARGET_FIRST_PAINT_MS, "update_bytes": TARGET_UPDATE_BYTES}
        write_result("dashboard", record("dashboard", params, [run], figures, targets=targets), args.output)
    emit(figures)
    return 0


FIGURES = (
    "first_paint_median_ms", "first_paint_max_ms", "full_bytes", "update_median_bytes", "update_max_bytes",
    "busy_full_bytes", "busy_update_median_bytes", "busy_update_max_bytes", "feed_read_median_ms",
    "feed_read_max_ms", "feed_list_clients_median_ms", "feed_page_median_ms", "feed_page_max_ms", "updates",
)  # fmt: skip


def run_once(params: dict[str, Any]) -> dict[str, Any]:
    n = params["clients"]
    flags = ["--open-enrollment", "--register-rate", "0", "--register-burst", str(n + 100)]
    with Master(flags=flags) as master:
        ctx = multiprocessing.get_context("spawn")
        queue, go, stop = ctx.Queue(), ctx.Event(), ctx.Event()
        sim = ctx.Process(
            target=clients_process, args=(master.port, n, params["beats_per_s"], go, stop, queue), daemon=True
        )
        started = time.perf_counter()
        sim.start()
        if (msg := queue.get(timeout=1800)) != "ready":
            raise RuntimeError(f"the simulated clients failed: {msg}")
        say(f"  {n} clients registered with containers in {time.perf_counter() - started:.1f} s")
        streams = [Stream(master, ""), Stream(master, BUSY_VIEW)]
        for s in streams:
            s.start()
        wait_first(streams)
        expand = ",".join(c["id"] for c in streams[1].snap["clients"][:5])
        streams.append(Stream(master, f"{BUSY_VIEW}&expand={expand}"))
        streams[-1].start()
        wait_first(streams)
        go.set()
        t0 = time.perf_counter()
        try:
            paints = first_paints(master, params["paints"])
            time.sleep(max(0.0, params["duration_s"] - (time.perf_counter() - t0)))
        finally:
            stop.set()
        report = queue.get(timeout=300)
        if not isinstance(report, dict):
            raise RuntimeError(f"the simulated clients failed: {report}")
        sim.join()
        rss = vm_rss(master.pid)
        for s in streams:
            s.close()
    default, busy, opened = streams
    feed = [f for s in streams for f in s.feed]
    reads, pages = [f["read"] for f in feed if "read" in f], [f["page"] for f in feed if "page" in f]
    listings = [f["list_clients"] for f in feed if "list_clients" in f]
    for s in streams:
        if s.error:
            raise RuntimeError(f"a stream failed: {s.error}")
        if s.snap.get("total") != n:
            raise RuntimeError(f"a stream shows {s.snap.get('total')} clients, not {n}")
    return {
        "clients": n,
        "heartbeats": report["beats"],
        "heartbeat_errors": report["errors"],
        "updates": len(default.sizes) - 1,
        "first_paints_ms": paints,
        "first_paint_median_ms": round(statistics.median(paints), 1) if paints else None,
        "first_paint_max_ms": round(max(paints), 1) if paints else None,
        "full_bytes": default.sizes[0],
        "update_median_bytes": median(default.sizes[1:]),
        "update_max_bytes": max(default.sizes[1:], default=None),
        "patches": default.patches,
        "busy_full_bytes": busy.sizes[0],
        "busy_update_median_bytes": median(busy.sizes[1:]),
        "busy_update_max_bytes": max(busy.sizes[1:], default=None),
        "busy_patches": busy.patches,
        "opened_full_bytes": opened.sizes[0],
        "opened_update_median_bytes": median(opened.sizes[1:]),
        "opened_update_max_bytes": max(opened.sizes[1:], default=None),
        "feed_read_median_ms": median(reads),
        "feed_read_max_ms": max(reads, default=None),
        "feed_list_clients_median_ms": median(listings),
        "feed_list_clients_max_ms": max(listings, default=None),
        "feed_page_median_ms": median(pages),
        "feed_page_max_ms": max(pages, default=None),
        "master_rss_mib": round(rss / (1 << 20), 1),
        "load_average": load_average(),
    }


def median(values: Sequence[float]) -> float | None:
    return round(statistics.median(values), 1) if values else None


def wait_first(streams: list["Stream"], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while any(not s.sizes and not s.error for s in streams):
        if time.monotonic() > deadline:
            raise RuntimeError("no first snapshot within a minute")
        time.sleep(0.05)


class Stream(threading.Thread):
    """One /api/v1/events connection read in a thread: each event's data size, the picture
    after it (patches applied as dashboard/app.js does), and the Feed's timings it reported."""

    def __init__(self, master: Master, query: str) -> None:
        super().__init__(daemon=True)
        self.port, self.token, self.query = master.port, master.token, query
        self.sizes: list[int] = []
        self.patches = 0
        self.feed: list[dict[str, float]] = []
        self.snap: dict[str, Any] = {}
        self.error = ""
        self.conn: http.client.HTTPConnection | None = None

    def run(self) -> None:
        from dockercomp.server.dashboard import apply

        try:
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
            path = f"{API}/events" + (f"?{self.query}" if self.query else "")
            self.conn.request("GET", path, headers={"Authorization": f"Bearer {self.token}"})
            response = self.conn.getresponse()
            if response.status != 200:
                raise RuntimeError(f"GET {path}: HTTP {response.status}: {response.read(300)!r}")
            event = ""
            while line := response.readline():
                text = line.decode().rstrip("\n")
                if text.startswith("event: "):
                    event = text[7:]
                elif text.startswith("data: "):
                    data = text[6:]
                    self.sizes.append(len(data.encode()))
                    if event == "patch":
                        self.patches += 1
                        self.snap = apply(self.snap, json.loads(data))
                    else:
                        self.snap = json.loads(data)
                    self.feed.append(self.snap.get("feed", {}))
        except (OSError, ValueError, AttributeError) as exc:  # AttributeError: closed under our feet
            if self.conn is not None:
                self.error = f"{exc!r}"
        except RuntimeError as exc:
            self.error = str(exc)

    def close(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None and conn.sock is not None:
            conn.sock.shutdown(2)
            conn.close()
        self.join(timeout=10)


def first_paints(master: Master, times: int) -> list[float]:
    """Milliseconds from navigation to the clients table drawn, per fresh page load, signed
    in already (the session cookie): what the page's own performance mark says."""
    if not times:
        return []
    if not os.path.exists(CHROMIUM):
        say(f"  no Chromium at {CHROMIUM}: no first paint measured")
        return []
    from playwright.sync_api import sync_playwright

    url = f"http://127.0.0.1:{master.port}"
    out = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            for _ in range(times):
                context = browser.new_context(viewport={"width": 1400, "height": 900})
                context.add_cookies([{"name": "dockercomp_token", "value": master.token, "url": url}])
                page = context.new_page()
                page.goto(f"{url}/#/clients")
                page.wait_for_selector("#clients > tbody > tr.client", timeout=30000)  # (the CSP allows no eval)
                drawn = page.evaluate("performance.getEntriesByName('clients-drawn')[0].startTime")
                rows = page.locator("#clients > tbody > tr.client").count()
                if rows != 50:
                    raise RuntimeError(f"the page drew {rows} client rows, not 50")
                out.append(round(drawn, 1))
                context.close()
        finally:
            browser.close()
    return out


# -- the simulated clients, in a process of their own --------------------------------------------


def clients_process(port: int, n: int, beats: int, go: Any, stop: Any, queue: Any) -> None:
    try:
        queue.put(asyncio.run(_clients(port, n, beats, go, stop, queue)))
    except BaseException as exc:
        queue.put(f"{exc!r}")
        raise


def containers(rng: random.Random, i: int) -> list[dict[str, Any]]:
    """One or two running containers, with their use now."""
    out = []
    for _ in range(1 + i % 2):
        attempt = f"{rng.getrandbits(128):032x}"
        out.append({
            "container": attempt[:12], "attempt": attempt, "unit": f"{rng.getrandbits(128):032x}",
            "job": "bench-dashboard", "image": BENCH_IMAGE, "cpus": 1.0, "memory": 64 << 20, "state": "running",
            "started_at": time.time() - rng.uniform(0, 600), "cpu_percent": round(rng.uniform(0, 100), 1),
            "memory_usage": rng.randint(1 << 20, 64 << 20),
        })  # fmt: skip
    return out


async def _clients(port: int, n: int, beats: int, go: Any, stop: Any, queue: Any) -> dict[str, Any]:
    rng = random.Random(1)
    gate = asyncio.Semaphore(REGISTERING)
    boxes: list[list[dict[str, Any]]] = [containers(rng, i) for i in range(n)]

    async def register(i: int) -> Conn:
        async with gate:
            conn = await Conn.open(port)
            reply = await conn.call("/clients/register", {"name": f"volunteer-{i:05d}", "slots": 2})
            conn.token = reply["token"]
            await conn.call("/clients/heartbeat", {"slots": 2, "busy": len(boxes[i]), "containers": boxes[i]})
            return conn

    conns = await asyncio.gather(*(register(i) for i in range(n)))
    queue.put("ready")
    await asyncio.get_running_loop().run_in_executor(None, go.wait)
    sent, errors = 0, 0
    t0 = time.perf_counter()
    while not stop.is_set():
        due = t0 + sent / beats if beats else t0 + 3600
        await asyncio.sleep(max(0.0, min(0.2, due - time.perf_counter())))
        if time.perf_counter() < due:
            continue
        batch = []
        for i in rng.sample(range(n), min(20, beats)):  # a few at once, each on its own connection
            for box in boxes[i]:  # the same containers, using more or less now
                box["cpu_percent"] = round(rng.uniform(0, 100), 1)
                box["memory_usage"] = rng.randint(1 << 20, 64 << 20)
            body = {"slots": 2, "busy": len(boxes[i]), "containers": boxes[i]}
            batch.append(conns[i].call("/clients/heartbeat", body))
        results = await asyncio.gather(*batch, return_exceptions=True)
        sent += len(batch)
        errors += sum(isinstance(r, BaseException) for r in results)
    for c in conns:
        c.close()
    return {"beats": sent, "errors": errors}


if __name__ == "__main__":
    raise SystemExit(main())
