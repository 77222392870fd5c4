"""A multi-container unit (DGrid's): the grant's own container and its sidecars, together on
one volunteer, on a private network of their own.

The network is a Docker bridge made for one attempt and removed after it. It is ``internal``
(no route out, no DNS forwarding) and its bridge holds no address of this host
(``inhibit_ipv4``), so a container reaches its unit's other containers, by name, and nothing
else: not the internet, not the volunteer's own services. Every container is created by
DockerRunner with the same sandbox and the same cpu and memory limits as a single one; only
the main container gets the unit's /input (read-only) and /output, the sidecars get their
image's own filesystem (read-only) and a tmpfs /tmp.

The sidecars start first, in the grant's order, then the main container, which is waited for
exactly as a single one is (timeout, abort, OOM). The unit ends when the main container exits;
the sidecars are then killed, and every container and the network are removed whatever
happened. Each container is registered in the runner's live containers under the attempt,
so the heartbeat lists them all and pausing the attempt pauses them all. The network carries
the containers' labels, so ``remove_leftovers`` and ``cleanup`` find one a crash left.
"""

import logging
import secrets
import threading
import time
from dataclasses import replace
from typing import Any

import docker.errors

from dockercomp.protocol.limits import STDERR_TAIL
from dockercomp.protocol.messages import ErrorKind

from .docker_runner import (
    _ENGINE_ERRORS,
    DockerRunner,
    _EngineError,
    _exec_failure_code,
    _explain,
    _Live,
    _printable,
    _unavailable,
)
from .runner import LABEL_ATTEMPT, LABEL_CLIENT, LABEL_JOB, LABEL_UNIT, RunOutcome, RunSpec, Sidecar

log = logging.getLogger(__name__)

# The bridge driver's options for a unit's network: containers see each other, the host holds
# no address on the bridge (a container cannot reach its services), nothing is masqueraded.
NETWORK_OPTIONS = {
    "com.docker.network.bridge.enable_icc": "true",
    "com.docker.network.bridge.inhibit_ipv4": "true",
    "com.docker.network.bridge.enable_ip_masquerade": "false",
}
SIDECAR_NOTE = 1024  # characters of notes on the sidecars a failed unit's stderr tail may end with
SIDECAR_LOG_LINES = 5


def run_group(runner: DockerRunner, spec: RunSpec, cancel: threading.Event, where: str) -> RunOutcome:
    """Run a unit of several containers to its end, as DockerRunner.run runs one (it calls
    this for a spec with sidecars); never raises for a failure of the unit or the engine."""
    network: str | None = None
    started: list[tuple[str, str]] = []  # (container id, its name), in the order created
    try:
        network = _create_network(runner, spec, where)
        for sidecar in spec.sidecars:
            if cancel.is_set():
                return RunOutcome(ErrorKind.ABORTED, stderr_tail="aborted before its containers started")
            sub = _sidecar_spec(spec, sidecar)
            container_id = _create(runner, sub, network, where, started)
            _start(runner, sub, container_id, where)
        main = replace(spec, sidecars=())
        container_id = _create(runner, main, network, where, started)
        outcome = runner._start_and_wait(main, container_id, cancel, where)
        if outcome.error not in (None, ErrorKind.ABORTED):
            outcome = _with_notes(runner, outcome, started[:-1])
        return outcome
    except _EngineError as exc:
        return exc.outcome
    except Exception as exc:  # a bug here must not take the worker thread down
        log.exception("%s: the runner failed", where)
        return RunOutcome(ErrorKind.CLIENT, stderr_tail=f"the runner failed: {type(exc).__name__}: {exc}")
    finally:
        with runner._lock:
            for container_id, _ in started:
                runner._live.pop(container_id, None)
        for container_id, _ in reversed(started):
            runner._remove(container_id, where)
        if network is not None:
            _remove_network(runner._api, network, where)


def _sidecar_spec(spec: RunSpec, sidecar: Sidecar) -> RunSpec:
    """A sidecar as DockerRunner creates it: the attempt's ids and limits, its own image,
    command and env, and neither the unit's directories nor its GPUs (the main container's)."""
    return replace(spec, image=sidecar.image, command=sidecar.command, env=sidecar.env, input_dir="", output_dir="",
                   sidecars=(), name=sidecar.name, gpus=0)  # fmt: skip


def _create_network(runner: DockerRunner, spec: RunSpec, where: str) -> str:
    name = f"dockercomp-{spec.attempt}-{secrets.token_hex(3)}"
    labels = {LABEL_CLIENT: spec.client, LABEL_JOB: spec.job, LABEL_UNIT: spec.unit, LABEL_ATTEMPT: spec.attempt}
    try:
        created = runner._api.create_network(
            name, driver="bridge", internal=True, options=NETWORK_OPTIONS, labels=labels, check_duplicate=True
        )
    except docker.errors.APIError as exc:
        if exc.is_server_error():
            raise _EngineError(_unavailable(exc, where, "creating the unit's private network")) from exc
        message = f"the Docker engine cannot create the unit's private network: {_explain(exc)}"
        log.error("%s: %s", where, message)
        raise _EngineError(RunOutcome(ErrorKind.CLIENT, stderr_tail=message[-STDERR_TAIL:])) from exc
    except _ENGINE_ERRORS as exc:
        raise _EngineError(_unavailable(exc, where, "creating the unit's private network")) from exc
    network_id = str(created["Id"])
    log.info("%s: network %s (%s) created for %d containers", where, name, network_id[:12], 1 + len(spec.sidecars))
    return network_id


