"""The sandbox, proven end to end: a real master, one real daemon process and real containers
running a hostile workload (tests/e2e/workloads/hostile) that tries its way out: the network,
writes outside /output, a fork bomb, memory past its limit, a full disk, the host's files, a
setuid-root binary.

Each case checks three things. It is contained: the workload reports every try and how the
kernel answered it (the errno), with controls that must work so a refusal means something,
and the host checks its side too (nothing reached its listeners, its forks still work). Its
unit errors with the ErrorKind the master shows: ``exit_nonzero`` for a workload whose tries
all failed (it exits 3, "contained"), ``oom`` past the memory limit, ``refused`` past the
volunteer's bound on /output, ``client`` for a result the daemon will not read (a link). And
the daemon lives on: the attempt's work directory and
container are gone, and a well-behaved unit after it succeeds on the same daemon.

One master and one daemon serve the whole module, so the last case runs on a daemon that has
lived through all the others.
"""

import contextlib
import fcntl
import json
import shutil
import socket
import struct
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest
import requests

from dockercomp.client import outputfs
from dockercomp.client.runner import LABEL_ATTEMPT, LABEL_JOB
from dockercomp.protocol.integrity import digest
from tests.fixtures.cluster import WORKLOADS
from tests.fixtures.docker import workload_image
from tests.masters import MasterProcess, Masters
from tests.needs import skip_or_fail

from .cluster import DaemonProcess, Daemons, clients, job_status, job_units, submit, wait_for, wait_job
from .conftest import MASTER_CONFIG, MASTER_FLAGS

pytestmark = pytest.mark.slow

JOB_WAIT = 90.0
MAX_RESULT = 8 << 20  # the daemon's bound on /output (--max-result)
PIDS_LIMIT = 256  # DockerRunner's default
TMP_SIZE = 64 << 20  # DockerRunner's default /tmp, and Docker's default /dev/shm
CONTAINED = 3  # hostile.py's exit code when every try was refused
SIOCGIFADDR = 0x8915


@dataclass
class Sandbox:
    master: MasterProcess
    daemon: DaemonProcess
    image: str
    docker: docker.DockerClient


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory, docker_client: docker.DockerClient) -> Iterator[Sandbox]:
    """One master and one daemon of 2 slots that bounds /output to MAX_RESULT, for the module;
    at the end the daemon must exit 0 on SIGTERM, without a traceback or a container left."""
    image = workload_image(docker_client, "hostile", WORKLOADS)
    tmp = tmp_path_factory.mktemp("sandbox")
    (tmp / "daemons").mkdir()
    config = tmp / "master.toml"
    config.write_text(MASTER_CONFIG)
    masters, daemons = Masters(tmp), Daemons(tmp / "daemons", docker_client)
    try:
        master = masters.start(*MASTER_FLAGS, "--config", str(config))
        daemon = daemons.start(master, "sandbox", slots=2, flags=("--max-result", f"{MAX_RESULT >> 20}MiB"))
        yield Sandbox(master, daemon, image, docker_client)
    finally:
        try:
            daemons.close()
        finally:
            masters.close()


# -- running the hostile workload ------------------------------------------------------------------


def start(sb: Sandbox, mode: str, params: dict[str, Any] | None = None, *, extra: Any = None, **resources: Any) -> str:
    """Submit one unit of the hostile workload in ``mode``, tried once (``extra``: more keys of
    the job file); its job id."""
    job = {
        "name": f"hostile-{mode}",
        "image": sb.image,
        "command": ["python3", "/app/hostile.py", mode, json.dumps(params or {})],
        "resources": {"cpus": 1, "memory": "64MiB", "timeout": "60s"} | resources,
        "redundancy": {"replicas": 1, "quorum": 1, "max_attempts": 1},
    } | (extra or {})
    job_id, _ = submit(sb.master, job, [f"chunk of {mode}\n".encode()])
    return job_id


def errored(sb: Sandbox, job: str) -> dict[str, Any]:
    """Wait for the job of one hostile unit to fail; its only attempt, which must have errored
    on our daemon and left no output."""
    assert wait_job(sb.master, job, JOB_WAIT)["state"] == "failed"
    [unit] = job_units(sb.master, job)
    [attempt] = unit["attempts"]
    assert unit["state"] == "failed" and unit["output"] is None, unit
    assert attempt["state"] == "errored" and attempt["client"] == sb.daemon.client, attempt
    return attempt


