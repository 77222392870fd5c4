"""Run a workload on this machine, without a master: ``dockercomp workloads run``.

The workload's own job file says how: its inputs are cut with the job's chunking (or, for a
parameter sweep, each parameter set makes a unit), each unit runs in a container of the
workload's image, sandboxed by the same ``DockerRunner`` a volunteer's daemon uses (same
mounts, limits and user), and when the job has a reduce step it runs over the map outputs in
unit order, as the master would issue it. What a workload author sees here is what the
volunteers will compute.
"""

import json
import logging
import os
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO

from dockercomp.protocol.chunking import chunk_inputs
from dockercomp.protocol.errors import ProtocolError
from dockercomp.protocol.jobfile import JobSpec, params_env, params_json, parse_jobfile
from dockercomp.protocol.limits import ENV_NAME_RE

from . import images
from .errors import ClientError, ResultUnreadable
from .runner import Runner, RunOutcome, RunSpec, Sidecar, open_result

log = logging.getLogger(__name__)

LOCAL_CLIENT = "local"  # the dockercomp.client label of the containers a local run starts
_COPY_BLOCK = 1 << 20


class LocalRunError(ClientError):
    """A local run could not be done. ``bad_input`` says whether the caller asked for
    something impossible (an unknown workload, a missing input: fix the command) rather than
    the run failing (no engine, an image that does not build)."""

    def __init__(self, message: str, *, bad_input: bool = False) -> None:
        super().__init__(message)
        self.bad_input = bad_input


class UnitFailed(LocalRunError):
    """A unit's container did not succeed; its outcome holds the kind and the stderr tail."""

    def __init__(self, unit: str, outcome: RunOutcome) -> None:
        kind = outcome.error.value if outcome.error is not None else "no result"
        code = f" (exit code {outcome.exit_code})" if outcome.exit_code is not None else ""
        super().__init__(f"{unit} failed: {kind}{code}")
        self.unit = unit
        self.outcome = outcome


@dataclass(frozen=True)
class LocalRun:
    """What a finished local run did."""

    workload: str
    image: str
    maps: int  # map units run
    reduced: bool  # whether a reduce unit ran over them
    output_size: int  # bytes written
    runtime: float  # seconds, from the first unit's start to the end


def load_job(name: str, env: Mapping[str, str] | None = None, root: Path | None = None) -> JobSpec:
    """The job file ``workloads/NAME/job.json``, with ``env`` added to its environment."""
    root = root or images.workloads_dir()
    known = images.list_workloads(root)
    if name not in known:
        raise LocalRunError(f"no workload named {name!r:.70} (known: {', '.join(known) or 'none'})", bad_input=True)
    path = root / name / "job.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LocalRunError(f"workload {name} has no job file {path}", bad_input=True) from None
    except (OSError, ValueError) as exc:
        raise LocalRunError(f"cannot read {path}: {exc}", bad_input=True) from None
    for key in env or {}:
        if not ENV_NAME_RE.fullmatch(key):
            raise LocalRunError(f"variable name {key!r:.40} must be letters, digits and '_', not starting with a digit",
                                bad_input=True)  # fmt: skip
    if env and isinstance(data, dict) and isinstance(data.get("env") or {}, dict):
        data["env"] = {**(data.get("env") or {}), **env}
    try:
        return parse_jobfile(data)
    except ProtocolError as exc:
        raise LocalRunError(f"{path}: {exc}", bad_input=True) from None


def input_files(paths: Iterable[str]) -> list[str]:
    """The input files in order; a directory stands for its files (not hidden, by name)."""
    files: list[str] = []
    for path in paths:
        if os.path.isdir(path):
            inside = sorted(e.path for e in os.scandir(path) if e.is_file() and not e.name.startswith("."))
            if not inside:
                raise LocalRunError(f"input directory {path} holds no file", bad_input=True)
            files += inside
        elif os.path.isfile(path):
            files.append(path)
        else:
            raise LocalRunError(f"input {path} is not a readable file or directory", bad_input=True)
    if not files:
        raise LocalRunError("no input given", bad_input=True)
    return files


