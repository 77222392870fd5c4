"""The daemon's status file and its rendering for a person (``dockercomp client status``).

The daemon rewrites ``WORK_DIR/status.json`` atomically every few seconds and on every
change, so the status view needs no connection to the daemon and works while it is stuck
or after it has died (it then says so). Whether a daemon uses a work directory now is told
by its lock, not by the status file (``daemon_running``). Much of it comes from the master
(ids, job names, images, its error texts): every line is shown without control characters.
"""

import fcntl
import json
import os
import time
from typing import Any

from dockercomp.protocol.quantities import format_size
from dockercomp.protocol.transport import printable

FILE = "status.json"


def write_status(work_dir: str, data: dict[str, Any]) -> None:
    """Replace the status file at once: a reader sees the old one or the new one, never half."""
    path = os.path.join(work_dir, FILE)
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1)
    os.replace(tmp, path)


def read_status(work_dir: str) -> dict[str, Any] | None:
    """The last status a daemon wrote in ``work_dir``, or None when there is none."""
    try:
        with open(os.path.join(work_dir, FILE), encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def daemon_running(work_dir: str) -> bool:
    """A daemon holds ``work_dir``'s lock now (the daemon takes it for its whole life)."""
    try:
        handle = open(os.path.join(work_dir, "lock"))  # noqa: SIM115 - closed below
    except FileNotFoundError:
        return False
    except OSError:  # not ours to open: the status file's pid has to do
        data = read_status(work_dir) or {}
        return data.get("state") != "stopped" and is_alive(data.get("pid"))
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
        return False


def is_alive(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, but another user's
        return True
    return True


def render(data: dict[str, Any], now: float | None = None) -> str:
    """What the daemon does now, in a few lines a volunteer can read."""
    now = time.time() if now is None else now
    alive = data.get("state") != "stopped" and is_alive(data.get("pid"))
    ago = _ago(now - float(data.get("updated_at") or 0))
    if alive:
        state = str(data.get("state", "unknown"))
        if data.get("paused") and state != "stopping":
            why = "paused " + "; ".join(str(why) for why in data["paused"])
            state = why if state in ("running", "paused") else f"{state} ({why})"
    elif data.get("state") == "stopped":
        state = f"not running (stopped {ago} ago)"
    else:
        state = f"not running (it ended without stopping, {ago} ago; the next start cleans up after it)"
    lines = [
        f"client   {data.get('client') or '(not registered)'}  {data.get('name', '')}",
        f"master   {data.get('master', '?')}  {_master_state(data)}",
        f"state    {state}",
        f"slots    {len(data.get('running', []))} busy of {data.get('slots', '?')}, "
        f"memory {format_size(int(data.get('memory') or 0))}",
    ]
    running = data.get("running") or []
    if running and alive:
        lines.append("")
        rows: list[tuple[str, ...]] = [("ATTEMPT", "JOB", "UNIT", "IMAGE", "CPUS", "MEMORY", "PHASE", "ELAPSED")]
        for r in running:
            started = float(r.get("started_at") or now)
            rows.append((
                r["attempt"], r["job"], r["unit"], r["image"], f"{r['cpus']:g}", format_size(int(r["memory"])),
                r.get("phase", ""), _ago(now - started),
            ))  # fmt: skip
        lines += _table(rows)
    queued = data.get("queued") or []
    if queued and alive:
        lines.append("")
        lines.append(f"queued   {len(queued)}: " + ", ".join(f"{q['unit']} ({q['attempt']})" for q in queued[:8]))
    spool = data.get("spool") or {}
    cache = data.get("cache") or {}
    counts = data.get("counts") or {}
    lines += [
        "",
        f"results  {spool.get('results', 0)} waiting for upload ({format_size(int(spool.get('bytes') or 0))})",
        f"cache    {format_size(int(cache.get('bytes') or 0))} of {format_size(int(cache.get('limit') or 0))}"
        f" in {cache.get('files', 0)} chunk(s)",
        "done     " + (", ".join(f"{n} {what}" for what, n in sorted(counts.items())) or "nothing yet"),
    ]
    return "\n".join(printable(line) for line in lines)


def _master_state(data: dict[str, Any]) -> str:
    if data.get("master_ok", True):
        return "(reachable)"
    return f"(unreachable: {data.get('master_error') or 'no answer'}; retrying)"


def _ago(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _table(rows: list[tuple[str, ...]]) -> list[str]:
    rows = [tuple(printable(c) for c in r) for r in rows]  # widths of what is shown
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
