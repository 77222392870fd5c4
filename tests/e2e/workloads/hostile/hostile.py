"""A hostile workload: each mode tries one way out of its sandbox and reports what it saw.

    python3 hostile.py MODE [PARAMS]

PARAMS is a JSON object (the host's addresses, a port, a path on the host). The probing modes
(network, write, read, setuid, forkbomb, fill-tmp) end by printing one line to stderr,
``hostile: {JSON}``, with each try and how it ended ("ok" when it got through, else the
errno's name, e.g. "EROFS"), and the controls (tries that must work, so that a refusal
proves something), then exits

    3  contained: every try was refused and every control worked
    4  escaped: at least one try got through
    5  broken: a control failed, so the refusals prove nothing

Modes:
    echo          a well-behaved unit: /input/chunk upper-cased to /output/result
    network       connect to the host, the internet and DNS servers, resolve a name, open raw sockets
    write         write outside /output: the root fs, /etc, /input, /proc/sys, /sys, its cgroup limits
    read          reach what is the host's: a file by its host path, through /proc/*/root, the Docker
                  socket, the disk, masked kernel files; list its mounts, open fds and environment
    setuid        run the image's setuid-root interpreter and mount, and try to become root
    forkbomb      start a shell fork bomb, watch the pids cgroup for SECONDS, report, exit
    oom           allocate memory until the limit stops it, saying how far it got
    fill-output   write /output/fill at a steady pace until it is stopped ("hidden": unlinked first);
                  refused by a full file system, it exits 3 saying how much it held; not
                  stopped, it says how much it wrote in /output/result
    fill-tmp      fill /tmp, then /dev/shm, until each is full
    plant-link    leave /output/result as a link to a path on the host and exit 0
    serve         accept connections on a port until stopped (a multi-container unit's peer)
"""

import ctypes
import errno
import json
import os
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

SUID_PYTHON = "/app/suid-python3"
ROOT_ONLY = "/app/root-only"
MIB = 1 << 20


def outcome(action: Callable[[], object]) -> str:
    """How one try ended: "ok", the errno's name, or what else stopped it."""
    try:
        result = action()
    except socket.gaierror as exc:
        return next((n for n in dir(socket) if n.startswith("EAI_") and getattr(socket, n) == exc.errno), "EAI")
    except OSError as exc:
        return errno.errorcode.get(exc.errno or 0, type(exc).__name__)
    except Exception as exc:
        return type(exc).__name__
    return result if isinstance(result, str) else "ok"


def report(mode: str, tries: dict[str, str], controls: dict[str, str], **extra: Any) -> int:
    print("hostile: " + json.dumps({"mode": mode, "tries": tries, "controls": controls, **extra}), file=sys.stderr)
    if any(value != "ok" for value in controls.values()):
        return 5
    return 4 if any(value == "ok" for value in tries.values()) else 3


# -- network -----------------------------------------------------------------------------------


def tcp(host: str, port: int) -> Callable[[], object]:
    def connect() -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.settimeout(3)
            s.connect((host, port))

    return connect


def udp(host: str, port: int) -> Callable[[], object]:
    """A datagram sent: "sent" when the kernel took it (whether it arrived, the receiver knows)."""

    def send() -> str:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.sendto(b"hostile", (host, port))
        return "sent"

    return send


def dns_query(server: str) -> Callable[[], object]:
    """A DNS question for example.com sent over UDP; "ok" only when an answer comes back."""
    question = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x07example\x03com\x00\x00\x01\x00\x01"

    def ask() -> str:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(2)
            s.sendto(question, (server, 53))
            try:
                s.recvfrom(512)
            except TimeoutError:
                return "no answer"
        return "ok"

    return ask


