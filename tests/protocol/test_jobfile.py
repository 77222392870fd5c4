"""The job file: defaults, every validation error, and the canonical round trip."""

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dockercomp.protocol import codec
from dockercomp.protocol.errors import ProtocolError
from dockercomp.protocol.jobfile import Chunking, JobSpec, Redundancy, Resources, parse_jobfile

MINIMAL = {"name": "wordfreq", "image": "dockercomp/wordfreq"}


def job(**changes):
    return {**MINIMAL, **changes}


def test_everything_but_name_and_image_has_a_default():
    spec = parse_jobfile(MINIMAL)
    assert spec == JobSpec(name="wordfreq", image="dockercomp/wordfreq")
    assert spec.command == ()
    assert spec.env == ()
    assert spec.chunking == Chunking(by="lines", size=1 << 20, size_unit="bytes", separator=">")
    assert spec.redundancy == Redundancy(replicas=1, quorum=1, max_attempts=3)
    assert spec.resources == Resources(cpus=1.0, memory=256 << 20, timeout=300.0)
    assert spec.reduce_command is None
    assert spec.priority == 0
    assert spec.mode == "batch"


def test_explicit_nulls_mean_defaults():
    data = job(command=None, env=None, chunking=None, redundancy=None, resources=None, reduce=None, mode=None)
    assert parse_jobfile(data) == parse_jobfile(MINIMAL)


def test_the_documented_example():
    spec = parse_jobfile(
        {
            "name": "wordfreq",
            "image": "dockercomp/wordfreq",
            "command": ["python3", "/app/map.py"],
            "chunking": {"by": "lines", "size": "1MiB"},
            "redundancy": {"replicas": 1, "quorum": 1, "max_attempts": 3},
            "resources": {"cpus": 1, "memory": "256MiB", "timeout": "5m"},
            "reduce": {"command": ["python3", "/app/reduce.py"]},
            "description": "counts words",
        }
    )
    assert spec.command == ("python3", "/app/map.py")
    assert spec.reduce_command == ("python3", "/app/reduce.py")
    assert spec.resources == Resources(1.0, 256 << 20, 300.0)
    assert isinstance(spec.resources.cpus, float)


@pytest.mark.parametrize(
    ("redundancy", "expected"),
    [
        ({"replicas": 2}, Redundancy(2, 2, 4)),
        ({"replicas": 3}, Redundancy(3, 2, 5)),  # a majority, and two spare attempts
        ({"replicas": 4}, Redundancy(4, 3, 6)),
        ({"replicas": 5, "quorum": 1}, Redundancy(5, 1, 7)),
        ({"replicas": 3, "max_attempts": 3}, Redundancy(3, 2, 3)),
        ({"quorum": 1, "max_attempts": 1}, Redundancy(1, 1, 1)),
        ({"replicas": 16, "quorum": 16, "max_attempts": 100}, Redundancy(16, 16, 100)),
    ],
)
def test_redundancy_defaults_follow_replicas(redundancy, expected):
    assert parse_jobfile(job(redundancy=redundancy)).redundancy == expected


@pytest.mark.parametrize(
    ("chunking", "expected"),
    [
        ({"by": "lines", "size": 1000}, Chunking("lines", 1000, "count")),
        ({"by": "records", "size": 10, "separator": "@"}, Chunking("records", 10, "count", "@")),
        ({"by": "files", "size": 3}, Chunking("files", 3, "count")),
        ({"by": "files", "size": "10MiB"}, Chunking("files", 10 << 20, "bytes")),
        ({"by": "bytes", "size": 4096}, Chunking("bytes", 4096, "bytes")),  # ints are bytes here
        ({"by": "bytes", "size": "4KiB"}, Chunking("bytes", 4096, "bytes")),
        ({"by": "lines", "size": "64KiB"}, Chunking("lines", 64 << 10, "bytes")),
        ({"by": "records"}, Chunking("records", 1 << 20, "bytes", ">")),
        ({"size": "2MiB"}, Chunking("lines", 2 << 20, "bytes")),
    ],
)
def test_chunking(chunking, expected):
    assert parse_jobfile(job(chunking=chunking)).chunking == expected