def contained(attempt: dict[str, Any]) -> dict[str, Any]:
    """The workload's own report (the last ``hostile:`` line of its stderr) of a unit whose tries
    all failed: it exited 3 and the master calls that ``exit_nonzero``. Every control worked."""
    assert (attempt["error"], attempt["exit_code"]) == ("exit_nonzero", CONTAINED), attempt
    lines = [line for line in attempt["stderr_tail"].splitlines() if line.startswith("hostile: {")]
    assert lines, attempt["stderr_tail"]
    report: dict[str, Any] = json.loads(lines[-1].removeprefix("hostile: "))
    assert report["controls"] and set(report["controls"].values()) == {"ok"}, report["controls"]
    return report


def refused(tries: dict[str, str], allowed: set[str]) -> dict[str, str]:
    """The tries that did not end in one of ``allowed`` (errno names, or how hostile.py says it
    was stopped): empty when every one was refused as it should be."""
    return {name: how for name, how in tries.items() if how not in allowed}


def lives_on(sb: Sandbox, after: str, *attempts: dict[str, Any]) -> None:
    """The daemon after hostile units: alive, their work directories and containers gone, and
    a well-behaved unit submitted now succeeds on it."""
    assert sb.daemon.alive, sb.daemon.log()[-4000:]
    for attempt in attempts:
        assert not (sb.daemon.work_dir / "attempts" / attempt["id"]).exists(), attempt
        assert not sb.docker.api.containers(all=True, filters={"label": f"{LABEL_ATTEMPT}={attempt['id']}"})
    chunk = f"a well-behaved unit after {after}\n".encode()
    job = {
        "name": "well-behaved",
        "image": sb.image,
        "command": ["python3", "/app/hostile.py", "echo"],
        "resources": {"cpus": 1, "memory": "64MiB", "timeout": "60s"},
    }
    job_id, _ = submit(sb.master, job, [chunk])
    assert wait_job(sb.master, job_id, JOB_WAIT)["state"] == "done"
    [unit] = job_units(sb.master, job_id)
    assert [(a["client"], a["state"]) for a in unit["attempts"]] == [(sb.daemon.client, "succeeded")], unit
    assert unit["output"] == digest(chunk.upper())
    response = requests.get(f"{sb.master.api}/jobs/{job_id}/results", headers=sb.master.headers, timeout=30)
    assert response.status_code == 200 and response.content == chunk.upper(), response


# -- what the host knows of itself -----------------------------------------------------------------


def host_addresses() -> list[str]:
    """This host's own addresses, loopback aside: each interface's IPv4 address and every
    global IPv6 one."""
    found = []
    for _, name in socket.if_nameindex():
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                packed = fcntl.ioctl(s.fileno(), SIOCGIFADDR, struct.pack("256s", name.encode()[:15]))
            except OSError:  # no IPv4 address
                continue
        address = socket.inet_ntoa(packed[20:24])
        if not address.startswith("127."):
            found.append(address)
    with contextlib.suppress(FileNotFoundError), open("/proc/net/if_inet6") as f:
        for line in f:
            hexa, _, _, scope, *_ = line.split()
            if scope == "00":  # global
                found.append(socket.inet_ntop(socket.AF_INET6, bytes.fromhex(hexa)))
    assert found, "this host has no address but loopback"
    return found


def host_nameservers() -> list[str]:
    with contextlib.suppress(FileNotFoundError), open("/etc/resolv.conf") as f:
        return [line.split()[1] for line in f if line.startswith("nameserver") and ":" not in line]
    return []


def listeners() -> tuple[socket.socket, socket.socket]:
    """A TCP and a UDP socket on one free port of every address of this host (IPv4 and IPv6)."""
    tcp = socket.create_server(("", 0), family=socket.AF_INET6, dualstack_ipv6=True)
    udp = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    udp.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    udp.bind(("", tcp.getsockname()[1]))
    for s in (tcp, udp):
        s.setblocking(False)
    return tcp, udp


def nothing_arrived(tcp: socket.socket, udp: socket.socket) -> bool:
    """No connection waits on the TCP listener and no datagram on the UDP one."""
    try:
        tcp.accept()[0].close()
        return False
    except BlockingIOError:
        pass
    try:
        udp.recvfrom(512)
        return False
    except BlockingIOError:
        return True


def daemon_token(daemon: DaemonProcess) -> str:
    token = json.loads((daemon.work_dir / "identity.json").read_text())["token"]
    assert isinstance(token, str) and len(token) >= 16
    return token