def loopback_control() -> None:
    """The sandbox's own loopback works: the socket code above is sound."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        with socket.create_connection(server.getsockname(), timeout=3):
            server.accept()[0].close()


def network(params: dict[str, Any]) -> int:
    """Every try at once (on threads), so that those a silent network leaves waiting cost the
    longest wait once. Then what its own kernel learnt: its interfaces, its default gateway, and
    which neighbours answered (a complete ARP entry) and which never did."""
    controls = {"tcp to its own loopback": outcome(loopback_control)}
    peers = {}
    for peer in params.get("peers", []):  # its unit's other containers, by name
        host, _, port = peer.rpartition(":")
        controls[f"tcp {peer}"] = outcome(retried(tcp(host, int(port))))
        peers[host] = socket.gethostbyname(host)
    actions: dict[str, Callable[[], object]] = {}
    for host in [*params.get("hosts", []), "127.0.0.1"]:
        for port in params.get("ports", []):
            actions[f"tcp {host}:{port}"] = tcp(host, int(port))
            actions[f"udp {host}:{port}"] = udp(host, int(port))
    for host, target in (("1.1.1.1", 443), ("1.1.1.1", 80), ("8.8.8.8", 53), ("2606:4700:4700::1111", 443)):
        actions[f"tcp {host}:{target}"] = tcp(host, target)
    for server in [*params.get("nameservers", []), "1.1.1.1", "8.8.8.8"]:
        actions[f"dns udp {server}"] = dns_query(server)
    actions["resolve example.com"] = lambda: socket.getaddrinfo("example.com", 443)
    actions["udp broadcast"] = broadcast
    actions["raw icmp socket"] = lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    actions["packet socket"] = lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    with ThreadPoolExecutor(max_workers=len(actions)) as pool:
        tries = dict(zip(actions, pool.map(outcome, actions.values()), strict=True))
    return report(
        "network",
        tries,
        controls,
        interfaces=sorted(os.listdir("/sys/class/net")),
        gateway=gateway(),
        arp=arp(),
        peers=peers,
    )


def gateway() -> str | None:
    """The IPv4 default route's gateway, if it has one."""
    with open("/proc/net/route") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if fields[1] == "00000000":
                return socket.inet_ntoa(struct.pack("<I", int(fields[2], 16)))
    return None


def arp() -> list[list[str]]:
    """Its ARP table: [address, "answered" or "silent"] (a neighbour that never answered has
    no hardware address)."""
    with open("/proc/net/arp") as f:
        rows = [line.split() for line in f.readlines()[1:]]
    return [[row[0], "answered" if int(row[2], 16) & 0x2 else "silent"] for row in rows]


def broadcast() -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        s.sendto(b"hostile", ("255.255.255.255", 9))
    return "sent"


def retried(action: Callable[[], object], seconds: float = 15.0) -> Callable[[], object]:
    """``action`` tried again until it works or ``seconds`` pass (a peer may still be starting)."""

    def again() -> object:
        deadline = time.monotonic() + seconds
        while True:
            try:
                return action()
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    return again


def serve(params: dict[str, Any]) -> int:
    """A unit's other container: accept connections on ``port`` until the unit ends."""
    with socket.create_server(("", int(params.get("port", 7000)))) as server:
        while True:
            server.accept()[0].close()


# -- writing outside /output ---------------------------------------------------------------------


def create(path: str) -> Callable[[], object]:
    def write() -> None:
        with open(path, "xb") as f:
            f.write(b"hostile\n")

    return write


def append(path: str) -> Callable[[], object]:
    def write() -> None:
        with open(path, "ab") as f:
            f.write(b"hostile\n")

    return write


def overwrite(path: str, data: bytes) -> Callable[[], object]:
    def write() -> None:
        with open(path, "wb", buffering=0) as f:
            f.write(data)

    return write


def mount_tmpfs(target: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mount(b"none", target.encode(), b"tmpfs", 0, None) != 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))


def cgroup_file(v1: str, v2: str) -> str:
    return v1 if os.path.exists(v1) else v2


