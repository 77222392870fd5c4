"""Wire messages: round trips for every class, and the generic from_wire validator refusing
wrong types, missing and unknown fields with a message naming the field."""

import copy
import dataclasses
import re
import types
import typing
from enum import StrEnum
from typing import get_type_hints

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dockercomp.protocol import codec
from dockercomp.protocol.errors import ProtocolError
from dockercomp.protocol.images import ImageInfo, LayerInfo, SignatureInfo
from dockercomp.protocol.messages import (
    Ack,
    AckBatch,
    Command,
    ContainerInfo,
    ContainerSpec,
    ErrorKind,
    Grant,
    Heartbeat,
    HeartbeatReply,
    HostFacts,
    InputRef,
    LeaseReply,
    LeaseRequest,
    Message,
    RegisterReply,
    RegisterRequest,
    ReleaseRequest,
    ResultBatch,
    ResultReport,
)

HASH = "0123456789abcdef0123456789abcdef"

# One complete, valid wire form of every message (every field present).
SAMPLES: dict[type[Message], dict] = {
    HostFacts: {"cores": 8, "memory": 16 << 30, "os": "linux", "arch": "x86_64", "docker": "26.1.5", "gpus": 1},
    RegisterRequest: {
        "name": "laptop",
        "slots": 4,
        "host": {"cores": 8, "memory": 1 << 30, "os": "linux", "arch": "arm64", "docker": "24", "gpus": 0},
    },
    RegisterReply: {"client": "c1", "token": "t", "heartbeat_interval": 10.0},
    ContainerInfo: {
        "container": "0123456789ab",
        "attempt": "a1",
        "unit": "u1",
        "job": "j1",
        "image": "dockercomp/wordfreq",
        "cpus": 1.0,
        "memory": 256 << 20,
        "state": "running",
        "started_at": 1.5,
        "cpu_percent": 12.5,
        "memory_usage": 1 << 20,
    },
    Heartbeat: {
        "slots": 2,
        "busy": 1,
        "containers": [
            {
                "container": "0123456789ab",
                "attempt": "a1",
                "unit": "u1",
                "job": "j1",
                "image": "img",
                "cpus": 0.5,
                "memory": 1 << 20,
                "state": "running",
                "started_at": 0.0,
                "cpu_percent": None,
                "memory_usage": None,
            }
        ],
        "paused": True,
        "memory": 1 << 30,
        "gpus": 0,
        "disk": 10 << 30,
    },
    Command: {"action": "pause", "attempt": "a1"},
    HeartbeatReply: {"commands": [{"action": "abort", "attempt": "a1"}], "interval": 10.0},
    LeaseRequest: {
        "max_units": 4,
        "cpus": 2.0,
        "memory": 1 << 30,
        "images": ["dockercomp/wordfreq"],
        "gpus": 1,
        "disk": 1 << 30,
    },
    InputRef: {"name": "input", "hash": HASH, "size": 10, "url": "/api/v1/blobs/" + HASH, "data": None},
    Grant: {
        "attempt": "a1",
        "job": "j1",
        "unit": "u1",
        "kind": "map",
        "image": "dockercomp/wordfreq",
        "command": ["python3", "/app/map.py"],
        "env": {"LANG": "C.UTF-8"},
        "cpus": 1.0,
        "memory": 256 << 20,
        "timeout": 300.0,
        "deadline": 1e9,
        "inputs": [{"name": "input", "hash": HASH, "size": 10, "url": "/x", "data": None}],
        "mode": "batch",
        "sidecars": [{"name": "kv", "image": "sha256:" + "ab" * 32, "command": ["python3", "/kv.py"], "env": {}}],
        "main_name": "main",
        "gpus": 1,
    },
    ContainerSpec: {"name": "kv", "image": "dockercomp/kv", "command": [], "env": {"PORT": "7000"}},
    LeaseReply: {"attempts": [], "retry_after": 5.0},
    ResultReport: {
        "attempt": "a1",
        "status": "succeeded",
        "error": None,
        "exit_code": 0,
        "output_hash": HASH,
        "output": b"out",
        "output_size": 3,
        "stderr_tail": "warning",
        "runtime": 1.25,
        "peak_memory": 1 << 20,
    },
    ResultBatch: {
        "results": [
            {
                "attempt": "a1",
                "status": "succeeded",
                "error": None,
                "exit_code": 0,
                "output_hash": HASH,
                "output": None,
                "output_size": 12,
                "stderr_tail": "",
                "runtime": 0.5,
                "peak_memory": None,
            },
            {
                "attempt": "a2",
                "status": "errored",
                "error": "oom",
                "exit_code": 137,
                "output_hash": None,
                "output": None,
                "output_size": None,
                "stderr_tail": "Killed",
                "runtime": 2.0,
                "peak_memory": 256 << 20,
            },
        ]
    },
    Ack: {"attempt": "a1", "accepted": True, "reason": "", "again": False},
    AckBatch: {"acks": [{"attempt": "a1", "accepted": False, "reason": "duplicate", "again": False}]},
    ReleaseRequest: {"attempts": ["a1", "a2"]},
    LayerInfo: {"digest": "sha256:" + "a" * 64, "size": 3, "pieces": [HASH]},
    SignatureInfo: {"key": "f" * 64, "public_key": "0" * 64, "signature": "1" * 128},
    ImageInfo: {
        "id": "sha256:" + "b" * 64,
        "config": HASH,
        "config_size": 1024,
        "layers": [{"digest": "sha256:" + "a" * 64, "size": 3, "pieces": [HASH]}],
        "tags": ["dockercomp/wordfreq:latest"],
        "signatures": [{"key": "f" * 64, "public_key": "0" * 64, "signature": "1" * 128}],
        "owner": "operator",
        "pushed_at": 1.5,
    },
}