def disk_usage(root: Path) -> int:
    """The disk everything under ``root`` takes, in bytes."""
    return sum(p.lstat().st_blocks * 512 for p in root.rglob("*"))


# -- the cases -----------------------------------------------------------------------------------

NO_ROUTE = {"ENETUNREACH", "EADDRNOTAVAIL", "EHOSTUNREACH"}  # a network namespace that holds only lo
CANNOT_WRITE = {"EROFS", "EACCES", "EPERM"}


def probe_network(sb: Sandbox, unreached: set[str], peers: tuple[str, ...] = (), **extra: Any) -> dict[str, Any]:
    """Run the network probe (as the main container of ``extra``'s containers, if any) with a
    TCP and a UDP listener on every address of this host, and check what every unit's network
    must refuse: the host on that port and on the master's, the internet, DNS servers, names,
    raw and packet sockets, each ending in one of ``unreached``. Nothing may reach the
    listeners. Its report, after the daemon is seen to live on."""
    tcp, udp = listeners()
    port = tcp.getsockname()[1]
    hosts, ports = host_addresses(), [port, sb.master.port]
    with tcp, udp:
        params = {"hosts": hosts, "ports": ports, "nameservers": host_nameservers(), "peers": list(peers)}
        attempt = errored(sb, start(sb, "network", params, extra=extra))
        report = contained(attempt)  # the peers' connections are among its controls
        assert nothing_arrived(tcp, udp)
    tries = report["tries"]
    sent = {f"{proto} {host}:{p}" for proto in ("tcp", "udp") for host in hosts for p in ports}
    assert sent <= tries.keys(), tries
    loopback = {name: how for name, how in tries.items() if " 127.0.0.1:" in name}
    assert loopback and not refused(loopback, {"ECONNREFUSED", "sent"}), loopback  # its own lo: nobody listens
    away = {name: how for name, how in tries.items() if name.split()[0] in ("tcp", "udp", "dns")}
    away = {name: how for name, how in away.items() if name not in loopback}
    assert len(away) >= len(sent) + 7 and not refused(away, unreached), away
    assert tries["resolve example.com"].startswith("EAI_"), tries
    assert (tries["raw icmp socket"], tries["packet socket"]) == ("EPERM", "EPERM"), tries
    networks = sb.docker.api.networks(filters={"label": f"{LABEL_ATTEMPT}={attempt['id']}"})
    assert networks == [], networks  # a unit's own network goes with it
    lives_on(sb, "a network probe", attempt)
    return report


def test_the_network_is_out_of_reach(sandbox: Sandbox) -> None:
    """Connections to every address of the host (on a port it listens on, and the master's),
    to the internet and to DNS servers, a name lookup, a broadcast, raw and packet sockets: all
    refused, at once (no route), and nothing reached the host's listeners. Its only interface
    is loopback, where a connection to itself works (the control)."""
    report = probe_network(sandbox, NO_ROUTE)
    assert report["interfaces"] == ["lo"] and report["gateway"] is None and report["arp"] == [], report


def test_a_multi_container_unit_reaches_its_peer_and_nothing_else(sandbox: Sandbox) -> None:
    """The same probe as the main container of a two-container unit. On the unit's private
    network it reaches its peer by name (a control). Its default route points at a gateway that
    nobody holds (the bridge has no address of the host): that gateway never answers, so
    nothing of the host or beyond is reached (no connection, no datagram, no DNS answer); the
    only neighbour that ever answered is its peer. The unit's network is gone after it."""
    peer = {"name": "peer", "image": sandbox.image, "command": ["python3", "/app/hostile.py", "serve", "{}"]}
    containers = [{"name": "main", "main": True}, peer]
    unreached = NO_ROUTE | {"TimeoutError", "sent", "no answer"}  # sent: it left for a gateway that never answered
    report = probe_network(sandbox, unreached, ("peer:7000",), containers=containers)
    assert report["controls"]["tcp peer:7000"] == "ok" and "eth0" in report["interfaces"], report
    answered = {address for address, how in report["arp"] if how == "answered"}
    assert answered <= set(report["peers"].values()), report
    assert report["gateway"] and [report["gateway"], "silent"] in report["arp"], report