def run_workload(
    name: str,
    inputs: Sequence[str],
    output: BinaryIO,
    *,
    reduce: bool | None = None,
    env: Mapping[str, str] | None = None,
    slots: int = 1,
    build: bool = False,
    runner: Runner | None = None,
    work_dir: str | None = None,
    on_unit: Callable[[str, RunOutcome], None] | None = None,
) -> LocalRun:
    """Run workload ``name`` over ``inputs`` as its job file says and write the job's result to
    ``output``: the reduce output when the job has a reduce step (``reduce=False`` skips it),
    else every map output concatenated in unit order, as ``dockercomp results`` would.

    The image is built first when it is missing (``build`` rebuilds it anyway, after the
    workload was edited). Up to ``slots`` units run at once; the first failed unit stops the
    others and raises ``UnitFailed``. Nothing is left behind: every container is removed and
    the scratch directory too.
    """
    if slots < 1:
        raise LocalRunError("slots must be at least 1", bad_input=True)
    spec = load_job(name, env)
    if spec.sweep is not None and inputs:
        raise LocalRunError(f"workload {name} is a parameter sweep: its units take no input files", bad_input=True)
    files = input_files(inputs) if spec.sweep is None else []
    if reduce and spec.reduce_command is None:
        raise LocalRunError(f"workload {name}'s job has no reduce step", bad_input=True)
    do_reduce = spec.reduce_command is not None and reduce is not False
    scratch = tempfile.mkdtemp(prefix=f"dockercomp-run-{name}-", dir=work_dir)
    os.chmod(scratch, 0o700)
    cancel = threading.Event()
    run_id = uuid.uuid4().hex[:12]
    try:
        if spec.sweep is None:
            maps = _write_chunks(spec, files, scratch)
            log.info("%s: %d map unit(s) from %d input file(s)", name, len(maps), len(files))
        else:
            maps = _write_params(spec, scratch)
            log.info("%s: %d map unit(s) from its sweep", name, len(maps))
        if runner is None:  # after the input was found good: no build for a run that cannot start
            runner = _docker_runner(spec.image, name, build)
        started = time.monotonic()
        specs = [_unit_spec(spec, run_id, f"map-{i:06d}", d, spec.command, e) for i, (d, e) in enumerate(maps)]
        _run_all(runner, specs, cancel, slots, on_unit)
        results = [_result(s) for s in specs]
        if do_reduce:
            assert spec.reduce_command is not None
            unit = os.path.join(scratch, "reduce")
            _fresh_dirs(unit)
            for i, path in enumerate(results):
                os.replace(path, os.path.join(unit, "input", f"{i:06d}"))
            reduce_spec = _unit_spec(spec, run_id, "reduce", unit, spec.reduce_command, spec.env)
            _run_all(runner, [reduce_spec], cancel, 1, on_unit)
            results = [_result(reduce_spec)]
        size = 0
        for path in results:
            with open(path, "rb") as source:
                while block := source.read(_COPY_BLOCK):
                    output.write(block)
                    size += len(block)
        output.flush()
        return LocalRun(name, spec.image, len(maps), do_reduce, size, time.monotonic() - started)
    finally:
        cancel.set()
        shutil.rmtree(scratch, ignore_errors=True)


def _docker_runner(image: str, name: str, build: bool) -> Runner:
    from .docker_runner import DockerRunner

    try:
        client = images.connect()
        if build and image == images.workload_tag(name):
            images.build_workload(client, name)
        elif not images.image_exists(client, image):
            log.info("image %s is not here; getting it", image)
            images.ensure_image(client, image)
    except images.ImageError as exc:
        raise LocalRunError(str(exc)) from exc
    return DockerRunner(client)


Env = tuple[tuple[str, str], ...]


def _write_chunks(spec: JobSpec, files: list[str], scratch: str) -> list[tuple[str, Env]]:
    """Cut the inputs as the scientist's ``submit`` would and give each chunk a unit
    directory (``input/chunk`` readable by the container's user); in unit order."""
    units = []
    try:
        for i, chunk in enumerate(chunk_inputs(files, spec.chunking)):
            unit = os.path.join(scratch, f"map-{i:06d}")
            _unit_input(unit, "chunk", chunk)
            units.append((unit, spec.env))
    except ProtocolError as exc:
        raise LocalRunError(f"cannot chunk the input: {exc}", bad_input=True) from None
    if not units:
        raise LocalRunError("the input is empty: no unit to run", bad_input=True)
    return units


