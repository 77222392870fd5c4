"""The Python API refuses bad input before it sends anything: each refusal says what to fix.
The master here is never reached (nothing listens on its port)."""

from pathlib import Path

import pytest

from dockercomp import Master, MasterError
from dockercomp.protocol.errors import ProtocolError

JOB = {"name": "t", "image": "dockercomp/wordfreq:latest", "command": ["true"]}
SWEEP = JOB | {"sweep": {"start": 0, "end": 3}}


@pytest.fixture
def master() -> Master:
    return Master("http://127.0.0.1:9", timeout=1)


def test_inputs_must_fit_the_job(master: Master, tmp_path: Path) -> None:
    with pytest.raises(ProtocolError, match="is a sweep"):
        master.submit(SWEEP, [b"x"])
    with pytest.raises(ProtocolError, match="give the inputs"):
        master.submit(JOB)
    with pytest.raises(ProtocolError, match="not a readable file"):
        master.submit(JOB, [tmp_path / "missing.txt"])
    with pytest.raises(TypeError, match=r"inputs\[1\] is a int"):
        master.submit(JOB, [b"x", 3])
    with pytest.raises(ProtocolError, match="chunked by files takes the files' paths"):
        master.submit(JOB | {"chunking": {"by": "files", "size": 2}}, [b"x"])
    with pytest.raises(ProtocolError, match="name must be"):
        master.submit(JOB | {"name": "no spaces"}, [b"x"])
    with pytest.raises(ProtocolError, match="not valid JSON"):
        (tmp_path / "job.json").write_text("{")
        master.submit(tmp_path / "job.json", [b"x"])


def test_map_needs_items_it_can_send(master: Master) -> None:
    with pytest.raises(ProtocolError, match="at least one item"):
        master.map("dockercomp/wordfreq:latest", ["true"], [])
    with pytest.raises(TypeError, match="item 1 is neither bytes, text nor JSON"):
        master.map("dockercomp/wordfreq:latest", ["true"], ["a", object()])
    with pytest.raises(ProtocolError, match="not a sweep"):
        master.map("dockercomp/wordfreq:latest", ["true"], ["a"], sweep={"start": 0, "end": 2})


def test_a_unit_is_named_by_its_number_or_id(master: Master) -> None:
    for bad in ("x", "-1", "other.1", "1" * 12):
        with pytest.raises(MasterError, match="is not a unit's number or id") as refused:
            master.unit("job", bad)
        assert refused.value.bad_input