def test_env_is_sorted_and_kept_as_strings():
    spec = parse_jobfile(job(env={"B": "2", "A": "1", "_X9": ""}))
    assert spec.env == (("A", "1"), ("B", "2"), ("_X9", ""))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        # the shape
        ([], "must be a JSON object"),
        ("wordfreq", "must be a JSON object"),
        (None, "must be a JSON object"),
        ({"image": "x"}, "name is required"),
        ({"name": "x"}, "image is required"),
        (job(name=""), "name is required"),
        (job(name=5), "name is required"),
        (job(image=None), "image is required"),
        # unknown keys, at the top and inside each section
        (job(colour="blue"), "job file: unknown key.*colour"),
        (job(replicas=3), "job file: unknown key.*replicas"),
        (job(chunking={"by": "lines", "sise": 5}), "chunking: unknown key.*sise"),
        (job(redundancy={"replica": 3}), "redundancy: unknown key.*replica"),
        (job(resources={"gpus": 1}), "resources: unknown key.*gpus"),
        (job(reduce={"command": ["x"], "image": "y"}), "reduce: unknown key.*image"),
        (job(chunking="lines"), "chunking must be an object"),
        (job(resources=[1]), "resources must be an object"),
        # names and images
        (job(name="-x"), "name must be"),
        (job(name="a b"), "name must be"),
        (job(name="x" * 129), "name must be"),
        (job(name="wordfreq\n"), "name must be"),
        (job(name="ünï"), "name must be"),
        (job(image="Ubuntu"), "not a valid Docker image"),
        (job(image="dockercomp/WordFreq"), "not a valid Docker image"),
        (job(image="a b"), "not a valid Docker image"),
        (job(image="-image"), "not a valid Docker image"),
        (job(image="/abs"), "not a valid Docker image"),
        (job(image="x" * 256), "not a valid Docker image"),
        (job(image="img\n"), "not a valid Docker image"),
        (job(image="img;rm -rf /"), "not a valid Docker image"),
        # mode and priority
        (job(mode="service"), "mode must be one of batch"),
        (job(mode=1), "mode is required and must be a non-empty string"),
        (job(priority=1001), "priority must be an integer from -1000 to 1000"),
        (job(priority=-1001), "priority must be"),
        (job(priority=True), "priority must be"),
        (job(priority="1"), "priority must be"),
        (job(priority=1.0), "priority must be"),
        # commands
        (job(command=[]), "command must be a non-empty list of strings"),
        (job(command="python3 run.py"), "command must be a non-empty list"),
        (job(command=["python3", 1]), "command must be"),
        (job(command=["a\0b"]), "command must be"),
        (job(command=["x"] * 1001), "command must be"),
        (job(reduce={}), "reduce.command must be a non-empty list"),
        (job(reduce={"command": []}), "reduce.command must be"),
        (job(reduce={"command": "x"}), "reduce.command must be"),
        (job(reduce=["x"]), "reduce must be an object"),
        # env
        (job(env=["A=1"]), "env must be an object"),
        (job(env={"1A": "x"}), "env name '1A'"),
        (job(env={"A-B": "x"}), "env name 'A-B'"),
        (job(env={"": "x"}), "env name ''"),
        (job(env={"A B": "x"}), "env name"),
        (job(env={"A\n": "x"}), "env name"),
        (job(env={"A": 1}), "env A must be a string"),
        (job(env={"A": None}), "env A must be a string"),
        (job(env={"A": "a\0b"}), "env A must be a string"),
        (job(env={f"V{i}": "" for i in range(257)}), "env must be an object"),
        # chunking
        (job(chunking={"by": "words"}), "chunking.by must be one of bytes, lines, records, files"),
        (job(chunking={"by": None}), "chunking.by must be one of"),
        (job(chunking={"by": "lines", "size": 0}), "chunking.size must be greater than zero"),
        (job(chunking={"by": "files", "size": 0}), "chunking.size must be greater than zero"),
        (job(chunking={"by": "bytes", "size": 0}), "chunking.size must be greater than zero"),
        (job(chunking={"by": "lines", "size": "0B"}), "chunking.size must be greater than zero"),
        (job(chunking={"by": "lines", "size": "0.5B"}), "chunking.size must be greater than zero"),
        (job(chunking={"by": "lines", "size": -1}), "chunking.size must be greater than zero"),
        (job(chunking={"by": "bytes", "size": -1}), "chunking.size must not be negative"),
        (job(chunking={"by": "lines", "size": "-1MiB"}), "chunking.size must be a size"),
        (job(chunking={"by": "lines", "size": "1 lines"}), "chunking.size: unknown size unit"),
        (job(chunking={"by": "lines", "size": True}), "chunking.size must be a size"),
        (job(chunking={"separator": ""}), "chunking.separator must be a non-empty string"),
        (job(chunking={"separator": ">\n"}), "chunking.separator must be"),
        (job(chunking={"separator": 5}), "chunking.separator must be"),
        (job(chunking={"separator": "x" * 65}), "chunking.separator must be"),
        # redundancy
        (job(redundancy={"replicas": 2, "quorum": 3}), r"quorum \(3\) cannot exceed redundancy.replicas \(2\)"),
        (job(redundancy={"replicas": 3, "max_attempts": 2}), r"max_attempts \(2\) must be at least replicas \(3\)"),
        (job(redundancy={"replicas": 0}), "redundancy.replicas must be an integer from 1 to 16"),
        (job(redundancy={"replicas": 17}), "redundancy.replicas must be an integer from 1 to 16"),
        (job(redundancy={"replicas": True}), "redundancy.replicas must be an integer"),
        (job(redundancy={"replicas": 2.0}), "redundancy.replicas must be an integer"),
        (job(redundancy={"replicas": "2"}), "redundancy.replicas must be an integer"),
        (job(redundancy={"quorum": 0}), "redundancy.quorum must be an integer from 1 to 16"),
        (job(redundancy={"max_attempts": 0}), "redundancy.max_attempts must be an integer from 1 to 100"),
        (job(redundancy={"max_attempts": 101}), "redundancy.max_attempts must be"),
        # resources
        (job(resources={"cpus": 0}), "resources.cpus must be a number greater than 0"),
        (job(resources={"cpus": -1}), "resources.cpus must be"),
        (job(resources={"cpus": 257}), "resources.cpus must be"),
        (job(resources={"cpus": float("nan")}), "resources.cpus must be"),
        (job(resources={"cpus": float("inf")}), "resources.cpus must be"),
        (job(resources={"cpus": True}), "resources.cpus must be"),
        (job(resources={"cpus": "1"}), "resources.cpus must be"),
        (job(resources={"memory": "5MiB"}), "resources.memory must be at least 6MiB"),
        (job(resources={"memory": 0}), "resources.memory must be at least 6MiB"),
        (job(resources={"memory": "lots"}), "resources.memory must be a size"),
        (job(resources={"memory": "8EiB"}), "resources.memory: unknown size unit"),
        (job(resources={"memory": 1 << 63}), "resources.memory must be less than 8EiB"),
        (job(resources={"memory": "9" * 400}), "resources.memory"),
        (job(resources={"timeout": 0}), "resources.timeout must be more than 0 and at most 7d"),
        (job(resources={"timeout": "8d"}), "resources.timeout must be more than 0 and at most 7d"),
        (job(resources={"timeout": "7d1s"}), "resources.timeout must be a duration"),
        (job(resources={"timeout": "-5m"}), "resources.timeout must be a duration"),
        (job(resources={"timeout": "5 parsecs"}), "resources.timeout: unknown duration unit"),
        (job(resources={"timeout": 10**400}), "resources.timeout"),
    ],
    ids=lambda v: repr(v)[:60] if not isinstance(v, dict) else None,
)
def test_validation_errors(data, message):
    with pytest.raises(ProtocolError, match=message):
        parse_jobfile(data)


