"""The job file: defaults, every validation error, and the canonical round trip."""

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dockercomp.protocol import codec
from dockercomp.protocol.errors import ProtocolError
from dockercomp.protocol.jobfile import (
    MAX_CONTAINERS,
    Chunking,
    Container,
    JobSpec,
    ListSweep,
    RangeSweep,
    Redundancy,
    Resources,
    params_env,
    params_json,
    parse_jobfile,
)

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
        (job(resources={"gpu": 1}), "resources: unknown key.*gpu"),
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
        (job(mode="warm"), "mode must be one of batch, service, got 'warm'"),
        (job(mode="service" * 100), "mode must be one of batch, service"),
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
        (job(resources={"gpus": -1}), "resources.gpus must be a whole number from 0 to 16"),
        (job(resources={"gpus": 17}), "resources.gpus must be"),
        (job(resources={"gpus": 1.5}), "resources.gpus must be"),
        (job(resources={"gpus": True}), "resources.gpus must be"),
        (job(resources={"disk": "lots"}), "resources.disk"),
        (job(resources={"disk": -1}), "resources.disk"),
        (job(resources={"arch": "x86_64"}), "resources.arch must be one of amd64, arm64"),
        (job(resources={"arch": 64}), "resources.arch must be one of"),
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


CONTAINER_NAMES = st.from_regex(r"[a-z0-9](?:[a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)


@st.composite
def container_lists(draw):
    """A unit's containers: one main entry (just its name) among 1 to 7 sidecars."""
    names = draw(st.lists(CONTAINER_NAMES, min_size=2, max_size=8, unique=True))
    sidecars = [
        {"name": name, "image": draw(IMAGES)}
        | draw(maybe("command", st.none() | COMMANDS))
        | draw(maybe("env", st.dictionaries(ENV_NAMES, ARGS, max_size=3)))
        for name in names[1:]
    ]
    return draw(st.permutations([{"name": names[0], "main": True}, *sidecars]))


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
        "description": st.text(st.characters(codec="utf-8"), max_size=20),
        "containers": container_lists(),
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


# -- sweeps --------------------------------------------------------------------------------------


def test_a_range_sweep_splits_a_half_open_interval_into_units():
    spec = parse_jobfile(job(sweep={"start": 1, "end": 10_000_001, "step": 1_000_000}))
    assert spec.sweep == RangeSweep(1, 10_000_001, 1_000_000)
    assert len(spec.sweep) == 10
    ranges = [spec.sweep.params(i) for i in range(len(spec.sweep))]
    assert ranges[0] == {"START": 1, "END": 1_000_001}
    assert ranges[-1] == {"START": 9_000_001, "END": 10_000_001}
    covered = [n for r in ranges for n in range(r["START"], r["END"])]
    assert covered == list(range(1, 10_000_001))  # every number once, in order


@pytest.mark.parametrize(
    ("sweep", "units"),
    [
        ({"start": 0, "end": 10, "step": 3}, [(0, 3), (3, 6), (6, 9), (9, 10)]),  # the last one is shorter
        ({"start": 0, "end": 1}, [(0, 1)]),  # step defaults to 1
        ({"start": -5, "end": 5, "step": 100}, [(-5, 5)]),
        ({"start": 7, "end": 10, "step": 1}, [(7, 8), (8, 9), (9, 10)]),
    ],
)
def test_range_sweep_units(sweep, units):
    spec = parse_jobfile(job(sweep=sweep)).sweep
    assert [(spec.params(i)["START"], spec.params(i)["END"]) for i in range(len(spec))] == units


def test_a_list_sweep_gives_each_unit_its_object():
    spec = parse_jobfile(job(sweep=[{"SEED": 1, "MODEL": "a"}, {"SEED": 2, "RATE": 0.5, "FAST": True}]))
    assert spec.sweep == ListSweep(((("MODEL", "a"), ("SEED", 1)), (("FAST", True), ("RATE", 0.5), ("SEED", 2))))
    assert len(spec.sweep) == 2
    assert spec.sweep.params(1) == {"SEED": 2, "RATE": 0.5, "FAST": True}
    assert params_env(spec.sweep.params(1)) == {"SEED": "2", "RATE": "0.5", "FAST": "true"}
    assert params_env(spec.sweep.params(0)) == {"SEED": "1", "MODEL": "a"}


def test_params_json_is_canonical_json():
    assert params_json({"START": 1, "END": 11}) == b'{"END": 11, "START": 1}\n'
    assert params_json({"B": "x", "A": False}) == params_json({"A": False, "B": "x"})
    assert json.loads(params_json({"R": 0.25, "S": "é"})) == {"R": 0.25, "S": "é"}


def test_no_sweep_by_default_and_null_means_none():
    assert parse_jobfile(MINIMAL).sweep is None
    assert parse_jobfile(job(sweep=None)).sweep is None
    assert "sweep" not in parse_jobfile(MINIMAL).to_dict()


def test_a_sweep_job_file_round_trips_without_chunking():
    for sweep in ({"start": 1, "end": 101, "step": 10}, [{"A": 1}, {"A": "two", "B": -3.5, "C": False}]):
        spec = parse_jobfile(job(sweep=sweep, reduce={"command": ["r"]}))
        canonical = spec.to_dict()
        assert canonical["sweep"] == sweep
        assert "chunking" not in canonical
        assert parse_jobfile(canonical) == spec
        assert parse_jobfile(json.loads(json.dumps(canonical))) == spec
        assert parse_jobfile(codec.unpack(codec.pack(canonical))) == spec


@pytest.mark.parametrize(
    ("sweep", "message"),
    [
        ({"start": 1, "end": 10, "step": 0}, "sweep.step must be a positive integer, got 0"),
        ({"start": 1, "end": 10, "step": -1}, "sweep.step must be a positive integer"),
        ({"start": 1, "end": 10, "step": 1.5}, "sweep.step must be a positive integer"),
        ({"start": 1, "end": 10, "step": True}, "sweep.step must be a positive integer"),
        ({"start": 10, "end": 1}, r"sweep.end \(1\) must be greater than sweep.start \(10\)"),
        ({"start": 5, "end": 5}, r"sweep.end \(5\) must be greater than sweep.start \(5\).*end is exclusive"),
        ({"start": 1}, "sweep needs start and end"),
        ({"end": 1}, "sweep needs start and end"),
        ({"start": "1", "end": 10}, "sweep.start must be an integer"),
        ({"start": 0, "end": 2**63}, "sweep.end must be an integer"),
        ({"start": 0, "end": 10, "stride": 2}, "sweep: unknown key.*stride"),
        ({"start": 0, "end": 1_000_001}, "the sweep makes 1000001 units, more than 1000000; use a larger step"),
        ({"start": -(2**63), "end": 2**63 - 1}, "more than 1000000"),
        ([], "sweep is an empty list"),
        ([{}], r"sweep\[0\] must be an object of 1 to 256 parameters"),
        ([{"A": 1}, "B=2"], r"sweep\[1\] must be an object"),
        ([{"A": 1}] * 100_001, "the sweep lists 100001 parameter objects, more than 100000"),
        ([{"1A": 1}], r"sweep\[0\]: parameter name '1A' must be letters, digits and '_'"),
        ([{"A-B": 1}], "parameter name 'A-B'"),
        ([{"": 1}], "parameter name ''"),
        ([{"A": None}], r"sweep\[0\].A must be a string \(up to 4096 characters\), a finite number, true or false"),
        ([{"A": [1]}], r"sweep\[0\].A must be a string"),
        ([{"A": {"B": 1}}], r"sweep\[0\].A must be"),
        ([{"A": float("nan")}], r"sweep\[0\].A must be"),
        ([{"A": float("inf")}], r"sweep\[0\].A must be"),
        ([{"A": 2**63}], r"sweep\[0\].A must be"),
        ([{"A": "a\0b"}], r"sweep\[0\].A must be"),
        ([{"A": "x" * 4097}], r"sweep\[0\].A must be"),
        ("1..10", "sweep must be"),
        (10, "sweep must be"),
    ],
    ids=lambda v: repr(v)[:50],
)
def test_sweep_validation_errors(sweep, message):
    with pytest.raises(ProtocolError, match=message):
        parse_jobfile(job(sweep=sweep))


def test_a_sweep_with_chunking_is_refused():
    with pytest.raises(ProtocolError, match="a sweep job has no input files to chunk"):
        parse_jobfile(job(sweep={"start": 0, "end": 2}, chunking={"by": "lines"}))


def test_the_largest_sweeps_are_accepted():
    assert len(parse_jobfile(job(sweep={"start": 0, "end": 1_000_000})).sweep) == 1_000_000
    assert len(parse_jobfile(job(sweep={"start": -(2**63), "end": 2**63 - 1, "step": 2**63 - 1})).sweep) == 3
    assert len(parse_jobfile(job(sweep=[{"I": i} for i in range(100_000)])).sweep) == 100_000


# -- multi-container units ------------------------------------------------------------------------

KV = {"name": "kv", "image": "dockercomp/kv", "command": ["python3", "/app/kv.py"], "env": {"PORT": "7000"}}
MAIN = {"name": "main", "main": True}


def test_a_job_has_one_container_by_default():
    spec = parse_jobfile(MINIMAL)
    assert spec.containers == () and spec.sidecars == () and spec.main_name == ""
    assert (spec.unit_cpus, spec.unit_memory) == (1.0, 256 << 20)
    assert "containers" not in spec.to_dict()
    assert parse_jobfile(job(containers=None)) == spec


def test_the_main_container_is_the_jobs_own_and_sidecars_bring_theirs():
    spec = parse_jobfile(job(command=["python3", "/app/query.py"], env={"A": "1"}, containers=[KV, MAIN],
                             resources={"cpus": 0.5, "memory": "64MiB"}))  # fmt: skip
    assert spec.containers == (
        Container("kv", "dockercomp/kv", ("python3", "/app/kv.py"), (("PORT", "7000"),)),
        Container("main", main=True),
    )
    assert spec.sidecars == (spec.containers[0],) and spec.main_name == "main"
    assert (spec.image, spec.command, spec.env) == ("dockercomp/wordfreq", ("python3", "/app/query.py"), (("A", "1"),))
    assert (spec.unit_cpus, spec.unit_memory) == (1.0, 128 << 20)  # each container has the job's limits
    assert spec.to_dict()["containers"] == [KV, MAIN]


def test_a_sidecar_without_command_or_env_runs_its_image_as_it_is():
    spec = parse_jobfile(job(containers=[MAIN, {"name": "db", "image": "dockercomp/db"}]))
    assert spec.sidecars == (Container("db", "dockercomp/db"),)
    canonical = spec.to_dict()
    assert canonical["containers"][1] == {"name": "db", "image": "dockercomp/db", "command": None, "env": {}}
    assert parse_jobfile(canonical) == spec


def test_eight_containers_is_the_most():
    sidecars = [{"name": f"s{i}", "image": "dockercomp/kv"} for i in range(MAX_CONTAINERS - 1)]
    assert len(parse_jobfile(job(containers=[MAIN, *sidecars])).containers) == MAX_CONTAINERS == 8
    with pytest.raises(ProtocolError, match="containers must be a list of 2 to 8 containers"):
        parse_jobfile(job(containers=[MAIN, *sidecars, {"name": "one-more", "image": "x"}]))


@pytest.mark.parametrize(
    ("containers", "message"),
    [
        ([], "containers must be a list of 2 to 8 containers, the main one among them"),
        ([MAIN], "containers must be a list of 2 to 8"),
        ({"main": MAIN}, "containers must be a list"),
        ("kv", "containers must be a list"),
        ([MAIN, "kv"], r"containers\[1\] must be an object"),
        ([MAIN, KV | {"ports": [7000]}], r"containers\[1\]: unknown key\(s\) ports"),
        ([MAIN, KV | {"name": "KV"}], r"containers\[1\].name must be a host name.*got 'KV'"),
        ([MAIN, KV | {"name": "-kv"}], r"containers\[1\].name must be a host name"),
        ([MAIN, KV | {"name": "kv-"}], r"containers\[1\].name must be a host name"),
        ([MAIN, KV | {"name": "k_v"}], r"containers\[1\].name must be a host name"),
        ([MAIN, KV | {"name": "k.v"}], r"containers\[1\].name must be a host name"),
        ([MAIN, KV | {"name": "k" * 64}], r"containers\[1\].name must be a host name"),
        ([MAIN, KV | {"name": ""}], r"containers\[1\].name must be a host name"),
        ([MAIN, KV | {"name": None}], r"containers\[1\].name must be a host name"),
        ([MAIN, {"image": "x"}], r"containers\[1\].name must be a host name"),
        ([MAIN, KV, KV], r"containers\[2\].name: kv names another container too"),
        ([MAIN, KV | {"name": "main"}], r"containers\[1\].name: main names another container too"),
        ([KV, {"name": "kv2", "image": "x"}], r"exactly one of containers must be the main one.*none is"),
        ([MAIN, {"name": "m2", "main": True}], r"exactly one of containers must be the main one.*main, m2 are"),
        ([MAIN, KV | {"main": False}, {"name": "m2", "main": "yes"}], r"containers\[2\].main \(m2\) must be true"),
        ([MAIN | {"image": "x"}, KV], r"containers\[0\] \(main\) is the main container.*set image at the top"),
        ([MAIN | {"command": ["x"], "env": {}}, KV], r"is the main container.*set command, env at the top level"),
        ([MAIN, {"name": "kv"}], r'containers\[1\] \(kv\) needs an image, or "main": true'),
        ([MAIN, KV | {"image": "Ubuntu"}], r"containers\[1\].image \(kv\) must be a Docker image reference"),
        ([MAIN, KV | {"image": ""}], r"containers\[1\].image \(kv\) must be"),
        ([MAIN, KV | {"image": 5}], r"containers\[1\].image \(kv\) must be"),
        ([MAIN, KV | {"command": []}], r"containers\[1\].command must be a non-empty list of strings"),
        ([MAIN, KV | {"command": "kv --port 1"}], r"containers\[1\].command must be"),
        ([MAIN, KV | {"command": ["a\0b"]}], r"containers\[1\].command must be"),
        ([MAIN, KV | {"env": ["A=1"]}], r"containers\[1\].env must be an object of strings"),
        ([MAIN, KV | {"env": {"1A": "x"}}], r"containers\[1\].env name '1A' must be letters"),
        ([MAIN, KV | {"env": {"A": 1}}], r"containers\[1\].env A must be a string"),
        ([MAIN, KV | {"env": {"A": "a\0b"}}], r"containers\[1\].env A must be a string"),
    ],
    ids=lambda v: repr(v)[:60],
)
def test_container_validation_errors(containers, message):
    with pytest.raises(ProtocolError, match=message):
        parse_jobfile(job(containers=containers))


def test_a_sweep_may_have_sidecars_and_round_trips():
    spec = parse_jobfile(job(sweep={"start": 0, "end": 4}, containers=[MAIN, KV]))
    assert parse_jobfile(json.loads(json.dumps(spec.to_dict()))) == spec
    assert parse_jobfile(codec.unpack(codec.pack(spec.to_dict()))) == spec


def test_resources_a_volunteer_must_have():
    spec = parse_jobfile(job(resources={"gpus": 2, "disk": "10GiB", "arch": "arm64"}))
    assert (spec.resources.gpus, spec.resources.disk, spec.resources.arch) == (2, 10 << 30, "arm64")
    assert parse_jobfile(spec.to_dict()) == spec
    plain = parse_jobfile(job())
    assert (plain.resources.gpus, plain.resources.disk, plain.resources.arch) == (0, 0, "")


def test_service_mode_is_a_mode_of_its_own_and_round_trips():
    spec = parse_jobfile(job(mode="service", command=["python3", "/app/serve.py"]))
    assert spec.mode == "service"
    assert parse_jobfile(json.loads(json.dumps(spec.to_dict()))) == spec


def test_service_mode_takes_a_unit_of_one_container_only():
    with pytest.raises(ProtocolError, match="several containers runs in batch mode only"):
        parse_jobfile(job(mode="service", containers=[MAIN, KV]))


def test_a_lone_surrogate_is_refused_in_a_job_file_given_as_objects():
    with pytest.raises(ProtocolError, match="unpaired surrogate"):
        parse_jobfile(job(description="\ud800"))
