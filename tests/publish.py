"""Images for tests, as the project's operator publishes them: pushed to a master from the
local engine and signed with a project key made once per test session (daemons trust it)."""

import atexit
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from dockercomp.client import delivery, images
from dockercomp.protocol import signing
from dockercomp.scientist import Master

_SIGNING: list[str] = []
_PUBLISHED: dict[tuple[str, str], str] = {}


def signing_key() -> tuple[str, str]:
    """The tests' project key pair (private, public), made once per session; daemons trust it."""
    if not _SIGNING:
        where = tempfile.mkdtemp(prefix="dockercomp-signing-")
        atexit.register(shutil.rmtree, where, True)
        private = os.path.join(where, "project.key")
        signing.keygen(private, private + ".pub")
        _SIGNING.extend([private, private + ".pub"])
    return _SIGNING[0], _SIGNING[1]


def publish(master: Any, ref: str, *, sign: bool = True) -> str:
    """Push the local engine's image ``ref`` to ``master`` (only what it lacks) and sign it
    with the tests' key, once per master; its image id."""
    if (master.url, ref) not in _PUBLISHED:
        scientist = Master(master.url, token=master.token, ca=master.verify if isinstance(master.verify, str) else None)
        docker_client = images.connect()
        try:
            with tempfile.TemporaryDirectory(prefix="push-") as tmp:
                exported = delivery.export_image(docker_client, ref, Path(tmp))
                record, _ = scientist.push_image(exported, progress=False)
        finally:
            docker_client.close()
        if sign:
            scientist.add_signature(record["id"], signing.sign(signing.load_private(signing_key()[0]), record["id"]))
        _PUBLISHED[(master.url, ref)] = record["id"]
    return _PUBLISHED[(master.url, ref)]