def _write_params(spec: JobSpec, scratch: str) -> list[tuple[str, Env]]:
    """A sweep's units, as the master issues them: the parameters in ``input/params.json``
    and as environment variables over the job's own."""
    assert spec.sweep is not None
    units = []
    for i in range(len(spec.sweep)):
        params = spec.sweep.params(i)
        unit = os.path.join(scratch, f"map-{i:06d}")
        _unit_input(unit, "params.json", params_json(params))
        units.append((unit, tuple(sorted({**dict(spec.env), **params_env(params)}.items()))))
    return units


def _unit_input(unit: str, name: str, data: bytes) -> None:
    _fresh_dirs(unit)
    path = os.path.join(unit, "input", name)
    with open(path, "wb") as out:
        out.write(data)
    os.chmod(path, 0o644)


def _fresh_dirs(unit: str) -> None:
    """A unit's input (read by the container's unprivileged user) and output (written by it)."""
    os.mkdir(unit, 0o700)
    for sub, mode in (("input", 0o755), ("output", 0o777)):
        os.mkdir(os.path.join(unit, sub))
        os.chmod(os.path.join(unit, sub), mode)


def _unit_spec(spec: JobSpec, run_id: str, unit: str, unit_dir: str, command: tuple[str, ...], env: Env) -> RunSpec:
    return RunSpec(
        client=LOCAL_CLIENT, attempt=f"{run_id}-{unit}", job=f"local-{spec.name}-{run_id}", unit=unit,
        image=spec.image, command=command, env=env, cpus=spec.resources.cpus,
        memory=spec.resources.memory, timeout=spec.resources.timeout,
        input_dir=os.path.join(unit_dir, "input"), output_dir=os.path.join(unit_dir, "output"),
        sidecars=tuple(Sidecar(c.name, c.image, c.command, c.env) for c in spec.sidecars), name=spec.main_name,
        gpus=spec.resources.gpus,
    )  # fmt: skip


def _run_all(
    runner: Runner,
    specs: list[RunSpec],
    cancel: threading.Event,
    slots: int,
    on_unit: Callable[[str, RunOutcome], None] | None,
) -> None:
    """Run units, ``slots`` at a time; the first failure cancels the rest and is raised."""

    def one(spec: RunSpec) -> None:
        if cancel.is_set():
            return
        outcome = runner.run(spec, cancel)
        if on_unit is not None:
            on_unit(spec.unit, outcome)
        if outcome.error is not None:
            if cancel.is_set():  # stopped because another unit failed first
                return
            cancel.set()
            raise UnitFailed(spec.unit, outcome)
        _result(spec, outcome)

    with ThreadPoolExecutor(max_workers=slots, thread_name_prefix="unit") as pool:
        futures = [pool.submit(one, spec) for spec in specs]
        try:
            done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        except BaseException:  # Ctrl-C: stop the containers, wait for their removal
            cancel.set()
            raise
        for future in futures:
            failure = future.exception() if future in done else None
            if failure is not None:
                cancel.set()
                raise failure


def _result(spec: RunSpec, outcome: RunOutcome | None = None) -> str:
    """The path of a unit's /output/result, once open_result has found it usable."""
    path = os.path.join(spec.output_dir, "result")
    try:
        open_result(path).close()
    except ResultUnreadable as exc:
        raise UnitFailed(spec.unit, replace(outcome or RunOutcome(None), stderr_tail=str(exc))) from None
    return path


def description(name: str, root: Path | None = None) -> str:
    """What a workload computes, from its job file's description ("" when it has none)."""
    try:
        data = json.loads(((root or images.workloads_dir()) / name / "job.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ""
    text = data.get("description") if isinstance(data, dict) else None
    return " ".join(text.split()) if isinstance(text, str) else ""