def _create(runner: DockerRunner, spec: RunSpec, network: str, where: str, started: list[tuple[str, str]]) -> str:
    """Create one container of the group and register it as live (state "created")."""
    try:
        container_id = runner._create(spec, where, network)
    except _EngineError as exc:
        raise _EngineError(_named(exc.outcome, spec.name)) from exc
    started.append((container_id, spec.name))
    with runner._lock:
        runner._live[container_id] = _Live(spec, container_id)
    return container_id


def _start(runner: DockerRunner, spec: RunSpec, container_id: str, where: str) -> None:
    """Start a sidecar; nothing waits for it to be ready (the main container retries)."""
    doing = f"starting container {spec.name}"
    try:
        runner._api.start(container_id)
    except docker.errors.APIError as exc:
        message = _explain(exc)
        code = _exec_failure_code(message)
        if code is not None:  # its command cannot run: the unit's fault, as with the main one
            tail = f"container {spec.name} could not run its command: {message}"[-STDERR_TAIL:]
            raise _EngineError(RunOutcome(ErrorKind.EXIT_NONZERO, exit_code=code, stderr_tail=tail)) from exc
        if exc.is_server_error():
            raise _EngineError(_unavailable(exc, where, doing)) from exc
        tail = f"the Docker engine refused to start container {spec.name}: {message}"
        raise _EngineError(RunOutcome(ErrorKind.CLIENT, stderr_tail=tail[-STDERR_TAIL:])) from exc
    except _ENGINE_ERRORS as exc:
        raise _EngineError(_unavailable(exc, where, doing)) from exc
    with runner._lock:
        live = runner._live.get(container_id)
        if live is not None and live.state == "created":
            live.state, live.started_at = "running", time.time()
    log.info("%s: container %s (%s) started (%s)", where, container_id[:12], spec.name, _printable(spec.image))


def _named(outcome: RunOutcome, name: str) -> RunOutcome:
    """An outcome whose message says which container of the group it is about."""
    return replace(outcome, stderr_tail=f"container {name}: {outcome.stderr_tail}"[-STDERR_TAIL:])


def _with_notes(runner: DockerRunner, outcome: RunOutcome, sidecars: list[tuple[str, str]]) -> RunOutcome:
    """A failed unit's outcome with a word on each sidecar that had exited by then (its exit
    code and last lines of stderr): the usual reason its main container failed."""
    notes = []
    for container_id, name in sidecars:
        try:
            state = runner._api.inspect_container(container_id).get("State") or {}
            if state.get("Running"):
                continue
            tail = bytes(runner._api.logs(container_id, stdout=False, stderr=True, tail=SIDECAR_LOG_LINES))
        except _ENGINE_ERRORS:
            continue
        text = tail.decode(errors="replace").strip()
        notes.append(f"container {name} had exited with code {state.get('ExitCode')}" + (f": {text}" if text else ""))
    if not notes:
        return outcome
    note = "\n".join(notes)[-SIDECAR_NOTE:]
    return replace(outcome, stderr_tail=(outcome.stderr_tail.rstrip("\n") + "\n" + note)[-STDERR_TAIL:].lstrip("\n"))


def _remove_network(api: Any, network_id: str, where: str) -> bool:
    try:
        api.remove_network(network_id)
    except docker.errors.NotFound:
        return False
    except _ENGINE_ERRORS as exc:  # labelled: the next start's remove_leftovers finds it
        log.warning("%s: cannot remove network %s: %s", where, network_id[:12], exc)
        return False
    return True


def remove_networks(api: Any, selector: str, running: set[str]) -> int:
    """Remove the networks labelled ``selector`` (dockercomp.client[=CLIENT]) that no attempt
    in ``running`` owns, once their containers are gone; how many."""
    try:
        found = api.networks(filters={"label": selector})
    except _ENGINE_ERRORS as exc:
        log.warning("cannot list leftover networks: %s", exc)
        return 0
    removed = 0
    for network in found:
        labels = network.get("Labels") or {}
        if labels.get(LABEL_ATTEMPT) in running:
            continue
        network_id = str(network["Id"])
        if _remove_network(api, network_id, "leftovers"):
            log.info("removed leftover network %s (client %s, attempt %s)", network_id[:12], labels.get(LABEL_CLIENT),
                     labels.get(LABEL_ATTEMPT))  # fmt: skip
            removed += 1
    return removed
