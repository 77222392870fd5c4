"""The bounded /output file system (client/outputfs.py), on this host's real mount and loop devices."""

import errno
import os
import subprocess
from pathlib import Path

import pytest

from dockercomp.client import outputfs
from tests.needs import skip_or_fail

MIB = 1 << 20
LIMIT = 8 * MIB


@pytest.fixture
def output_dir(tmp_path: Path) -> Path:
    if why := outputfs.usable():
        skip_or_fail(f"a bounded /output needs root, mkfs.ext4, mount and loop devices: {why}")
    path = tmp_path / "output"
    path.mkdir(mode=0o777)
    os.chmod(path, 0o777)
    return path


def mounted(path: Path) -> bool:
    return os.path.ismount(path)


def test_it_starts_empty_as_the_directory_was_and_is_gone_after(output_dir: Path) -> None:
    with outputfs.bounded(str(output_dir), LIMIT) as bounded:
        assert bounded and mounted(output_dir)
        assert list(output_dir.iterdir()) == []  # no lost+found
        assert os.stat(output_dir).st_mode & 0o777 == 0o777
        (output_dir / "result").write_bytes(b"42\n")
        assert not outputfs.full(str(output_dir), LIMIT)
    assert not mounted(output_dir) and list(output_dir.iterdir()) == []
    image = output_dir.parent / "output.img"
    assert image.stat().st_size == LIMIT + outputfs.margin(LIMIT)  # sparse, removed with the attempt


def test_a_file_unlinked_while_open_cannot_pass_its_size(output_dir: Path) -> None:
    """What no walk sees: the kernel refuses the write, and ``full`` says so while it is held."""
    with outputfs.bounded(str(output_dir), LIMIT):
        written, refused = 0, 0
        with open(output_dir / "hidden", "wb", buffering=0) as f:
            os.unlink(output_dir / "hidden")
            try:
                while written < 64 * MIB:
                    written += f.write(b"x" * MIB) or 0
            except OSError as exc:
                refused = exc.errno or 0
            assert refused == errno.ENOSPC
            assert LIMIT < written <= LIMIT + outputfs.margin(LIMIT), written
            assert list(output_dir.iterdir()) == [] and outputfs.full(str(output_dir), LIMIT)
        assert not outputfs.full(str(output_dir), LIMIT)  # closed: its blocks are free again


def test_what_a_crashed_daemon_left_mounted_is_unmounted(output_dir: Path, tmp_path: Path) -> None:
    image = tmp_path / "left.img"
    with open(image, "wb") as f:
        f.truncate(4 * MIB)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True)
    subprocess.run(["mount", "-o", "loop", str(image), str(output_dir)], check=True)
    assert mounted(output_dir)
    outputfs.unmount_under(str(tmp_path))
    assert not mounted(output_dir)


def test_no_bound_mounts_nothing(tmp_path: Path) -> None:
    with outputfs.bounded(str(tmp_path), 0) as bounded:
        assert not bounded and not mounted(tmp_path)