def write(params: dict[str, Any]) -> int:
    tries: dict[str, str] = {}
    for path in ("/hostile", "/etc/hostile", "/app/hostile", "/usr/bin/hostile", "/var/tmp/hostile",
                 "/root/hostile", "/input/hostile", "/dev/hostile", "/sys/fs/cgroup/hostile"):  # fmt: skip
        tries[f"create {path}"] = outcome(create(path))
    for path in ("/etc/passwd", "/etc/hosts", "/etc/resolv.conf", "/etc/hostname", "/app/hostile.py", "/input/chunk"):
        tries[f"append {path}"] = outcome(append(path))
    pids_max = cgroup_file("/sys/fs/cgroup/pids/pids.max", "/sys/fs/cgroup/pids.max")
    memory_max = cgroup_file("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory.max")
    kernel = [("/proc/sys/kernel/hostname", b"hostile"), ("/proc/sysrq-trigger", b"h"),
              ("/sys/kernel/uevent_helper", b"/tmp/hostile"), (pids_max, b"max"), (memory_max, b"-1")]  # fmt: skip
    for path, data in kernel:
        tries[f"write {path}"] = outcome(overwrite(path, data))
    tries["mkdir /hostile"] = outcome(lambda: os.mkdir("/hostile"))
    tries["symlink /hostile-link"] = outcome(lambda: os.symlink("/output", "/hostile-link"))
    tries["unlink /input/chunk"] = outcome(lambda: os.unlink("/input/chunk"))
    tries["rename /input/chunk"] = outcome(lambda: os.rename("/input/chunk", "/input/moved"))
    tries["chmod /input/chunk"] = outcome(lambda: os.chmod("/input/chunk", 0o777))
    tries["chmod /etc/passwd"] = outcome(lambda: os.chmod("/etc/passwd", 0o666))
    tries["mount tmpfs on /etc"] = outcome(lambda: mount_tmpfs("/etc"))
    tries["remount / read-write"] = outcome(remount_root)
    controls = {
        "create /output/control": outcome(create("/output/control")),
        "create /tmp/control": outcome(create("/tmp/control")),
    }
    return report("write", tries, controls)


def remount_root() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    ms_remount = 32
    if libc.mount(None, b"/", None, ms_remount, None) != 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))


# -- reading the host's ------------------------------------------------------------------------


def read_file(path: str) -> Callable[[], object]:
    """ "ok" when it holds something; "empty" for a file or folder masked empty."""

    def read() -> str:
        if os.path.isdir(path):
            return "ok" if os.listdir(path) else "empty"
        with open(path, "rb") as f:
            return "ok" if f.read(4096) else "empty"

    return read


def unix_connect(path: str) -> Callable[[], object]:
    def connect() -> None:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(3)
            s.connect(path)

    return connect


def host_mounts() -> list[list[str]]:
    """The mounts that show a filesystem of the host (not proc, sysfs, tmpfs, cgroups, the
    image's overlay), and the unit's own /input and /output whatever the host keeps them on:
    [mount point, "ro" or "rw", the folder of the host it shows]."""
    virtual = {"proc", "sysfs", "tmpfs", "devpts", "mqueue", "cgroup", "cgroup2", "overlay", "shm"}
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            fstype = fields[fields.index("-") + 1]
            if fstype not in virtual or fields[4] in ("/input", "/output"):
                found.append([fields[4], fields[5].split(",")[0], fields[3]])
    return sorted(found)


def read(params: dict[str, Any]) -> int:
    secret = str(params["host_file"])
    pids = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
    tries: dict[str, str] = {f"read {secret}": outcome(read_file(secret))}
    for pid in pids:
        tries[f"read /proc/{pid}/root{secret}"] = outcome(read_file(f"/proc/{pid}/root{secret}"))
    for path in ("/etc/shadow", "/proc/1/root/etc/shadow", "/input/../etc/shadow", ROOT_ONLY):
        tries[f"read {path}"] = outcome(read_file(path))
    for path in ("/var/run/docker.sock", "/run/docker.sock", "/run/containerd/containerd.sock"):
        tries[f"connect {path}"] = outcome(unix_connect(path))
        tries[f"read {path}"] = outcome(read_file(path))
    for path in ("/proc/kcore", "/proc/keys", "/proc/timer_list", "/proc/sched_debug", "/sys/firmware",
                 "/proc/acpi", "/sys/class/dmi/id/product_serial", "/sys/class/dmi/id/product_uuid", "/dev/vda",
                 "/dev/sda", "/dev/mem"):  # fmt: skip
        tries[f"read {path}"] = outcome(read_file(path))
    tries["mknod a disk in /tmp"] = outcome(lambda: os.mknod("/tmp/disk", 0o600 | 0o060000, os.makedev(254, 0)))
    controls = {path: outcome(read_file(path)) for path in ("/input/chunk", "/etc/passwd")}
    return report(
        "read",
        tries,
        controls,
        pids=pids,
        mounts=host_mounts(),
        fds=sorted(int(fd) for fd in os.listdir("/proc/self/fd")),
        env=dict(os.environ),
    )


# -- setuid ------------------------------------------------------------------------------------

