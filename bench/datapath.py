"""Chunk download and verify throughput of one client, with the daemon's own code, beside curl.

Starts one real master (SQLite store, 127.0.0.1), stores a chunk of random bytes per size
(default 1 MiB and 64 MiB; larger than 64 KiB, so each is a file in DATA_DIR/blobs), registers
a client, and times, per chunk, the way a daemon gets an input: ``ChunkCache.acquire`` with
``MasterSession.download`` (client/cache.py, client/master.py: stream the blob over HTTP in
1 MiB pieces into a temporary file in the cache, hashing each piece with xxh3-128 as it is
written, compare with the chunk's name, rename it into place). Each run starts from an empty
cache. Beside it, ``curl -o /dev/null`` fetches the
same blob from the same master with the same client token (its ``time_total``).

    .venv/bin/python bench/datapath.py [--sizes 1MiB 64MiB] [--repeat 5] [--quick]

Writes bench/results/datapath.json; the last stdout line holds, per size, the medians in
GB/s (10^9 bytes per second) of the daemon's path and of curl, and their ratio.
"""

import argparse
import os
import shutil
import subprocess
import tempfile
import time
from typing import Any

from common import API, Master, call, emit, load_average, medians, record, say, write_result

from dockercomp.client.cache import ChunkCache
from dockercomp.client.master import MasterSession
from dockercomp.protocol.integrity import digest
from dockercomp.protocol.messages import RegisterRequest
from dockercomp.protocol.quantities import parse_size

TARGET_GBPS = 1.0  # per client, 64 MiB chunks


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["1MiB", "64MiB"], help="chunk sizes (default 1MiB 64MiB)")
    parser.add_argument("--repeat", type=int, default=7, help="downloads per size and per tool (default 7)")
    parser.add_argument("--output", default="", help="result file (default bench/results/datapath.json)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 1 MiB only, 2 each, nothing written")
    args = parser.parse_args()
    if args.quick:
        args.sizes, args.repeat = ["1MiB"], 2
    sizes = [parse_size(s) for s in args.sizes]
    params = {"sizes": sizes, "repeat": args.repeat}
    runs: list[dict[str, Any]] = []
    with Master(flags=["--open-enrollment"]) as master:
        session = MasterSession(f"http://127.0.0.1:{master.port}", timeout=120)
        session.token = session.register(RegisterRequest(name="bench-datapath")).token
        work = tempfile.mkdtemp(prefix="dockercomp-bench-cache-")
        try:
            for size in sizes:
                blob = _store_blob(master, size)
                say(f"datapath: a {_label(size)} chunk, {args.repeat} runs each")
                for i in range(args.repeat):
                    daemon = _daemon_fetch(session, blob, size, os.path.join(work, f"cache-{size}-{i}"))
                    curl = _curl_fetch(master.port, blob, size, session.token)
                    run = {"size": size, "daemon_s": round(daemon, 4), "curl_s": round(curl, 4),
                           "daemon_gbps": round(size / daemon / 1e9, 3), "curl_gbps": round(size / curl / 1e9, 3),
                           "load_average": load_average()}  # fmt: skip
                    runs.append(run)
                    say(f"  run {i + 1}: daemon {run['daemon_gbps']:.2f} GB/s, curl {run['curl_gbps']:.2f} GB/s")
        finally:
            shutil.rmtree(work, ignore_errors=True)
    median: dict[str, Any] = {}
    for size in sizes:
        m = medians([r for r in runs if r["size"] == size], ("daemon_gbps", "curl_gbps"))
        m["daemon_vs_curl"] = round(m["daemon_gbps"] / m["curl_gbps"], 3)
        median[_label(size)] = m
        say(f"  median {_label(size)}: daemon {m['daemon_gbps']} GB/s, curl {m['curl_gbps']} GB/s")
    if not args.quick:
        write_result("datapath", record("datapath", params, runs, median, target_gbps=TARGET_GBPS), args.output)
    emit(median)
    return 0


def _label(size: int) -> str:
    """1MiB, 64MiB; other sizes in bytes."""
    return f"{size >> 20}MiB" if size and size % (1 << 20) == 0 else f"{size}B"


def _store_blob(master: Master, size: int) -> str:
    """PUT a chunk of random bytes; its hash."""
    data = os.urandom(size)
    blob = digest(data)
    call(master.port, "PUT", f"{API}/blobs/{blob}", data, "application/octet-stream", master.token)
    return blob


def _daemon_fetch(session: MasterSession, blob: str, size: int, root: str) -> float:
    """Seconds for the daemon's path: an empty cache acquires the blob (download, verify, place)."""
    cache = ChunkCache(root, max(size * 2, 1 << 30))
    started = time.perf_counter()
    path = cache.acquire(blob, lambda dest: session.download(blob, dest, limit=cache.max_bytes), size=size)
    elapsed = time.perf_counter() - started
    if os.path.getsize(path) != size or cache.downloads != 1:
        raise RuntimeError(f"the cache holds {os.path.getsize(path)} bytes after {cache.downloads} downloads")
    cache.release(blob)
    shutil.rmtree(root)
    return elapsed


def _curl_fetch(port: int, blob: str, size: int, token: str) -> float:
    """Seconds curl takes to fetch the blob to /dev/null (its own time_total)."""
    out = subprocess.run(
        ["curl", "-sS", "--fail", "-o", "/dev/null", "-H", f"Authorization: Bearer {token}",
         "-w", "%{time_total} %{size_download}", f"http://127.0.0.1:{port}{API}/blobs/{blob}"],
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    if int(out[1]) != size:
        raise RuntimeError(f"curl got {out[1]} bytes of {size}")
    return float(out[0])


if __name__ == "__main__":
    raise SystemExit(main())
