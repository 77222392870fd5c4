"""The SQLite store's lease and result paths read through indexes, never by scanning units or
attempts: every statement they really run (caught with the connection's trace callback) is
asked for its plan with ``EXPLAIN QUERY PLAN``. A scan of either table costs in proportion to
every unit or attempt ever made, so one slips in unnoticed on a small test job and dominates a
million-unit one."""

import asyncio
import re
import secrets
import sqlite3
from collections.abc import Callable
from pathlib import Path

from dockercomp.protocol.integrity import digest
from dockercomp.protocol.jobfile import parse_jobfile
from dockercomp.protocol.messages import HostFacts, LeaseRequest, ResultReport
from dockercomp.server.auth import token_hash
from dockercomp.server.blobs import DirectoryBlobStore
from dockercomp.server.lifecycle import LeasePolicy
from dockercomp.server.store.base import map_inputs
from dockercomp.server.store.sqlite import SQLiteBlobStore, SQLiteStore

T0 = 1_000_000.0
POLICY = LeasePolicy(slack=10.0, heartbeat_timeout=30.0)
BIG = ("units", "attempts")  # the tables that grow with the work; the others hold a row per client, owner, job
_SCAN = re.compile(r"^SCAN (\w+)(?: USING (?:COVERING )?INDEX (\w+))?")


def tables_by_alias(sql: str) -> dict[str, str]:
    """``FROM units AS u`` and ``JOIN attempts a``: the plan names a table by its alias."""
    names = {t: t for t in BIG}
    for table, alias in re.findall(r"\b(units|attempts)\s+(?:AS\s+)?(\w+)", sql, re.IGNORECASE):
        names[alias] = table.lower()
    return names


def scans(db: sqlite3.Connection, statements: list[str]) -> list[tuple[str, str]]:
    """(statement, plan line) for each full scan of units or attempts: a SCAN without an
    index, or through an index that is not partial (every row of the table is in it). A
    partial index (attempts_leased: leased attempts only) holds what is outstanding, not
    everything ever made."""
    indexes = db.execute("SELECT name FROM sqlite_master WHERE type = 'index' AND sql LIKE '%WHERE%'")
    partial = {row[0] for row in indexes}
    found = []
    for sql in statements:
        if not re.match(r"\s*(SELECT|UPDATE|DELETE|INSERT|WITH)", sql, re.IGNORECASE):
            continue  # BEGIN, COMMIT, PRAGMA
        aliases = tables_by_alias(sql)
        for row in db.execute("EXPLAIN QUERY PLAN " + sql):
            match = _SCAN.match(row[3])
            if match and aliases.get(match[1]) in BIG and match[2] not in partial:
                found.append((sql, row[3]))
    return found


def traced(db: sqlite3.Connection) -> tuple[list[str], Callable[[], None]]:
    statements: list[str] = []
    db.set_trace_callback(statements.append)
    return statements, lambda: db.set_trace_callback(None)


def test_lease_and_result_paths_never_scan(tmp_path: Path) -> None:
    asyncio.run(_lease_and_results(tmp_path))


async def _lease_and_results(tmp_path: Path) -> None:
    store = SQLiteStore(str(tmp_path / "store.db"))
    await store.open()
    blobs = SQLiteBlobStore(store.path, DirectoryBlobStore(str(tmp_path / "blobs")))
    try:
        # two jobs, so the lease chooses between them; replicas 2, so a result settles a quorum
        spec = parse_jobfile(
            {"name": "t", "image": "dockercomp/test", "command": ["run"],
             "redundancy": {"replicas": 2, "quorum": 2, "max_attempts": 4}}
        )  # fmt: skip
        for tag in ("a", "b"):
            units = [map_inputs([(digest(f"{tag}{i}".encode()), 10)]) for i in range(300)]
            await store.create_job(spec, units, T0, owner=f"owner-{tag}")
        ids = []
        for i in range(3):
            client = await store.register_client(
                f"c{i}", 8, HostFacts(cores=8), T0, f"acct-{i}", token_hash(secrets.token_hex(16))
            )
            ids.append(client.id)
        db = store.connection
        statements, stop = traced(db)
        try:
            request = LeaseRequest(max_units=8, cpus=16.0)
            for now in (T0 + 1, T0 + 2):
                for client_id in ids:
                    await store.get_client(client_id)
                    grants = await store.lease(client_id, request, now, POLICY)
                    assert grants
                    outputs = [g.attempt.encode() for g in grants]
                    await blobs.put_many(outputs)
                    reports = [ResultReport(g.attempt, "succeeded", exit_code=0, output_hash=digest(b"same"),
                                            output_size=4) for g in grants]  # fmt: skip
                    acks = await store.record_results(client_id, reports, now)
                    assert all(a.accepted for a in acks)
            await store.expire(T0 + 10_000, POLICY)  # the reaper, with every lease past its deadline
        finally:
            stop()
        assert any("INDEXED BY units_leasable" in s for s in statements)  # the lease query did run
        assert any("UPDATE attempts" in s for s in statements)  # and so did a result's
        assert scans(db, statements) == []
    finally:
        await blobs.close()
        await store.close()


def test_a_scan_is_seen(tmp_path: Path) -> None:
    """The check itself: a query without a usable index is caught, one through an index is not."""
    asyncio.run(_a_scan_is_seen(tmp_path))


async def _a_scan_is_seen(tmp_path: Path) -> None:
    store = SQLiteStore(str(tmp_path / "store.db"))
    await store.open()
    try:
        db = store.connection
        assert scans(db, ["SELECT id FROM units AS u WHERE u.inputs = 'x'"]) != []
        assert scans(db, ["SELECT * FROM attempts WHERE output_hash = 'x'"]) != []
        assert scans(db, ["SELECT id FROM units WHERE id = 'x'", "SELECT id FROM clients WHERE name = 'x'"]) == []
    finally:
        await store.close()
