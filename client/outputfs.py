"""A bounded /output: each attempt's output directory on a file system of its own.

Walking /output's tree (docker_runner) sees every file with a name, but a file unlinked while
it is still open keeps its blocks under no name, so a unit could fill the volunteer's disk
unseen. Here the kernel keeps the bound instead: the output directory is a small ext4 file
system on a sparse image in the attempt's directory (``mkfs.ext4``, then ``mount -o loop``),
a little larger than the volunteer's ``max_result``. Writing past it fails with ENOSPC, named
or not, and the image never takes more of the disk than its size. ``full`` tells the runner
when a unit has used it up, hidden files included, so it is stopped as ``refused``.

Mounting needs root and the two programs; a daemon without them keeps the tree walk alone and
says so once. The programs get fixed arguments and our own paths, never anything from the master.
"""

import logging
import os
import re
import shutil
import stat
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)

MIB = 1 << 20
_TOOL_TIMEOUT = 60.0
_SBIN = "/usr/sbin:/sbin:/usr/bin:/bin"
_TOOLS = ("mkfs.ext4", "mount", "umount")
_OCTAL = re.compile(r"\\([0-7]{3})")  # how /proc/self/mounts writes a space or a newline in a path
_warned = False


def margin(limit: int) -> int:
    """Room above the bound: the file system's own metadata, and enough that a unit is seen past
    the bound (by the walk) before the kernel refuses it. ``full`` means it is all but used up."""
    return max(2 * MIB, limit // 16)


def usable() -> str:
    """Why this daemon cannot mount bounded output file systems, or ""."""
    if os.geteuid() != 0:
        return "the daemon does not run as root"
    missing = [tool for tool in _TOOLS if shutil.which(tool, path=_SBIN) is None]
    if missing:
        return f"{', '.join(missing)} not found"
    if not os.path.exists("/dev/loop-control"):
        return "this host has no loop devices (/dev/loop-control)"
    return ""


@contextmanager
def bounded(output_dir: str, limit: int) -> Iterator[bool]:
    """Mount a fresh file system of ``limit`` plus a margin on the (empty) ``output_dir`` for the
    block's duration; yields whether it is mounted (False: the walk alone bounds it). The image
    lies beside the directory and goes with the attempt's directory."""
    why = usable() if limit > 0 else "no bound"
    if why:
        _warn_once(why)
        yield False
        return
    image, before = output_dir.rstrip("/") + ".img", os.stat(output_dir)
    try:
        with open(image, "wb") as f:
            f.truncate(limit + margin(limit))  # sparse: blocks are taken as the unit writes
        _tool("mkfs.ext4", "-q", "-F", "-O", "^has_journal", "-m", "0", "-E", "nodiscard", image)
        _tool("mount", "-t", "ext4", "-o", "loop,nodev,nosuid,noexec", image, output_dir)
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("cannot mount a bounded /output (%s); bounding it by walking its tree", exc)
        yield False
        return
    try:
        os.rmdir(os.path.join(output_dir, "lost+found"))  # /output starts as the plain directory did
        os.chown(output_dir, before.st_uid, before.st_gid)
        os.chmod(output_dir, stat.S_IMODE(before.st_mode))
        yield True
    finally:
        try:
            _tool("umount", output_dir)
        except (OSError, subprocess.SubprocessError):  # held by a process still going: detach it
            try:
                _tool("umount", "-l", output_dir)
            except (OSError, subprocess.SubprocessError) as exc:
                log.error("cannot unmount the bounded /output at %s: %s", output_dir, exc)


def full(output_dir: str, limit: int) -> bool:
    """Whether the mounted file system at ``output_dir`` is all but used up: more than the bound
    is held in it, by files with names or without."""
    try:
        st = os.statvfs(output_dir)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < margin(limit) // 4


def unmount_under(root: str) -> None:
    """Unmount what a crashed daemon left mounted below ``root`` (its attempts' output file systems)."""
    prefix = os.path.realpath(root).rstrip("/") + "/"
    try:
        with open("/proc/self/mounts", encoding="utf-8", errors="replace") as f:
            points = [_OCTAL.sub(lambda m: chr(int(m[1], 8)), line.split()[1]) for line in f if " " in line]
    except OSError:
        return
    for point in sorted(points, reverse=True):  # deepest first
        if point.startswith(prefix):
            try:
                _tool("umount", "-l", point)
            except (OSError, subprocess.SubprocessError) as exc:
                log.warning("cannot unmount %s, left by an earlier run: %s", point, exc)


def _tool(name: str, *args: str) -> None:
    path = shutil.which(name, path=_SBIN) or name
    done = subprocess.run(
        [path, *args], capture_output=True, text=True, errors="replace", timeout=_TOOL_TIMEOUT,
        env={"PATH": _SBIN, "LC_ALL": "C"},
    )  # fmt: skip
    if done.returncode != 0:
        raise OSError(f"{name} exited {done.returncode}: {done.stderr.strip()[-300:]}")


def _warn_once(why: str) -> None:
    global _warned
    if not _warned and why != "no bound":
        _warned = True
        log.warning("/output is bounded by walking its tree only (%s): a file unlinked while open escapes "
                    "the walk; run the daemon as root for a bound the kernel keeps", why)  # fmt: skip
