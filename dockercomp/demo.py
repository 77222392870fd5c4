"""``python -m dockercomp.demo`` (what ``./dev demo`` runs): the whole system on this machine.

It checks that a Docker engine answers, builds the wordfreq image offline, starts a master,
pushes the image to it and signs it with a project key made for the demo, and starts two
volunteer client daemons (each a process of its own, with its own work directory, enrolled
with a volunteer token of its own and trusting only the project key; as root the first one runs on an
empty Docker engine of its own, so it gets the image from the master). It writes a sample
text, submits the wordfreq job with every unit computed by both volunteers (replicas 2,
quorum 2), follows it, downloads the result and checks it against a count made here in one
pass without Docker. Then it shows the top words, the volunteers and the image bytes each
received from the master, stops the daemons (SIGTERM) and the master, and removes what it
created.

Exit 0 when the result is verified; 1 when any step fails (it says which, with the end of
the logs); 130 when interrupted. Everything lives in one temporary directory, kept with
``--keep``.
"""

import argparse
import contextlib
import importlib.util
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import requests

from dockercomp import terminal
from dockercomp.protocol.errors import ProtocolError
from dockercomp.protocol.jobfile import parse_jobfile
from dockercomp.protocol.quantities import format_size, parse_size
from dockercomp.scientist import TERMINAL_JOB, Master, MasterError

WORKLOAD = "wordfreq"
LISTENING = re.compile(r"master listening on (https?://[0-9.]+:\d+)")
START_TIMEOUT = 30.0
STOP_TIMEOUT = 60.0
# The master tells clients to heartbeat (and to ask again for work) every second, so the
# job starts as soon as it is submitted.
MASTER_CONFIG = "[server]\nheartbeat_interval = 1.0\n"
CLIENT_CONFIG = "[client]\nbackoff_base = 0.5\nbackoff_max = 5.0\nstatus_interval = 1.0\n"


class DemoError(Exception):
    """A step failed; the message says which and why."""


class Stopped(Exception):
    """SIGTERM or SIGINT arrived."""


def step(text: str) -> None:
    print(f"==> {text}", flush=True)


def say(text: str) -> None:
    print(f"    {text}", flush=True)


class Service:
    """A ``dockercomp`` process started by the demo, its output in a log file."""

    def __init__(self, name: str, args: list[str], log_path: Path, docker_host: str = "") -> None:
        self.name = name
        self.log_path = log_path
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DOCKERCOMP_SERVER_", "DOCKERCOMP_CLIENT_"))}
        if docker_host:
            env["DOCKER_HOST"] = docker_host
        with open(log_path, "wb") as log:
            # a session of its own: Ctrl-C reaches the demo, which then stops it in order
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "dockercomp", *args],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def tail(self, lines: int = 15) -> str:
        return "\n".join(f"      {line}" for line in self.log().splitlines()[-lines:])

    def stop(self, timeout: float) -> int | None:
        """SIGTERM and wait: the exit code, or None when it had to be killed."""
        if self.alive:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                return None
        return self.proc.returncode