def test_nothing_outside_output_can_be_written(sandbox: Sandbox) -> None:
    """Creating, appending, renaming, removing, chmod in the root fs, /etc (its host-provided
    hosts, hostname, resolv.conf too), /input, /proc/sys, /sys and its own cgroup limits,
    mounting over /etc, remounting / read-write: every one refused by the kernel. /output and
    /tmp take its writes (the controls). The input chunk on the daemon is unchanged."""
    attempt = errored(sandbox, start(sandbox, "write"))
    tries = contained(attempt)["tries"]
    assert len(tries) >= 25, tries
    for target in ("/input/chunk", "/sys/fs/cgroup/pids", "/etc/hosts", "/etc/resolv.conf", "/proc/sys", "/hostile"):
        assert any(target in name for name in tries), target
    absent = {"write /proc/sysrq-trigger"}  # a kernel without magic SysRq has no such file
    assert not {n: how for n, how in tries.items() if how not in CANNOT_WRITE and not (n in absent and how == "ENOENT")}
    chunk = b"chunk of write\n"  # /input/chunk is a link to the daemon's cached copy: still intact
    assert (sandbox.daemon.work_dir / "cache" / digest(chunk)[:2] / digest(chunk)).read_bytes() == chunk
    lives_on(sandbox, "the write probe", attempt)


def test_the_hosts_files_cannot_be_read(sandbox: Sandbox) -> None:
    """A world-readable file on the host, by its path and through every /proc/PID/root; the
    image's /etc/shadow and a root-only file; the Docker and containerd sockets; the host's
    disks; the kernel files Docker masks: none yields a byte. It sees one process (itself),
    no descriptor but its own, no variable of the daemon's, and of the host's filesystems only
    its unit's /input (read-only) and /output, and Docker's hosts, hostname and resolv.conf
    (read-only). A link planted as /output/result to the host's file is not followed by the
    daemon: the file's content never reaches the master."""
    folder = Path("/tmp") / f"dockercomp-sandbox-{uuid.uuid4().hex[:12]}"
    folder.mkdir(mode=0o755)
    secret = folder / "host-secret"
    content = f"host secret {uuid.uuid4().hex}\n"
    try:
        secret.write_text(content)
        secret.chmod(0o644)  # any user on the host could read it: only the sandbox keeps it out
        assert Path("/tmp").stat().st_mode & 0o001 and folder.stat().st_mode & 0o005 == 0o005
        params = {"host_file": str(secret)}
        link_job, read_job = start(sandbox, "plant-link", params), start(sandbox, "read", params)
        attempt = errored(sandbox, read_job)
        link = errored(sandbox, link_job)
    finally:
        shutil.rmtree(folder)
    report = contained(attempt)
    tries = report["tries"]
    assert report["pids"] == [1], report["pids"]  # no process of the host, the daemon or the master
    by_path = {name: how for name, how in tries.items() if name.endswith(str(secret))}
    assert len(by_path) == 1 + len(report["pids"]) and set(by_path.values()) == {"ENOENT"}, by_path
    sockets = {name: how for name, how in tries.items() if name.endswith(".sock")}
    assert len(sockets) == 6 and set(sockets.values()) == {"ENOENT"}, sockets
    for disk in ("/dev/vda", "/dev/sda", "/dev/mem"):
        assert tries[f"read {disk}"] == "ENOENT", tries
    for path in ("/etc/shadow", "/proc/1/root/etc/shadow", "/input/../etc/shadow", "/app/root-only"):
        assert tries[f"read {path}"] == "EACCES", tries
    masked = ("/proc/kcore", "/proc/keys", "/proc/timer_list", "/proc/sched_debug", "/sys/firmware", "/proc/acpi",
              "/sys/class/dmi/id/product_serial", "/sys/class/dmi/id/product_uuid")  # fmt: skip
    assert not refused({p: tries[f"read {p}"] for p in masked}, {"empty", "ENOENT", "EACCES"}), tries
    assert tries["mknod a disk in /tmp"] == "EPERM"
    assert content.strip() not in attempt["stderr_tail"]

    mounts = {point: (mode, root) for point, mode, root in report["mounts"]}
    assert set(mounts) == {"/input", "/output", "/etc/hosts", "/etc/hostname", "/etc/resolv.conf"}, mounts
    workdir = f"attempts/{attempt['id']}"
    assert mounts["/input"][0] == "ro" and mounts["/input"][1].endswith(f"{workdir}/input"), mounts
    own_fs = not outputfs.usable()  # /output is then the root of a file system of its own
    assert mounts["/output"][0] == "rw", mounts
    assert mounts["/output"][1] == "/" if own_fs else mounts["/output"][1].endswith(f"{workdir}/output"), mounts
    for name in ("hosts", "hostname", "resolv.conf"):
        assert mounts[f"/etc/{name}"][0] == "ro" and mounts[f"/etc/{name}"][1].endswith(f"/{name}"), mounts
    assert report["fds"] == [0, 1, 2, 3], report["fds"]  # stdio and its own listing of /proc/self/fd
    assert not [name for name in report["env"] if name.startswith(("DOCKERCOMP", "DC_", "DOCKER"))], report["env"]
    assert daemon_token(sandbox.daemon) not in attempt["stderr_tail"]

    # the planted link: the daemon reads /output/result without following links, and says so
    assert link["error"] == "no_result" and "symbolic link" in link["stderr_tail"], link
    assert content.strip() not in link["stderr_tail"]
    lives_on(sandbox, "the read probe and the planted link", attempt, link)


