"""Simulated volunteers for the chaos tests: tests/sim.py's SimClient, speaking the real
protocol over HTTP, made to ride out what the chaos tests do to them.

A ``Volunteer`` keeps working while its master is killed and started again (a request that
finds no master is tried again; results computed are kept until the master acknowledges
them), detects a chunk whose bytes do not match its hash and downloads it again, sends again
a result the master refused because its bytes arrived corrupted, and may upload its outputs
by reference (``PUT /api/v1/blobs/HASH`` first). Its ``lie`` says what it answers:

- ``honest``: the right output (tests/sim.py's ``compute``);
- ``colluder``: a wrong output that depends on the unit only, so colluders agree on it;
- ``random``: a wrong output of random bytes, new for every attempt.
"""

import random
import threading
import time
from collections import Counter
from typing import Any

import requests

from dockercomp.protocol.errors import IntegrityError
from dockercomp.protocol.integrity import digest, verify
from tests.sim import API, ApiError, SimClient

LIES = ("honest", "colluder", "random")
CORRUPT = "hashes to"  # the master's words for bytes that do not match their hash (protocol IntegrityError)
OUTAGE = (requests.ConnectionError, requests.Timeout)


def collusion(unit: str) -> bytes:
    """What the colluders answer for a unit: wrong, and the same for all of them."""
    return b"colluded answer for unit %s\n" % unit.encode()


class Volunteer(SimClient):
    def __init__(
        self,
        urls: str | list[str],
        name: str,
        *,
        lie: str = "honest",
        by_reference: bool = False,
        think: float = 0.0,
        seed: int = 0,
        **kwargs: Any,
    ) -> None:
        assert lie in LIES, lie
        super().__init__(urls, name=name, **kwargs)
        self.lie, self.by_reference, self.think = lie, by_reference, think
        self.rng = random.Random(seed)
        self.pending: list[dict[str, Any]] = []  # reports computed and not yet acknowledged
        self.corrupt_downloads: list[str] = []  # hashes of chunks that arrived corrupted (each one refused)
        self.corrupt_uploads: list[str] = []  # attempts whose inline output the master refused as corrupted
        self.corrupt_puts: list[tuple[str, int]] = []  # (output hash, status) of outputs PUT and refused as such
        self.refusals: Counter[str] = Counter()  # other refused results, by reason (a unit decided meanwhile, ...)
        self.outages = 0  # requests that found no master
        self.accepted = 0  # results the master took

    # -- what it computes -------------------------------------------------------------------------
    def fetch(self, ref: dict[str, Any]) -> bytes:
        """An input, verified against its hash; a corrupted one is counted and downloaded again."""
        if ref["hash"] in self.cache:
            return self.cache[ref["hash"]]
        for _ in range(5):
            response = self.http.get(f"{next(self.urls)}{ref['url']}", headers=self._auth(), timeout=30)
            if response.status_code != 200:
                raise ApiError(response.status_code, response.text)
            try:
                verify(response.content, ref["hash"], f"input {ref['name']}")
            except IntegrityError:
                self.corrupt_downloads.append(ref["hash"])
                continue
            self.cache[ref["hash"]] = response.content
            return response.content
        raise AssertionError(f"{self.name}: input {ref['hash']} arrived corrupted 5 times")

    def output(self, grant: dict[str, Any]) -> bytes:
        right = super().output(grant)
        if self.lie == "colluder":
            return collusion(grant["unit"])
        if self.lie == "random":
            return b"random answer %s\n" % self.rng.randbytes(12).hex().encode()
        return right

    # -- what it sends ----------------------------------------------------------------------------
    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def put_output(self, output: bytes) -> None:
        """Upload an output as a blob (by reference), again while the master refuses it as corrupted."""
        blob = digest(output)
        for _ in range(5):
            headers = self._auth() | {"Content-Type": "application/octet-stream"}
            response = self.http.put(f"{next(self.urls)}{API}/blobs/{blob}", data=output, headers=headers, timeout=30)
            if response.status_code == 201:
                return
            if response.status_code < 500 and CORRUPT in response.text:
                self.corrupt_puts.append((blob, response.status_code))
                continue
            raise ApiError(response.status_code, response.text)
        raise AssertionError(f"{self.name}: output {blob} refused 5 times")

    def report(self, grant: dict[str, Any], output: bytes | None = None) -> dict[str, Any]:
        output = self.output(grant) if output is None else output
        if not self.by_reference:
            return super().report(grant, output)
        self.put_output(output)
        return {"attempt": grant["attempt"], "status": "succeeded", "output_hash": digest(output),
                "exit_code": 0, "runtime": 0.01}  # fmt: skip

    def send_pending(self) -> None:
        """Upload the pending reports; keep those refused as corrupted in transit (sent again
        next time, as they are here), forget the others once answered."""
        acks = self.upload(self.pending)
        by_attempt = {r["attempt"]: r for r in self.pending}
        again = []
        for ack in acks:
            if ack["accepted"]:
                self.accepted += 1
            elif CORRUPT in ack.get("reason", ""):
                self.corrupt_uploads.append(ack["attempt"])
                again.append(by_attempt[ack["attempt"]])
            else:
                self.refusals[_reason(ack.get("reason", ""))] += 1
        self.pending = again

    # -- the loop ---------------------------------------------------------------------------------
    def work_once(self) -> int:
        if self.pending:
            self.send_pending()
            return 1
        grants = self.lease()
        if not grants:
            return 0
        if self.think:
            time.sleep(self.think * self.rng.uniform(0.5, 1.5))
        self.pending = [self.report(g) for g in grants]
        self.send_pending()
        return len(grants)

    def run(self, stop: threading.Event) -> None:
        """Work until ``stop``; a master that is away (no answer, a 5xx, a 502 from a proxy)
        is waited for. Anything else ends the loop, kept in ``errors``."""
        last_beat = 0.0
        while not stop.is_set():
            try:
                if not self.token:
                    self.register()
                if time.monotonic() - last_beat > self.heartbeat_every:
                    self.heartbeat()
                    last_beat = time.monotonic()
                if not self.work_once():
                    stop.wait(self.idle_wait)
            except OUTAGE:
                self.outages += 1
                stop.wait(0.1)
            except ApiError as exc:
                if exc.status < 500:
                    self.errors.append(repr(exc))
                    return
                self.outages += 1
                stop.wait(0.1)
            except Exception as exc:
                self.errors.append(repr(exc))
                return


def _reason(reason: str) -> str:
    """A refusal's reason without the ids in it, to count refusals by kind."""
    for kind in ("already done", "already failed", "released", "unknown", "already reported"):
        if kind in reason:
            return kind
    return reason[:80]