def all_messages() -> list[type[Message]]:
    found, todo = [], list(Message.__subclasses__())
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo.extend(cls.__subclasses__())
    return sorted(found, key=lambda c: c.__name__)


MESSAGES = [pytest.param(cls, id=cls.__name__) for cls in all_messages()]


def fields_of(cls):
    hints = get_type_hints(cls)
    return [(f, hints[f.name]) for f in dataclasses.fields(cls)]


def required(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def test_every_message_has_a_sample():
    assert set(SAMPLES) == set(all_messages())


# -- round trips --------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", MESSAGES)
def test_sample_round_trips(cls):
    message = cls.from_wire(copy.deepcopy(SAMPLES[cls]))
    assert isinstance(message, cls)
    assert message.to_wire() == SAMPLES[cls]
    assert cls.from_wire(message.to_wire()) == message
    assert cls.from_wire(codec.unpack(codec.pack(message.to_wire()))) == message


@pytest.mark.parametrize("cls", MESSAGES)
def test_only_required_fields_gives_the_defaults(cls):
    minimal = {f.name: SAMPLES[cls][f.name] for f, _ in fields_of(cls) if required(f)}
    if cls is ResultReport:
        minimal["output_hash"] = HASH  # a success needs its hash
    message = cls.from_wire(minimal)
    for f, _ in fields_of(cls):
        if not required(f) and f.name not in minimal:
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            assert getattr(message, f.name) == default


def test_mutable_defaults_are_not_shared():
    a, b = Heartbeat.from_wire({"slots": 1}), Heartbeat.from_wire({"slots": 1})
    a.containers.append(ContainerInfo.from_wire(SAMPLES[ContainerInfo]))
    assert b.containers == []


def test_nested_messages_are_built_as_their_classes():
    grant = Grant.from_wire(copy.deepcopy(SAMPLES[Grant]))
    assert isinstance(grant.inputs[0], InputRef)
    batch = ResultBatch.from_wire(copy.deepcopy(SAMPLES[ResultBatch]))
    assert batch.results[1].error is ErrorKind.OOM
    assert isinstance(RegisterRequest.from_wire({"name": "x"}).host, HostFacts)


def test_ints_are_taken_for_floats():
    reply = RegisterReply.from_wire({"client": "c", "token": "t", "heartbeat_interval": 10})
    assert reply.heartbeat_interval == 10.0 and type(reply.heartbeat_interval) is float


def test_json_round_trip_of_messages_without_bytes():
    for cls in all_messages():
        if cls is ResultReport:
            continue
        message = cls.from_wire(copy.deepcopy(SAMPLES[cls]))
        assert cls.from_wire(codec.load_json(codec.dump_json(message.to_wire()))) == message


# Strategies built from the annotations, so a new field or message is covered without edits.

WIRE_INT = st.integers(-(2**63), 2**63 - 1)
WIRE_TEXT = st.text(max_size=20)


def strategy_for(hint):
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return st.one_of(*(strategy_for(a) for a in typing.get_args(hint)))
    if origin is list:
        return st.lists(strategy_for(typing.get_args(hint)[0]), max_size=3)
    if origin is dict:
        key, value = typing.get_args(hint)
        return st.dictionaries(strategy_for(key), strategy_for(value), max_size=3)
    if hint is type(None):
        return st.none()
    if isinstance(hint, type) and issubclass(hint, Message):
        return messages(hint)
    if isinstance(hint, type) and issubclass(hint, StrEnum):
        return st.sampled_from(hint)
    return {
        str: WIRE_TEXT,
        int: WIRE_INT,
        float: st.floats(allow_nan=False),
        bool: st.booleans(),
        bytes: st.binary(max_size=20),
    }[hint]


def messages(cls):
    if cls is ResultReport:
        return st.one_of(
            st.builds(
                ResultReport,
                attempt=WIRE_TEXT,
                status=st.just("succeeded"),
                output_hash=st.from_regex(r"[0-9a-f]{32}", fullmatch=True),
                output=st.none() | st.binary(max_size=20),
                runtime=st.floats(min_value=0, allow_infinity=False),
            ),
            st.builds(
                ResultReport,
                attempt=WIRE_TEXT,
                status=st.just("errored"),
                error=st.sampled_from(ErrorKind),
                exit_code=st.none() | WIRE_INT,
                stderr_tail=WIRE_TEXT,
            ),
        )
    return st.builds(cls, **{f.name: strategy_for(hint) for f, hint in fields_of(cls)})


@pytest.mark.parametrize("cls", MESSAGES)
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_random_messages_round_trip_through_msgpack(cls, data):
    message = data.draw(messages(cls))
    wire = message.to_wire()
    assert cls.from_wire(wire) == message
    assert cls.from_wire(codec.unpack(codec.pack(wire))) == message


# -- refusals -------------------------------------------------------------------------------------


def wrong_values(hint):
    """Values of the wrong type for a field of type ``hint``."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):  # optional: None is right
        (inner,) = (a for a in typing.get_args(hint) if a is not type(None))
        return [v for v in wrong_values(inner) if v is not None]
    if origin is list:
        return ["x", {"a": 1}, 5]
    if origin is dict:
        return [["x"], "x", 5]
    if isinstance(hint, type) and issubclass(hint, Message):
        return [5, "x", ["x"]]
    if isinstance(hint, type) and issubclass(hint, StrEnum):
        return ["no_such_kind", 5, ["x"]]
    return {
        str: [5, b"x", None, 1.5, ["x"]],
        int: ["5", 1.5, True, False, None, b"5"],
        float: ["1.5", True, None, float("nan"), [1.0]],
        bool: [1, 0, "true", None],
        bytes: ["x", 5, [1]],
    }[hint]


WRONG = [
    pytest.param(cls, f.name, value, id=f"{cls.__name__}.{f.name}={value!r}")
    for cls in all_messages()
    for f, hint in fields_of(cls)
    for value in wrong_values(hint)
]


@pytest.mark.parametrize(("cls", "name", "value"), WRONG)
def test_a_wrong_type_is_refused_naming_the_field(cls, name, value):
    data = copy.deepcopy(SAMPLES[cls])
    data[name] = value
    with pytest.raises(ProtocolError, match=rf"\b{name}\b"):
        cls.from_wire(data)


@pytest.mark.parametrize("value", [True, False])
@pytest.mark.parametrize(
    ("cls", "name"),
    [(LeaseRequest, "max_units"), (Heartbeat, "slots"), (ResultReport, "exit_code"), (InputRef, "size")],
)
def test_bools_are_not_ints(cls, name, value):
    data = copy.deepcopy(SAMPLES[cls])
    data[name] = value
    with pytest.raises(ProtocolError, match=f"{name} must be an integer, got bool"):
        cls.from_wire(data)


@pytest.mark.parametrize(("cls", "name"), [(LeaseRequest, "cpus"), (Grant, "deadline"), (ContainerInfo, "cpu_percent")])
def test_bools_are_not_numbers(cls, name):
    data = copy.deepcopy(SAMPLES[cls])
    data[name] = True
    with pytest.raises(ProtocolError, match=f"{name} must be a number"):
        cls.from_wire(data)


MISSING = [
    pytest.param(cls, f.name, id=f"{cls.__name__}.{f.name}")
    for cls in all_messages()
    for f, _ in fields_of(cls)
    if required(f)
]


@pytest.mark.parametrize(("cls", "name"), MISSING)
def test_a_missing_field_is_refused_naming_it(cls, name):
    data = copy.deepcopy(SAMPLES[cls])
    del data[name]
    with pytest.raises(ProtocolError, match=f"^missing field {name}$"):
        cls.from_wire(data)


@pytest.mark.parametrize("cls", MESSAGES)
def test_an_unknown_field_is_refused_naming_it(cls):
    data = copy.deepcopy(SAMPLES[cls])
    data["colour"] = "blue"
    with pytest.raises(ProtocolError, match=f"{cls.__name__}: unknown field.*colour"):
        cls.from_wire(data)


@pytest.mark.parametrize("cls", MESSAGES)
@pytest.mark.parametrize("data", [None, [], "x", 5, b"x"], ids=repr)
def test_a_message_must_be_a_map(cls, data):
    with pytest.raises(ProtocolError, match=f"{cls.__name__} must be a map"):
        cls.from_wire(data)


def test_unknown_keys_of_any_type_are_named():
    with pytest.raises(ProtocolError, match="unknown field"):
        Ack.from_wire({"attempt": "a", "accepted": True, 7: 1})


@pytest.mark.parametrize(
    ("cls", "mutate", "path"),
    [
        (Heartbeat, lambda d: d["containers"][0].__setitem__("memory", "1GiB"), "containers[0].memory"),
        (Heartbeat, lambda d: d["containers"][0].__setitem__("cpu_percent", "x"), "containers[0].cpu_percent"),
        (Heartbeat, lambda d: d["containers"][0].pop("attempt"), "missing field containers[0].attempt"),
        (Heartbeat, lambda d: d["containers"].append(7), "containers[1] must be a map"),
        (Heartbeat, lambda d: d["containers"][0].__setitem__("x", 1), "containers[0]: unknown field"),
        (Grant, lambda d: d["inputs"][0].__setitem__("size", "10"), "inputs[0].size"),
        (Grant, lambda d: d["env"].__setitem__("LANG", 1), "env['LANG']"),
        (Grant, lambda d: d["env"].__setitem__(1, "x"), "env key"),
        (Grant, lambda d: d["command"].append(None), "command[2]"),
        (RegisterRequest, lambda d: d["host"].__setitem__("cores", "8"), "host.cores"),
        (RegisterRequest, lambda d: d.__setitem__("host", []), "host must be a map"),
        (ResultBatch, lambda d: d["results"][1].__setitem__("exit_code", True), "results[1].exit_code"),
        (ResultBatch, lambda d: d["results"][1].__setitem__("error", "cosmic_ray"), "results[1].error"),
        (AckBatch, lambda d: d["acks"][0].__setitem__("accepted", "yes"), "acks[0].accepted"),
        (HeartbeatReply, lambda d: d["commands"][0].pop("action"), "commands[0].action"),
    ],
)
def test_nested_errors_name_the_field_path(cls, mutate, path):
    data = copy.deepcopy(SAMPLES[cls])
    mutate(data)
    with pytest.raises(ProtocolError, match=re.escape(path)):
        cls.from_wire(data)


def test_error_kinds_are_listed_when_unknown():
    data = {"attempt": "a", "status": "errored", "error": "meteor"}
    with pytest.raises(ProtocolError, match=r"error must be one of image_missing, .*client, got 'meteor'"):
        ResultReport.from_wire(data)


def test_strings_are_not_bytes_and_bytes_are_not_strings():
    data = dict(SAMPLES[ResultReport], output="text")
    with pytest.raises(ProtocolError, match="output must be bytes, got str"):
        ResultReport.from_wire(data)
    with pytest.raises(ProtocolError, match="attempt must be str, got bytes"):
        Ack.from_wire({"attempt": b"a", "accepted": True})


# -- the result report's own rules ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"attempt": "a", "status": "done"}, "must be one of succeeded, errored"),
        ({"attempt": "a", "status": ""}, "must be one of succeeded, errored"),
        ({"attempt": "a", "status": "succeeded"}, "needs output_hash"),
        ({"attempt": "a", "status": "succeeded", "output_hash": None}, "needs output_hash"),
        ({"attempt": "a", "status": "errored"}, "needs error"),
        ({"attempt": "a", "status": "errored", "error": None, "exit_code": 1}, "needs error"),
    ],
)
def test_result_report_status_rules(data, message):
    with pytest.raises(ProtocolError, match=message):
        ResultReport.from_wire(data)
    with pytest.raises(ProtocolError, match=message):
        ResultReport(**data)


def test_result_report_rules_in_a_batch_name_the_result():
    data = {"results": [SAMPLES[ResultBatch]["results"][0], {"attempt": "a9", "status": "succeeded"}]}
    with pytest.raises(ProtocolError, match=r"^results\[1\]: .*needs output_hash.*a9"):
        ResultBatch.from_wire(data)


def test_valid_result_reports():
    ok = ResultReport.from_wire({"attempt": "a", "status": "succeeded", "output_hash": HASH})
    assert (ok.error, ok.output, ok.stderr_tail, ok.runtime) == (None, None, "", 0.0)
    failed = ResultReport.from_wire({"attempt": "a", "status": "errored", "error": "timeout"})
    assert failed.error is ErrorKind.TIMEOUT and failed.output_hash is None
    assert failed.to_wire()["error"] == "timeout"


def test_bytes_travel_as_base64_text_in_json():
    ref = InputRef("params.json", "0" * 32, 3, "", b"{}\n")
    wire = codec.load_json(codec.dump_json(ref.to_wire()))
    assert wire["data"] == {"base64": "e30K"} and InputRef.from_wire(wire) == ref
    for bad in ({"base64": "not base64!"}, {"base64": 3}):
        with pytest.raises(ProtocolError, match=r"data\.base64 must be base64 text"):
            InputRef.from_wire({**wire, "data": bad})
    with pytest.raises(ProtocolError, match="data must be bytes, got str"):
        InputRef.from_wire({**wire, "data": "e30K"})  # a string is text, never bytes