def test_a_setuid_root_binary_stays_unprivileged(sandbox: Sandbox) -> None:
    """The image's setuid-root interpreter (a control checks the bit and the owner) runs with
    the unit's user id as its real, effective and saved one, without a capability, so it can
    neither read a root-only file, nor setuid(0), setgid(0), setgroups, chown to root.
    The image's setuid mount is refused too."""
    attempt = errored(sandbox, start(sandbox, "setuid"))
    report = contained(attempt)
    suid = report["suid_python"]
    assert suid["resuid"] == [65534] * 3 and suid["resgid"] == [65534] * 3, suid
    caps = {k: suid["status"][k] for k in ("CapPrm", "CapEff", "CapBnd", "CapAmb")}
    assert set(caps.values()) == {"0000000000000000"}, caps
    assert suid["status"]["NoNewPrivs"] == "1" and suid["status"]["Seccomp"] == "2", suid
    tries = report["tries"]
    assert tries["suid python: read /app/root-only"] == "EACCES", tries
    for call in ("setuid(0)", "setgid(0)", "setgroups([0])", "chown a file to root"):
        assert tries[f"suid python: {call}"] == "EPERM", tries
    assert tries["suid mount: mount a tmpfs"] != "ok" and "superuser" in report["mount_said"], report
    own = report["own"]
    assert own["resuid"] == [65534] * 3 and own["CapEff"] == own["CapBnd"] == "0000000000000000", own
    lives_on(sandbox, "the setuid probe", attempt)


def test_a_fork_bomb_is_held_at_the_pids_limit_and_the_host_is_unaffected(sandbox: Sandbox) -> None:
    """A shell fork bomb for 8 seconds. The kernel holds it at the pids limit: its cgroup's peak
    is the limit, the forks past it are refused (EAGAIN, counted in pids.events), and the
    engine's own count never passes it. Meanwhile this host still forks at once, the master
    answers, and the daemon keeps heartbeating."""
    job = start(sandbox, "forkbomb", {"seconds": 8}, memory="256MiB")
    engine_counts: list[int] = []
    limits: set[int] = set()
    forks: list[float] = []
    heartbeat_ages: list[float] = []

    def ended() -> bool:
        for container in sandbox.docker.api.containers(filters={"label": f"{LABEL_JOB}={job}"}):
            # an engine asked about a container that is just exiting may answer an empty body
            with contextlib.suppress(docker.errors.APIError, ValueError):
                stats = sandbox.docker.api.stats(container["Id"], stream=False, one_shot=True)
                pids = stats.get("pids_stats") or {}
                if "current" in pids:
                    engine_counts.append(int(pids["current"]))
                    limits.add(int(pids.get("limit") or 0))
        began = time.monotonic()
        subprocess.run(["true"], check=True, timeout=10)
        forks.append(time.monotonic() - began)
        ours = [c for c in clients(sandbox.master) if c["id"] == sandbox.daemon.client]
        heartbeat_ages.append(time.time() - ours[0]["last_seen"])
        return job_status(sandbox.master, job)["state"] in ("done", "failed", "cancelled")

    wait_for(ended, JOB_WAIT, f"the fork bomb's job {job} to end", every=0.3)
    attempt = errored(sandbox, job)
    report = contained(attempt)
    assert report["pids_max"] == PIDS_LIMIT and report["pids_peak_seen"] == PIDS_LIMIT, report
    assert report["pids_peak"] in (None, PIDS_LIMIT), report
    assert report["pids_events_max"] > 0 and report["own_forks"]["refused"].get("EAGAIN", 0) > 0, report
    assert len(engine_counts) >= 3 and max(engine_counts) <= PIDS_LIMIT and limits == {PIDS_LIMIT}, engine_counts
    assert max(engine_counts) >= PIDS_LIMIT * 3 // 4, engine_counts  # the engine saw the bomb at the limit
    assert max(forks) < 2.0, forks
    assert max(heartbeat_ages) < 4.0, heartbeat_ages  # within the master's heartbeat timeout
    lives_on(sandbox, "the fork bomb", attempt)