# What the setuid-root interpreter does once it runs: its credentials, and whether it can act as root.
ESCALATE = r"""
import json, os, sys
sys.path.insert(0, "/app")
from hostile import outcome, read_file
status = dict(line.rstrip("\n").split(":\t", 1) for line in open("/proc/self/status") if ":\t" in line)
open("/tmp/owned-by-root", "w").close()
print(json.dumps({
    "resuid": os.getresuid(), "resgid": os.getresgid(),
    "status": {k: status[k] for k in ("CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs", "Seccomp")},
    "tries": {
        "read /app/root-only": outcome(read_file("/app/root-only")),
        "setuid(0)": outcome(lambda: os.setuid(0)),
        "setgid(0)": outcome(lambda: os.setgid(0)),
        "setgroups([0])": outcome(lambda: os.setgroups([0])),
        "chown a file to root": outcome(lambda: os.chown("/tmp/owned-by-root", 0, 0)),
    },
}))
"""


def proc_status() -> dict[str, str]:
    with open("/proc/self/status") as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


def setuid(params: dict[str, Any]) -> int:
    st = os.stat(SUID_PYTHON)
    mount = os.stat("/usr/bin/mount")
    controls = {
        f"{SUID_PYTHON} is setuid root": "ok" if st.st_mode & 0o4000 and st.st_uid == 0 else oct(st.st_mode),
        "/usr/bin/mount is setuid root": "ok" if mount.st_mode & 0o4000 and mount.st_uid == 0 else oct(mount.st_mode),
        f"{ROOT_ONLY} is root's alone": "ok" if os.stat(ROOT_ONLY).st_uid == 0 else "not root's",
    }
    child = subprocess.run([SUID_PYTHON, "-c", ESCALATE], capture_output=True, text=True, timeout=30)
    seen: dict[str, Any] = {"error": child.stderr[-300:], "tries": {}}
    if child.returncode == 0:
        seen = json.loads(child.stdout)
    tries = {f"suid python: {name}": value for name, value in seen["tries"].items()}
    tries["suid python: euid 0"] = "ok" if seen.get("resuid", [0, 0, 0])[1] == 0 else "EPERM"
    os.mkdir("/tmp/mnt")
    mounted = subprocess.run(["/usr/bin/mount", "-t", "tmpfs", "none", "/tmp/mnt"], capture_output=True, text=True)
    tries["suid mount: mount a tmpfs"] = "ok" if mounted.returncode == 0 else f"exit {mounted.returncode}"
    own = proc_status()
    return report(
        "setuid",
        tries,
        controls,
        suid_python=seen,
        mount_said=mounted.stderr.strip()[-200:],
        own={"resuid": os.getresuid(), **{k: own[k] for k in ("CapEff", "CapBnd", "NoNewPrivs", "Seccomp")}},
    )


# -- resources ---------------------------------------------------------------------------------


def pids_file(name: str) -> str:
    return cgroup_file(f"/sys/fs/cgroup/pids/{name}", f"/sys/fs/cgroup/{name}")


def read_int(path: str) -> int:
    with open(path) as f:
        text = f.read().strip()
    return -1 if text == "max" else int(text)


def forkbomb(params: dict[str, Any]) -> int:
    """A shell fork bomb in the background: every process forks forever. This process (PID 1)
    watches the pids cgroup and tries to fork itself; when it exits, the bomb dies with it."""
    seconds = float(params.get("seconds", 6))
    bomb = subprocess.Popen(["/bin/sh", "-c", "f() { while :; do f & done; }; f"], stderr=subprocess.DEVNULL)
    deadline, peak, forked = time.monotonic() + seconds, 0, 0
    refused: dict[str, int] = {}
    while time.monotonic() < deadline:
        peak = max(peak, read_int(pids_file("pids.current")))
        try:
            pid = os.fork()
        except OSError as exc:
            name = errno.errorcode.get(exc.errno or 0, "?")
            refused[name] = refused.get(name, 0) + 1
        else:
            if pid == 0:
                os._exit(0)
            forked += 1
            os.waitpid(pid, 0)
        time.sleep(0.05)
    with open(pids_file("pids.events")) as f:
        events = dict(line.split() for line in f if line.strip())
    peak_file = pids_file("pids.peak")
    tries = {"fork past the pids limit": "ok" if peak > read_int(pids_file("pids.max")) else "EAGAIN"}
    return report(
        "forkbomb",
        tries,
        {"the bomb started": "ok" if bomb.pid else "no"},
        pids_max=read_int(pids_file("pids.max")),
        pids_peak_seen=peak,
        pids_peak=read_int(peak_file) if os.path.exists(peak_file) else None,
        pids_events_max=int(events.get("max", 0)),
        own_forks={"ok": forked, "refused": refused},
    )