def test_error_messages_are_bounded():
    for data in (job(name="x" * 10_000), job(image="X" * 10_000), job(**{"k" * 10_000: 1})):
        with pytest.raises(ProtocolError) as info:
            parse_jobfile(data)
        assert len(str(info.value)) < 400


def test_seven_days_is_the_longest_timeout():
    assert parse_jobfile(job(resources={"timeout": "7d"})).resources.timeout == 7 * 86400
    assert parse_jobfile(job(resources={"timeout": 0.001})).resources.timeout == 0.001


def test_six_mebibytes_is_the_least_memory():
    assert parse_jobfile(job(resources={"memory": 6 << 20})).resources.memory == 6 << 20
    assert parse_jobfile(job(resources={"memory": (1 << 63) - 1})).resources.memory == (1 << 63) - 1


# -- the canonical job file -----------------------------------------------------------------------

NAMES = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,30}", fullmatch=True)
IMAGES = st.from_regex(r"[a-z0-9][a-z0-9._\-/:@]{0,40}", fullmatch=True)
ARGS = st.text(st.characters(exclude_characters="\0", codec="utf-8"), max_size=12)
COMMANDS = st.lists(ARGS, min_size=1, max_size=5)
ENV_NAMES = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,15}", fullmatch=True)
SIZE_UNITS = {"B": 1, "KiB": 1024, "MiB": 1 << 20, "KB": 1000, "k": 1000, "": 1}
DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def maybe(key, strategy):
    """A section entry that is sometimes left out."""
    return st.one_of(st.just({}), strategy.map(lambda v: {key: v}))


