"""The master's start-up check of its MongoDB deployment (server/store/mongo/deployment.py),
on a fake ``admin.command`` that answers with documents shaped as a real server's, and on
the mongomock stand-in, which does not answer ``hello``."""

import asyncio
import logging
from typing import Any

import pytest
from pymongo import AsyncMongoClient

from dockercomp.server.store.mongo.deployment import DeploymentError, check_deployment
from dockercomp.server.store.mongo.store import durable_writes

REPLICA_HELLO = {"isWritablePrimary": True, "setName": "rs0", "hosts": ["a:27017", "b:27017", "c:27017"],
                 "primary": "a:27017", "maxWireVersion": 25, "ok": 1.0}  # fmt: skip
STANDALONE_HELLO = {"isWritablePrimary": True, "maxBsonObjectSize": 16777216, "maxWireVersion": 25, "ok": 1.0}


def build(version: str) -> dict[str, Any]:
    return {"version": version, "versionArray": [int(p) for p in version.split(".")] + [0], "ok": 1.0}


class Admin:
    def __init__(self, hello: dict[str, Any], build_info: dict[str, Any]) -> None:
        self.answers = {"hello": hello, "buildInfo": build_info}
        self.asked: list[str] = []

    async def command(self, name: str) -> dict[str, Any]:
        self.asked.append(name)
        return self.answers[name]


def test_an_old_server_is_refused_with_what_to_upgrade_to() -> None:
    with pytest.raises(DeploymentError, match=r"MongoDB 5\.0\.14 is too old.*upgrade the server to 6\.0 or newer"):
        asyncio.run(check_deployment(Admin(REPLICA_HELLO, build("5.0.14"))))


def test_a_standalone_server_is_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        report = asyncio.run(check_deployment(Admin(STANDALONE_HELLO, build("7.0.12"))))
    assert (report.version, report.replica_set, report.checked) == ("7.0.12", "", True)
    assert "not durable across a failover" in caplog.text and "change streams and transactions" in caplog.text
    assert len(report.warnings) == 1


def test_a_replica_set_passes(caplog: pytest.LogCaptureFixture) -> None:
    admin = Admin(REPLICA_HELLO, build("8.0.3"))
    with caplog.at_level(logging.WARNING):
        report = asyncio.run(check_deployment(admin))
    assert (report.version, report.replica_set, report.warnings) == ("8.0.3", "rs0", [])
    assert admin.asked == ["hello", "buildInfo"] and not caplog.text


def test_a_weak_write_concern_is_warned_about() -> None:
    async def check() -> list[str]:
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient("mongodb://db.invalid/x?w=1&retryWrites=false",
                                                                    connect=False)  # fmt: skip
        try:
            return (await check_deployment(Admin(REPLICA_HELLO, build("7.0.0")), client)).warnings
        finally:
            await client.close()

    warnings = asyncio.run(check())
    assert any("w=1" in warning and "rolled back" in warning for warning in warnings)
    assert any("retryable writes are off" in warning for warning in warnings)


def test_the_master_asks_for_majority_writes_unless_the_url_says_otherwise() -> None:
    assert durable_writes("mongodb://a,b,c/dockercomp?replicaSet=rs0") == {"w": "majority", "retryWrites": True}
    assert durable_writes("mongodb://a/dockercomp?W=2&retryWrites=false") == {}

    async def concern() -> dict[str, Any]:
        url = "mongodb://db.invalid/dockercomp"
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(url, connect=False, **durable_writes(url))
        try:
            return dict(client.write_concern.document) | {"retry": client.options.retry_writes}
        finally:
            await client.close()

    assert asyncio.run(concern()) == {"w": "majority", "retry": True}


def test_the_stand_in_is_said_to_be_unchecked(caplog: pytest.LogCaptureFixture) -> None:
    mongomock_motor = pytest.importorskip("mongomock_motor")
    with caplog.at_level(logging.WARNING):
        report = asyncio.run(check_deployment(mongomock_motor.AsyncMongoMockClient()["admin"]))
    assert report.checked is False
    assert "check skipped: the server does not answer hello" in caplog.text