class Demo:
    scientist: Master  # a session with the master, once it answers

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.root = Path(tempfile.mkdtemp(prefix="dockercomp-demo-"))
        self.master: Service | None = None
        self.daemons: list[Service] = []
        self.url = ""
        self.client_ids: list[str] = []
        self.engines = contextlib.ExitStack()  # the empty engine of the first volunteer, when there is one
        self.engine_urls: dict[str, str] = {}  # volunteer -> the engine it runs on, when not the local one

    # -- the steps ---------------------------------------------------------------------------
    def run(self) -> None:
        docker_client = self.check_engine()
        try:
            self.build_image(docker_client)
            self.start_master()
            self.push_image()
            self.start_daemons()
            sample = self.write_sample()
            job = self.submit(sample)
            self.follow(job)
            self.verify(job, sample)
            self.show_clients()
            self.show_deliveries()
            self.stop_all()
            self.check_no_containers(docker_client)
        finally:
            docker_client.close()

    def check_engine(self) -> Any:
        from dockercomp.client import images

        step("checking the Docker engine")
        try:
            client = images.connect()
        except images.ImageError as exc:
            raise DemoError(
                f"{exc}\n    (./dev demo runs scripts/ensure-docker first, which starts one as root)"
            ) from None
        version = client.version()
        say(f"Docker {version.get('Version', '?')} (API {version.get('ApiVersion', '?')}) answers")
        return client

    def build_image(self, docker_client: Any) -> None:
        from dockercomp.client import images

        step(f"building the {WORKLOAD} image offline")
        if not images.image_exists(docker_client, images.BASE_IMAGE):
            say(f"{images.BASE_IMAGE} is not here: building it with debootstrap (about a minute, once per machine)")
        started = time.monotonic()
        try:
            tag = images.build_workload(docker_client, WORKLOAD)
        except images.ImageError as exc:
            raise DemoError(str(exc)) from None
        say(f"{tag} ready in {time.monotonic() - started:.1f}s")

    def start_master(self) -> None:
        step("starting the master")
        config = self.root / "master.toml"
        config.write_text(MASTER_CONFIG)
        data = self.root / "master"
        args = ["server", "--host", "127.0.0.1", "--port", "0", "--data-dir", str(data), "--config", str(config)]
        self.master = Service("master", args, self.root / "master.log")
        deadline = time.monotonic() + START_TIMEOUT
        while not self.url:
            match = LISTENING.search(self.master.log())
            if match:
                self.url = match.group(1)
            elif not self.master.alive:
                raise DemoError(f"the master exited with {self.master.proc.returncode} at start")
            elif time.monotonic() > deadline:
                raise DemoError(f"the master did not start within {START_TIMEOUT:.0f}s")
            else:
                time.sleep(0.05)
        wait_until(lambda: (data / "operator.token").exists(), START_TIMEOUT, "the master's operator token")
        token = (data / "operator.token").read_text().strip()
        self.scientist = Master(self.url, timeout=30, token=token)
        wait_until(lambda: self._answers(), START_TIMEOUT, "the master to answer")
        say(f"master at {self.url} (data in {data}); the operator's token is in {data / 'operator.token'}")

    def push_image(self) -> None:
        from dockercomp.client import delivery, images
        from dockercomp.protocol import signing

        step(f"pushing the {WORKLOAD} image to the master and signing it (dockercomp images push / sign)")
        docker_client = images.connect()
        try:
            with tempfile.TemporaryDirectory(prefix="push-", dir=self.root) as tmp:
                exported = delivery.export_image(docker_client, images.workload_tag(WORKLOAD), Path(tmp))
                record, sent = self.scientist.push_image(exported, progress=True)
        except (images.ImageError, delivery.DeliveryError) as exc:
            raise DemoError(str(exc)) from None
        finally:
            docker_client.close()
        say(f"{record['id']}: {len(exported.layers)} layers, {format_size(sent)} sent")
        self.key = self.root / "project.key"
        fingerprint = signing.keygen(str(self.key), f"{self.key}.pub")
        self.scientist.add_signature(record["id"], signing.sign(signing.load_private(str(self.key)), record["id"]))
        say(f"signed with the demo's project key {fingerprint[:16]}…; volunteers trust only that key")

    def _answers(self) -> bool:
        try:
            self.scientist.jobs()
        except MasterError:
            return False
        return True

    def start_daemons(self) -> None:
        from dockercomp.engines import EngineUnavailable, empty_engine

        step("starting two volunteer client daemons (1 slot each), each enrolled with its volunteer's token")
        config = self.root / "client.toml"
        config.write_text(CLIENT_CONFIG)
        try:
            self.engine_urls["volunteer-1"] = self.engines.enter_context(empty_engine(self.root / "engine-1"))
            say("volunteer-1 runs on an empty Docker engine of its own: it gets the image from the master")
        except EngineUnavailable as exc:
            say(f"both volunteers share this machine's engine ({exc})")
        for n in (1, 2):  # two volunteers: replicas never go to two machines of one account
            name = f"volunteer-{n}"
            enroll = self.scientist.create_key(f"demo-{name}", "volunteer")["token"]
            args = ["client", "--server", self.url, "--work-dir", str(self.root / name), "--slots", "1"]
            args += ["--name", name, "--memory", "1GiB", "--config", str(config), "--enroll", enroll]
            args += ["--trust", f"{self.key}.pub"]
            self.daemons.append(Service(name, args, self.root / f"{name}.log", self.engine_urls.get(name, "")))

        def registered() -> list[dict[str, Any]] | None:
            for daemon in self.daemons:
                if not daemon.alive:
                    raise DemoError(f"{daemon.name} exited with {daemon.proc.returncode} at start")
            found = [c for c in self.scientist.clients() if c["online"]]
            return found if len(found) == len(self.daemons) else None

        found = wait_until(registered, START_TIMEOUT, "both volunteers to register")
        self.client_ids = [c["id"] for c in found]
        for client in sorted(found, key=lambda c: c["name"]):
            say(f"{client['name']}: client {client['id']}, {client['slots']} slot")

    def write_sample(self) -> Path:
        from dockercomp.client import images

        step(f"writing {format_size(self.args.size)} of sample text")
        script = images.workloads_dir() / WORKLOAD / "sample.py"
        sample = self.root / "sample.txt"
        with open(sample, "wb") as out:
            done = subprocess.run([sys.executable, str(script), "--size", str(self.args.size)], stdout=out, check=False)
        if done.returncode != 0:
            raise DemoError(f"{script} failed with exit code {done.returncode}")
        lines = sample.read_bytes().count(b"\n")
        say(f"{sample}: {lines} lines")
        return sample

    def submit(self, sample: Path) -> str:
        from dockercomp.client import images

        step("submitting the wordfreq job: every unit computed by both volunteers, kept when both agree")
        jobfile = json.loads((images.workloads_dir() / WORKLOAD / "job.json").read_text())
        jobfile["chunking"] = {"by": "lines", "size": f"{self.args.chunk}B"}
        jobfile["redundancy"] = {"replicas": 2, "quorum": 2, "max_attempts": 4}
        spec = parse_jobfile(jobfile)
        chunks = self.scientist.upload_chunks(spec, [str(sample)], progress=True)
        job = self.scientist.create_job(spec, chunks)
        say(f"job {job}: {len(chunks)} map units of at most {format_size(self.args.chunk)}, then a reduce unit")
        say("replicas 2, quorum 2: each unit runs on both volunteers and counts when their outputs agree")
        return job

    def follow(self, job: str) -> None:
        step("computing")
        deadline = time.monotonic() + self.args.timeout
        status = self.scientist.status(job)
        shown = ""
        with terminal.Bar("    units", sum(status["units"].values()), where=terminal.console(sys.stdout)) as bar:
            while True:
                units = status["units"]
                total = sum(units.values())
                line = f"{units['done']}/{total} units done, {units['running']} running, {units['failed']} failed"
                if terminal.drawn(bar.where):
                    bar.update(units["done"], total, f"running {units['running']}")
                elif line != shown:
                    say(line)
                shown = line
                if status["state"] in TERMINAL_JOB:
                    break
                for service in [self.master, *self.daemons]:
                    if service is not None and not service.alive:
                        raise DemoError(f"{service.name} exited with {service.proc.returncode} while the job ran")
                if time.monotonic() > deadline:
                    raise DemoError(f"the job did not end within {self.args.timeout:.0f}s ({line})")
                time.sleep(0.5)
                status = self.scientist.status(job)
        if status["state"] != "done":
            raise DemoError(f"job {job} ended {status['state']}: {self._errors(job)}")
        say(f"job {job} done: {shown}")

    def _errors(self, job: str) -> str:
        errors = Counter(a["error"] for u in self.scientist.units(job) for a in u["attempts"] if a["error"])
        return ", ".join(f"{n} attempt(s) {error}" for error, n in errors.items()) or "no attempt reported an error"

    def verify(self, job: str, sample: Path) -> None:
        step("downloading the result and checking it against a count made here, without Docker")
        result = b"".join(self.scientist.results(job))
        counts = word_counts(sample)
        expected = "".join(f"{w}\t{n}\n" for w, n in ranked(counts)).encode()
        if result != expected:
            got = result.decode(errors="replace").splitlines()
            want = expected.decode().splitlines()
            line = next(
                (i for i, (a, b) in enumerate(zip(got, want, strict=False)) if a != b), min(len(got), len(want))
            )
            seen = got[line] if line < len(got) else "nothing"
            wanted = want[line] if line < len(want) else "nothing"
            raise DemoError(
                f"the result differs from the independent count at line {line + 1}: {seen!r}, not {wanted!r}"
            )
        say(f"{len(result)} bytes: {len(counts)} distinct words, {sum(counts.values())} words in all")
        say("top words:")
        for rank, (word, count) in enumerate(ranked(counts)[:10], 1):
            say(f"  {rank:>2}. {word:<16} {count}")
        units = self.scientist.units(job)
        agreed = sum(
            1
            for u in units
            if len({a["client"] for a in u["attempts"] if a["validity"] == "valid"}) == 2 and u["state"] == "done"
        )
        say(f"{agreed} of {len(units)} units computed by both volunteers with identical outputs")
        print("result verified: the job's output is the word count computed here", flush=True)

    def show_clients(self) -> None:
        step("volunteers (as `dockercomp clients` shows them)")
        found = self.scientist.clients()
        deadline = time.monotonic() + 5.0
        while any(c["busy"] for c in found) and time.monotonic() < deadline:  # their next heartbeat says idle
            time.sleep(0.2)
            found = self.scientist.clients()
        rows = [("CLIENT", "NAME", "STATE", "BUSY", "VALID", "ERRORS", "RELIABILITY")]
        for c in found:
            state = "online" if c["online"] else "offline"
            rows.append((c["id"], c["name"], state, f"{c['busy']}/{c['slots']}", str(c["valid"]), str(c["errors"]),
                         f"{c['reliability']:.2f}"))  # fmt: skip
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        for row in rows:
            say("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())

    def show_deliveries(self) -> None:
        from dockercomp.client import status

        step("image bytes each volunteer received from the master")
        for daemon in self.daemons:
            current = status.read_status(str(self.root / daemon.name)) or {}
            got = int(current.get("image_bytes") or 0)
            where = "its own engine" if daemon.name in self.engine_urls else "this machine's engine, with the image"
            say(f"{daemon.name} ({where}): {format_size(got) if got else 'nothing'}")

    def stop_all(self) -> None:
        step("stopping the volunteers (SIGTERM) and the master")
        problems = []
        for daemon in self.daemons:
            code = daemon.stop(STOP_TIMEOUT)
            if code != 0:
                problems.append(f"{daemon.name} exited with {code}")
            else:
                say(f"{daemon.name} stopped (exit 0)")
        if self.master is not None:
            code = self.master.stop(STOP_TIMEOUT)
            if code != 0:
                problems.append(f"the master exited with {code}")
            else:
                say("master stopped (exit 0)")
        if problems:
            raise DemoError("; ".join(problems))

    def check_no_containers(self, docker_client: Any) -> None:
        import docker

        from dockercomp.client.runner import LABEL_CLIENT

        engines = [docker_client, *(docker.DockerClient(base_url=url) for url in self.engine_urls.values())]
        left = [
            c["Id"][:12]
            for engine in engines
            for client in self.client_ids
            for c in engine.api.containers(all=True, filters={"label": f"{LABEL_CLIENT}={client}"})
        ]
        for engine in engines[1:]:
            engine.close()
        if left:
            raise DemoError(f"containers left behind: {', '.join(left)} (docker ps -a --filter label={LABEL_CLIENT})")
        say("no container of the volunteers is left")
        self.engines.close()

    # -- the end ------------------------------------------------------------------------------
    def show_logs(self) -> None:
        for service in [self.master, *self.daemons]:
            if service is not None and service.log():
                print(f"--- the end of {service.name}'s log ({service.log_path}):\n{service.tail()}", file=sys.stderr)

    def cleanup(self) -> None:
        for daemon in self.daemons:
            daemon.stop(STOP_TIMEOUT)
        if self.master is not None:
            self.master.stop(STOP_TIMEOUT)
        self.engines.close()
        if self.args.keep:
            step(f"kept {self.root} (logs, work directories, the master's data)")
            return
        shutil.rmtree(self.root, ignore_errors=True)
        step(f"removed {self.root}")


def wait_until(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise DemoError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.1)


def word_counts(path: Path) -> Counter[str]:
    """Count the words of the whole text in one pass, with the workload's own rules (words.py)."""
    from dockercomp.client import images

    source = images.workloads_dir() / WORKLOAD / "words.py"
    spec = importlib.util.spec_from_file_location(f"{WORKLOAD}_words", source)
    if spec is None or spec.loader is None:
        raise DemoError(f"cannot load the word rules from {source}")
    words = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(words)
    return words.count_file(str(path))


def ranked(counts: Counter[str]) -> list[tuple[str, int]]:
    """Most frequent first, ties by word: the order the reduce step writes."""
    return sorted(counts.items(), key=lambda item: (-item[1], item[0]))


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """SIGTERM and SIGINT end the demo through its cleanup."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise Stopped(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def size_arg(text: str) -> int:
    try:
        return parse_size(text, "size")
    except ProtocolError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dockercomp.demo",
        description="Run a master, two volunteer daemons and a wordfreq job on this machine; check the result.",
    )
    parser.add_argument("--size", type=size_arg, default=parse_size("1MiB"), help="sample text to count (1MiB)")
    parser.add_argument("--chunk", type=size_arg, default=parse_size("128KiB"), help="bytes per unit (128KiB)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds the job may take (600)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, data)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="    %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    demo = Demo(args)
    code = 0
    with stop_on_signals():
        try:
            demo.run()
        except (DemoError, MasterError, ProtocolError, requests.RequestException, OSError) as exc:
            print(f"demo failed: {exc}", file=sys.stderr, flush=True)
            demo.show_logs()
            code = 1
        except Stopped as exc:
            print(f"demo stopped by {exc}", file=sys.stderr, flush=True)
            code = 130
        finally:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            demo.cleanup()
    return code


if __name__ == "__main__":
    sys.exit(main())