@st.composite
def sizes(draw, at_least):
    if draw(st.booleans()):
        return draw(st.integers(at_least, 1 << 62))
    unit = draw(st.sampled_from(sorted(SIZE_UNITS)))
    n = draw(st.integers(-(-at_least // SIZE_UNITS[unit]), 1 << 40))
    return f"{n}{unit}"


@st.composite
def durations(draw):
    if draw(st.booleans()):
        return draw(st.floats(min_value=0, max_value=7 * 86400, exclude_min=True))
    unit = draw(st.sampled_from(sorted(DURATION_UNITS)))
    return f"{draw(st.integers(1, int(7 * 86400 / DURATION_UNITS[unit])))}{unit}"


@st.composite
def chunkings(draw):
    by = draw(st.sampled_from(["bytes", "lines", "records", "files"]))
    d = {"by": by} if draw(st.booleans()) or by != "lines" else {}
    d |= draw(maybe("size", st.integers(1, 1 << 40) | sizes(1)))
    d |= draw(maybe("separator", st.text(st.characters(exclude_characters="\n"), min_size=1, max_size=64)))
    return d


@st.composite
def redundancies(draw):
    d = {"replicas": draw(st.integers(1, 16))} if draw(st.booleans()) else {}
    replicas = d.get("replicas", 1)
    if replicas == 1 or draw(st.booleans()):
        d["quorum"] = draw(st.integers(1, replicas))
    if draw(st.booleans()):
        d["max_attempts"] = draw(st.integers(replicas, 100))
    return d


@st.composite
def jobfiles(draw):
    d = {"name": draw(NAMES), "image": draw(IMAGES)}
    optional = {
        "command": st.none() | COMMANDS,
        "env": st.dictionaries(ENV_NAMES, ARGS, max_size=4),
        "chunking": chunkings(),
        "redundancy": redundancies(),
        "resources": st.fixed_dictionaries(
            {},
            optional={
                "cpus": st.integers(1, 256) | st.floats(min_value=0, max_value=256, exclude_min=True),
                "memory": sizes(6 << 20).filter(lambda s: not isinstance(s, int) or s < 1 << 63),
                "timeout": durations(),
            },
        ),
        "reduce": st.none() | COMMANDS.map(lambda c: {"command": c}),
        "priority": st.integers(-1000, 1000),
        "mode": st.just("batch"),
        "description": st.text(max_size=20),
    }
    for key, strategy in optional.items():
        if draw(st.booleans()):
            d[key] = draw(strategy)
    return d


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(jobfiles())
def test_to_dict_is_the_canonical_job_file(data):
    spec = parse_jobfile(data)
    canonical = spec.to_dict()
    assert parse_jobfile(canonical) == spec
    assert parse_jobfile(json.loads(json.dumps(canonical))) == spec  # it is plain JSON
    assert parse_jobfile(codec.unpack(codec.pack(canonical))) == spec
    assert parse_jobfile(canonical).to_dict() == canonical


def test_to_dict_examples():
    spec = parse_jobfile(job(chunking={"by": "lines", "size": 100}, reduce={"command": ["r"]}))
    d = spec.to_dict()
    assert d["chunking"] == {"by": "lines", "size": 100, "separator": ">"}
    assert d["command"] is None
    assert d["env"] == {}
    assert d["reduce"] == {"command": ["r"]}
    assert "reduce_command" not in d
    d = parse_jobfile(MINIMAL).to_dict()
    assert d["chunking"]["size"] == f"{1 << 20}B"
    assert "reduce" not in d