def oom(params: dict[str, Any]) -> int:
    hog = []
    for _ in range(256):  # up to 4 GiB, far past any limit a test sets
        hog.append(bytearray(b"x" * (16 * MIB)))  # written, so every page is really used
        print(f"hostile: holding {len(hog) * 16} MiB", file=sys.stderr, flush=True)
    print(f"hostile: allocated {len(hog) * 16} MiB and was not stopped", file=sys.stderr)
    return 4


def fill_output(params: dict[str, Any]) -> int:
    """Write 1 MiB every ``pace`` seconds, up to ``total`` MiB: a unit that fills the disk
    steadily, so that being stopped early is plain from how long it ran."""
    pace, total = float(params.get("pace", 0.02)), int(params.get("total", 1024))
    block = b"x" * MIB
    with open("/output/fill", "wb", buffering=0) as f:
        if params.get("hidden"):  # unlinked while open: its blocks are taken, but no name shows them
            os.unlink("/output/fill")
        for written in range(1, total + 1):
            try:
                f.write(block)
            except OSError as exc:  # the file system under /output is full
                held = os.fstat(f.fileno()).st_blocks * 512 // MIB
                print(f"hostile: stopped at {held} MiB in /output: {errno.errorcode.get(exc.errno or 0, '?')}",
                      file=sys.stderr)  # fmt: skip
                return 3
            if written % 16 == 0:
                print(f"hostile: wrote {written} MiB to /output", file=sys.stderr, flush=True)
            time.sleep(pace)
        held = os.fstat(f.fileno()).st_blocks * 512 // MIB
    print(f"hostile: wrote {total} MiB to /output ({held} MiB on disk) and was not stopped", file=sys.stderr)
    with open("/output/result", "w") as result:
        result.write(f"{held} MiB written to /output, unseen\n")
    return 0


def fill(directory: str) -> tuple[int, str]:
    """Write a file in ``directory`` until it is full; the bytes written and the errno that
    stopped it. The file is removed after."""
    path, written, block = os.path.join(directory, "fill"), 0, b"x" * MIB
    try:
        with open(path, "wb", buffering=0) as f:
            while written < 4096 * MIB:
                written += f.write(block) or 0
    except OSError as exc:
        return written, errno.errorcode.get(exc.errno or 0, "?")
    finally:
        if os.path.exists(path):
            os.unlink(path)
    return written, "ok"


def fill_tmp(params: dict[str, Any]) -> int:
    tmp_bytes, tmp_stop = fill("/tmp")
    shm_bytes, shm_stop = fill("/dev/shm")
    tries = {"fill /tmp": tmp_stop, "fill /dev/shm": shm_stop}
    controls = {"/tmp is empty again": "ok" if not os.listdir("/tmp") else "not empty"}
    return report("fill-tmp", tries, controls, written={"/tmp": tmp_bytes, "/dev/shm": shm_bytes})


def plant_link(params: dict[str, Any]) -> int:
    os.symlink(str(params["host_file"]), "/output/result")
    return 0


def echo(params: dict[str, Any]) -> int:
    with open("/input/chunk", "rb") as f:
        data = f.read()
    with open("/output/result", "wb") as out:
        out.write(data.upper())
    return 0


MODES: dict[str, Callable[[dict[str, Any]], int]] = {
    "echo": echo,
    "network": network,
    "write": write,
    "read": read,
    "setuid": setuid,
    "forkbomb": forkbomb,
    "oom": oom,
    "fill-output": fill_output,
    "fill-tmp": fill_tmp,
    "plant-link": plant_link,
    "serve": serve,
}


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in MODES:
        print(f"usage: hostile.py {{{','.join(MODES)}}} [PARAMS-JSON]", file=sys.stderr)
        return 2
    return MODES[argv[0]](json.loads(argv[1]) if len(argv) > 1 else {})


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