def test_memory_past_the_limit_is_an_oom(sandbox: Sandbox) -> None:
    """Allocating 16 MiB at a time under a 64 MiB limit: killed, reported as ``oom``; the last
    allocation it lived to report is below the limit, and it never says it was not stopped."""
    attempt = errored(sandbox, start(sandbox, "oom", memory="64MiB"))
    assert (attempt["error"], attempt["exit_code"]) == ("oom", 137), attempt
    tail = attempt["stderr_tail"]
    held = [int(line.split()[2]) for line in tail.splitlines() if line.startswith("hostile: holding ")]
    assert held and max(held) < 64, tail
    assert "not stopped" not in tail and "out of memory (limit 67108864 bytes)" in tail, tail
    lives_on(sandbox, "running out of memory", attempt)


def test_a_full_disk_is_bounded_and_the_work_directory_freed(sandbox: Sandbox) -> None:
    """Two units at once. One writes /output at 50 MiB/s toward 1 GiB: the daemon kills it soon
    after it passes the volunteer's 8 MiB bound, long before it would have finished, and calls it
    ``refused``. The other fills /tmp and /dev/shm: each stops at its 64 MiB (ENOSPC) and the unit
    ends as ``exit_nonzero``. Nothing either wrote is left in the daemon's work directory."""
    output_job = start(sandbox, "fill-output", {"pace": 0.02, "total": 1024})
    tmp_job = start(sandbox, "fill-tmp", memory="256MiB")
    output, tmp = errored(sandbox, output_job), errored(sandbox, tmp_job)

    assert output["error"] == "refused", output
    bound = f"/output holds more than {MAX_RESULT >> 20}.0MiB, all this volunteer allows (max_result)"
    # killed while it wrote, or refused once the kernel had stopped it at the file system's end
    assert output["stderr_tail"] in (f"killed: {bound}", f"refused: {bound}"), output
    assert output["runtime"] is not None and output["runtime"] < 10.0, output  # 1 GiB would take 20s

    report = contained(tmp)
    assert report["tries"] == {"fill /tmp": "ENOSPC", "fill /dev/shm": "ENOSPC"}, report
    for where, written in report["written"].items():
        assert TMP_SIZE - (4 << 20) <= written <= TMP_SIZE, (where, written)

    lives_on(sandbox, "filling the disk", output, tmp)
    assert disk_usage(sandbox.daemon.work_dir) < MAX_RESULT, disk_usage(sandbox.daemon.work_dir)


def test_a_file_unlinked_while_open_in_output_is_bounded_too(sandbox: Sandbox) -> None:
    """Writing /output past the bound through a file unlinked right after it was opened, which
    no walk of the tree can see: /output is a file system of its own (client/outputfs.py), so
    the kernel refuses the write once it is full. The unit is stopped, as ``refused`` when the
    daemon sees it full or as the ENOSPC it exits with; it never holds more than the file
    system's size, and never runs to its end."""
    if why := outputfs.usable():
        skip_or_fail(f"a bounded /output needs root, mkfs.ext4, mount and loop devices: {why}")
    attempt = errored(sandbox, start(sandbox, "fill-output", {"pace": 0.01, "total": 6 * (MAX_RESULT >> 20),
                                                             "hidden": True}))  # fmt: skip
    assert attempt["client"] == sandbox.daemon.client, attempt
    tail = attempt["stderr_tail"]
    assert "not stopped" not in tail, tail
    if attempt["error"] == "exit_nonzero":  # the kernel stopped it before the daemon looked
        [line] = [line for line in tail.splitlines() if line.startswith("hostile: stopped at ")]
        held = int(line.split()[3])
        assert line.endswith(": ENOSPC") and held <= (MAX_RESULT + outputfs.margin(MAX_RESULT)) >> 20, line
    else:
        bound = f"/output holds more than {MAX_RESULT >> 20}.0MiB, all this volunteer allows (max_result)"
        assert (attempt["error"], tail) == ("refused", f"killed: {bound}"), attempt
    lives_on(sandbox, "the hidden file", attempt)
    assert disk_usage(sandbox.daemon.work_dir) < MAX_RESULT, disk_usage(sandbox.daemon.work_dir)
