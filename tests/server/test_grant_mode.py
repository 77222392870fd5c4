"""The execution mode a grant carries: a service-mode job's map units run in service mode, its
one reduce unit in batch mode (a batch command of its own); a batch job's units in batch mode."""

import pytest

from dockercomp.protocol.jobfile import parse_jobfile
from dockercomp.protocol.messages import UnitKind
from dockercomp.server.models import InputFile, Unit, UnitState
from dockercomp.server.store.base import grant


@pytest.mark.parametrize(
    ("mode", "kind", "expected"),
    [
        ("service", UnitKind.MAP, "service"),
        ("service", UnitKind.REDUCE, "batch"),
        ("batch", UnitKind.MAP, "batch"),
        ("batch", UnitKind.REDUCE, "batch"),
    ],
)
def test_a_grant_carries_its_units_mode(mode: str, kind: UnitKind, expected: str) -> None:
    spec = parse_jobfile({"name": "w", "image": "dockercomp/wordfreq", "mode": mode, "command": ["serve"],
                          "reduce": {"command": ["reduce"]}})  # fmt: skip
    unit = Unit("u1", "j1", 0, kind, UnitState.READY, 1, [InputFile("chunk", "0" * 32, 1)])
    g = grant("j1", spec, unit, "a1", 100.0)
    assert g.mode == expected
    assert g.command == (["reduce"] if kind == UnitKind.REDUCE else ["serve"])
