"""The HTTP API as an OpenAPI 3.1 document, served at ``GET /api/v1/openapi.json``.

It is generated so that it cannot drift: the paths, methods, path parameters and who may
call them come from the route table (``ROUTES`` in server/app.py: each route's regular
expression, and the names of its handler method's arguments); the client protocol's bodies
from the message dataclasses in protocol/messages.py (their fields and type hints); the
job file's constraints from protocol/jobfile.py. Only what no dataclass describes (the
scientist's and operator's JSON bodies and replies) is written here by hand, in ``OPERATIONS``.
tests/api/test_openapi.py checks the document against the routes, and tests/api/
test_schemathesis.py runs schemathesis with it against a live master.
"""

import dataclasses
import inspect
import json
import re
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from dockercomp.protocol import codec, jobfile, messages
from dockercomp.protocol.images import DIGEST_RE, TAG_RE
from dockercomp.protocol.integrity import HASH_RE
from dockercomp.protocol.limits import ENV_NAME_RE, INT64_MAX, INT64_MIN, MAX_LEASE, MAX_SLOTS, MIN_SLOTS
from dockercomp.protocol.limits import NAME_RE as CLIENT_NAME_RE

from .auth import MAKEABLE, NAME_RE, Role
from .handlers import BaseHandler
from .lifecycle import AttemptState, Drmaa2State, JobState, UnitState

Schema = dict[str, Any]
Routes = Iterable[tuple[str, type[BaseHandler], Mapping[str, frozenset[Role]]]]
BODY_TYPES = (codec.JSON, codec.MSGPACK)  # every structured body may be either (BaseHandler.payload)
OCTETS = "application/octet-stream"


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def anchored(pattern: str | re.Pattern[str]) -> str:
    """A Python regular expression as a JSON Schema pattern (those match anywhere unless anchored)."""
    return f"^(?:{pattern if isinstance(pattern, str) else pattern.pattern})$"


# -- schemas from the message dataclasses --------------------------------------------------


def schema_of(hint: Any, defs: dict[str, Schema], cap: messages.Cap = messages.DEFAULT_CAP) -> Schema:
    """The JSON Schema of a message field's type hint within its bounds (``Cap``, as
    ``Message.from_wire`` applies them), adding the messages and enums it names to ``defs``."""
    if hint is str:
        return {"type": "string", "maxLength": cap.length}
    if hint is bool:
        return {"type": "boolean"}
    if hint is int:
        return {"type": "integer", "minimum": INT64_MIN, "maximum": INT64_MAX}
    if hint is float:
        return {"type": "number"}
    if hint is bytes:  # a msgpack bin; JSON has no bytes (upload them as a blob instead)
        return {"type": "string", "contentMediaType": OCTETS, "description": "bytes (msgpack bin only)"}
    if hint is type(None):
        return {"type": "null"}
    if hint is Any:
        return {}
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return {"anyOf": [schema_of(option, defs, cap) for option in typing.get_args(hint)]}
    if origin is list:
        (item,) = typing.get_args(hint)
        return {"type": "array", "items": schema_of(item, defs, cap), "maxItems": cap.items}
    if origin is dict:
        key, value = typing.get_args(hint)
        if key is not str:
            raise TypeError(f"a wire map's keys are strings, not {key!r}")
        return {"type": "object", "additionalProperties": schema_of(value, defs, cap), "maxProperties": cap.items,
                "propertyNames": {"maxLength": cap.keys}}  # fmt: skip
    if isinstance(hint, type) and issubclass(hint, StrEnum):
        defs.setdefault(hint.__name__, {"type": "string", "enum": [m.value for m in hint], **_doc(hint)})
        return ref(hint.__name__)
    if isinstance(hint, type) and issubclass(hint, messages.Message):
        return message_schema(hint, defs)
    raise TypeError(f"no schema for {hint!r}")


LIMITS: dict[tuple[str, str], Schema] = {
    ("RegisterRequest", "name"): {"pattern": anchored(CLIENT_NAME_RE)},
    ("RegisterRequest", "slots"): {"minimum": MIN_SLOTS, "maximum": MAX_SLOTS},
    ("Heartbeat", "slots"): {"minimum": 0, "maximum": MAX_SLOTS},
    ("Heartbeat", "busy"): {"minimum": 0, "maximum": MAX_SLOTS},
    ("LeaseRequest", "max_units"): {"minimum": 0, "maximum": MAX_LEASE},
    ("LeaseRequest", "cpus"): {"minimum": 0},
    ("LeaseRequest", "memory"): {"minimum": 0},
    ("LeaseRequest", "gpus"): {"minimum": 0},
    ("LeaseRequest", "disk"): {"minimum": 0},
}
"""What the client protocol's handlers (server/api.py) check beyond a field's type."""


def message_schema(cls: type[messages.Message], defs: dict[str, Schema]) -> Schema:
    """A message as an object schema in ``defs``: every field typed, the ones without a default
    required, no other (``Message.from_wire`` refuses unknown fields)."""
    if cls.__name__ not in defs:
        defs[cls.__name__] = {}  # a placeholder, for a message that names itself
        hints = typing.get_type_hints(cls)
        fields = dataclasses.fields(cls)  # type: ignore[arg-type]
        required = [
            f.name for f in fields if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        ]
        defs[cls.__name__] = {
            "type": "object",
            "properties": {
                f.name: schema_of(hints[f.name], defs, cls.caps.get(f.name, messages.DEFAULT_CAP))
                | LIMITS.get((cls.__name__, f.name), {})
                for f in fields
            },
            "required": required,
            "additionalProperties": False,
            **_doc(cls),
        }
    return ref(cls.__name__)


def _doc(cls: type) -> Schema:
    doc = inspect.getdoc(cls) or ""
    if not doc or doc.startswith(f"{cls.__name__}("):  # dataclass's generated signature: says nothing
        return {}
    return {"description": doc}


# -- hand-written schemas: the JSON bodies no dataclass describes -------------------------

STRING = {"type": "string"}
INTEGER = {"type": "integer"}
NUMBER = {"type": "number"}
BOOLEAN = {"type": "boolean"}
OBJECT: Schema = {"type": "object"}
NULLABLE_NUMBER = {"type": ["number", "null"]}
NULLABLE_STRING = {"type": ["string", "null"]}
HASH = {"type": "string", "pattern": anchored(HASH_RE), "description": "xxh3-128, 32 lowercase hex digits"}
DIGEST = {"type": "string", "pattern": anchored(DIGEST_RE)}


def obj(required: Iterable[str] = (), closed: bool = False, **properties: Schema) -> Schema:
    """An object schema; ``closed``: no other properties (the handler refuses unknown keys)."""
    schema: Schema = {"type": "object", "properties": properties, "required": list(required)}
    if closed:
        schema["additionalProperties"] = False
    return schema


def array(items: Schema, **limits: int) -> Schema:
    return {"type": "array", "items": items, **limits}


def jobfile_schema() -> Schema:
    """The job file's shape (protocol/jobfile.py ``parse_jobfile`` is the whole truth; the
    patterns and limits are its own)."""
    command = array(STRING, minItems=1, maxItems=1000)
    env = {
        "type": "object",
        "maxProperties": 256,
        "propertyNames": {"pattern": anchored(ENV_NAME_RE)},
        "additionalProperties": STRING,
    }
    size = {"anyOf": [{"type": "integer", "minimum": 0}, {"type": "string", "examples": ["1MiB", "256MiB"]}]}
    duration = {"anyOf": [{"type": "number", "exclusiveMinimum": 0}, {"type": "string", "examples": ["5m", "2h"]}]}
    image = {"type": "string", "pattern": anchored(jobfile._IMAGE_RE)}
    scalar = {"type": ["string", "number", "boolean"]}
    sweep = {
        "anyOf": [
            obj(["start", "end"], closed=True, start=INTEGER, end=INTEGER, step={"type": "integer", "minimum": 1}),
            array(
                {"type": "object", "minProperties": 1, "maxProperties": 256, "additionalProperties": scalar},
                minItems=1,
                maxItems=jobfile.MAX_SWEEP_POINTS,
            ),
        ]
    }
    container = obj(
        ["name"],
        closed=True,
        name={"type": "string", "pattern": anchored(jobfile.CONTAINER_NAME_RE)},
        image=image,
        command=command,
        env=env,
        main=BOOLEAN,
    )
    counts = {"type": "integer", "minimum": 1, "maximum": 16}
    properties = {
        "name": {"type": "string", "pattern": anchored(jobfile._NAME_RE)},
        "image": image,
        "description": STRING,
        "command": command,
        "env": env,
        "chunking": obj(
            closed=True,
            by={"enum": list(jobfile.CHUNK_MODES)},
            size=size,
            separator={"type": "string", "minLength": 1, "maxLength": 64},
        ),
        "redundancy": obj(
            closed=True,
            replicas=counts,
            quorum=counts,
            max_attempts={"type": "integer", "minimum": 1, "maximum": 100},
            adaptive={"type": "boolean"},
        ),
        "resources": obj(
            closed=True,
            cpus={"type": "number", "exclusiveMinimum": 0, "maximum": 256},
            memory=size,
            timeout=duration,
            gpus={"type": "integer", "minimum": 0, "maximum": jobfile.MAX_GPUS},
            disk=size,
            arch={"enum": ["", *jobfile.ARCHES]},
        ),
        "reduce": obj(["command"], closed=True, command=command),
        "priority": {"type": "integer", "minimum": -1000, "maximum": 1000},
        "mode": {"enum": list(jobfile.EXEC_MODES)},
        "sweep": sweep,
        "containers": array(container, minItems=2, maxItems=jobfile.MAX_CONTAINERS),
    }
    return obj(["name", "image"], closed=True, **properties) | {"description": "A job file (docs/jobfile.md)."}


def hand_written() -> dict[str, Schema]:
    """The schemas of the JSON bodies and replies that no dataclass describes."""
    state = {"type": "string", "enum": [s.value for s in UnitState]}
    counts = {"type": "object", "additionalProperties": INTEGER}
    job = obj(
        ["id", "name", "image", "owner", "state", "created_at", "units"],
        id=STRING,
        name=STRING,
        image=STRING,
        owner=STRING,
        state={"enum": [s.value for s in JobState]},
        created_at=NUMBER,
        finished_at=NULLABLE_NUMBER,
        suspended_at=NULLABLE_NUMBER,
        units=INTEGER,
        reduce=BOOLEAN,
        priority=INTEGER,
    )
    attempt = obj(
        ["id", "client", "state"],
        id=STRING,
        client=STRING,
        state={"enum": [s.value for s in AttemptState]},
        leased_at=NUMBER,
        finished_at=NULLABLE_NUMBER,
    )
    signature = obj(["key", "public_key", "signature"], closed=True, key=STRING, public_key=STRING, signature=STRING)
    layer = obj(["digest", "size", "pieces"], digest=DIGEST, size=INTEGER, pieces=array(HASH))
    image = obj(
        ["id", "config", "layers", "tags", "signatures"],
        id=DIGEST,
        config=HASH,
        config_size=INTEGER,
        owner=STRING,
        pushed_at=NUMBER,
        tags=array(STRING),
        signatures=array(ref("Signature")),
        layers=array({}),
    )
    return {
        "Error": obj(["error"], error={"type": "string", "description": "what to fix"}, status=INTEGER),
        "JobFile": jobfile_schema(),
        "JobCreate": obj(
            ["job"],
            closed=True,
            job=ref("JobFile"),
            hold=BOOLEAN,
            chunks=array(HASH, description="the uploaded chunks, one unit each (none for a sweep)"),  # type: ignore[arg-type]
        ),
        "JobCreated": obj(["job", "image"], job=STRING, image=STRING),
        "Job": job,
        "Jobs": obj(["jobs"], jobs=array(ref("Job"))),
        "JobStatus": obj(
            [*job["required"], "job", "drmaa2"],
            **job["properties"]
            | {
                "job": STRING,
                "units": counts,  # the units per state, here
                "drmaa2": {"enum": [s.value for s in Drmaa2State]},
                "unrunnable": {"type": ["object", "null"]},
            },
        ),
        "Units": obj(
            ["units"],
            units=array(
                obj(
                    ["id", "index", "kind", "state", "attempts"],
                    id=STRING,
                    index=INTEGER,
                    kind=STRING,
                    state=state,
                    output=NULLABLE_STRING,
                    attempts=array(attempt),
                )
            ),
        ),
        "Clients": obj(
            ["clients"],
            clients=array(
                obj(["id", "name", "online"], id=STRING, name=STRING, online=BOOLEAN, slots=INTEGER, busy=INTEGER)
            ),
        ),
        "Chunks": obj(["chunks"], chunks=array(obj(["hash", "size"], hash=HASH, size=INTEGER))),
        "Blob": obj(["hash", "size"], hash=HASH, size=INTEGER),
        "Signature": signature,
        "Layer": layer,
        "LayerPut": obj(
            ["size", "pieces"], closed=True, size={"type": "integer", "minimum": 0}, pieces=array(HASH, minItems=1)
        ),
        "Image": image,
        "Images": obj(["images"], images=array(ref("Image"))),
        "ImagePush": obj(
            ["config"], closed=True, config=HASH, id=DIGEST, tags=array({"type": "string", "pattern": anchored(TAG_RE)})
        ),
        "Key": obj(
            ["name", "role", "state"],
            name=STRING,
            role={"enum": [r.value for r in Role]},
            account=STRING,
            client=NULLABLE_STRING,
            created_at=NUMBER,
            expires_at=NULLABLE_NUMBER,
            revoked_at=NULLABLE_NUMBER,
            state={"enum": ["active", "expired", "revoked"]},
        ),
        "Keys": obj(["keys"], keys=array(ref("Key"))),
        "KeyCreate": obj(
            ["name", "role"],
            closed=True,
            name={"type": "string", "pattern": anchored(NAME_RE)},
            role={"enum": [r.value for r in MAKEABLE]},
            expires={"type": ["string", "number", "null"], "examples": ["30d"]},
        ),
        "NewKey": {"allOf": [ref("Key"), obj(["token"], token=STRING)]},
        "KeyRevoked": obj(["name", "revoked"], name=STRING, revoked={"type": "integer", "minimum": 0}),
        "Session": obj(["role", "name"], role={"enum": [r.value for r in Role]}, name=STRING),
        "SignedOut": obj(["signed_out"], signed_out=BOOLEAN),
        "Health": obj(["ok"], ok=BOOLEAN),
    }


# -- operations: what each (handler, method) takes and answers ----------------------------


@dataclass(frozen=True)
class Operation:
    summary: str
    ok: int = 200
    reply: Schema | type[messages.Message] | None = None  # a structured (JSON or msgpack) reply
    reply_type: str = ""  # or a reply of another media type
    body: Schema | type[messages.Message] | None = None  # a structured request body
    body_type: str = ""  # or a raw one of this media type
    query: Mapping[str, Schema] = dataclasses.field(default_factory=dict)
    more: Mapping[int, str] = dataclasses.field(default_factory=dict)  # other successes: status -> description


PAGE = {
    "offset": {"type": "integer", "minimum": 0, "maximum": 10**9},
    "limit": {"type": "integer", "minimum": 1, "maximum": 1000},
}
CLIENT_VIEW: dict[str, Schema] = {  # server/dashboard.py's ClientView: which clients the dashboard's page shows
    "offset": {"type": "integer", "minimum": 0, "maximum": 10**6},
    "limit": {"type": "integer", "minimum": 1, "maximum": 200},
    "sort": {"enum": ["name", "state", "busy", "valid", "errors", "reliability", "last_seen"]},
    "order": {"enum": ["asc", "desc"]},
    "state": {"enum": ["all", "online", "offline", "quarantined"]},
    "q": {"type": "string", "maxLength": 64, "pattern": "^[^\\x00-\\x1f\\x7f]*$"},
    "expand": {"type": "string", "maxLength": 1300, "pattern": "^[A-Za-z0-9_.,-]*$"},
}
BLOB_READ = {206: "a Range of the blob (Content-Range says which)", 304: "the blob is as the If-None-Match said"}
M = messages
OPERATIONS: dict[tuple[str, str], Operation] = {
    ("HealthHandler", "GET"): Operation("Whether the master answers", reply=ref("Health")),
    ("OpenAPIHandler", "GET"): Operation("This document", reply_type=codec.JSON),
    ("MetricsHandler", "GET"): Operation(
        "Prometheus metrics, for the operator or --metrics-token-file's token", reply_type="text/plain"
    ),
    ("RegisterHandler", "POST"): Operation(
        "Register a machine: a client id and its token", body=M.RegisterRequest, reply=M.RegisterReply
    ),
    ("HeartbeatHandler", "POST"): Operation(
        "A client says it lives and what runs on it; the reply may carry commands",
        body=M.Heartbeat,
        reply=M.HeartbeatReply,
    ),
    ("LeaseHandler", "POST"): Operation(
        "Lease units that fit what the client has free", body=M.LeaseRequest, reply=M.LeaseReply
    ),
    ("ResultsHandler", "POST"): Operation("Report results, one Ack each", body=M.ResultBatch, reply=M.AckBatch),
    ("ReleaseHandler", "POST"): Operation("Give leases back", body=M.ReleaseRequest, reply=M.AckBatch),
    ("BlobHandler", "GET"): Operation("A blob's bytes (ETag, Range)", reply_type=OCTETS, more=BLOB_READ),
    ("BlobHandler", "HEAD"): Operation("A blob's size (Content-Length)", more=BLOB_READ),
    ("BlobHandler", "PUT"): Operation(
        "Upload a blob, verified against its hash", ok=201, body_type=OCTETS, reply=ref("Blob")
    ),
    ("ImagesHandler", "GET"): Operation("The pushed images", reply=ref("Images")),
    ("ImagesHandler", "POST"): Operation(
        "Register an image from its uploaded config", ok=201, body=ref("ImagePush"), reply=ref("Image")
    ),
    ("SignaturesHandler", "POST"): Operation("Sign an image", ok=201, body=ref("Signature"), reply=ref("Image")),
    ("ImageHandler", "GET"): Operation("One image, by id or tag, with its layers", reply=ref("Image")),
    ("LayerHandler", "GET"): Operation("A recorded layer (404 until pushed)", reply=ref("Layer")),
    ("LayerHandler", "PUT"): Operation(
        "Record a layer from its uploaded pieces", ok=201, body=ref("LayerPut"), reply=ref("Layer")
    ),
    ("SignerHandler", "GET"): Operation("A signer's public key, PEM", reply_type="application/x-pem-file"),
    ("ChunkHandler", "POST"): Operation(
        "Chunk an upload on the master and store the chunks",
        ok=201,
        body_type=OCTETS,
        reply=ref("Chunks"),
        query={
            "by": {"enum": [m for m in jobfile.CHUNK_MODES if m != "files"]},
            "size": {"type": "string", "examples": ["1MiB", "1000"]},
            "separator": STRING,
        },
    ),
    ("JobsHandler", "GET"): Operation(
        "Jobs, newest first", reply=ref("Jobs"), query={"limit": {"type": "integer", "minimum": 1, "maximum": 10_000}}
    ),
    ("JobsHandler", "POST"): Operation("Create a job", ok=201, body=ref("JobCreate"), reply=ref("JobCreated")),
    ("JobHandler", "GET"): Operation("A job's status", reply=ref("JobStatus")),
    ("UnitsHandler", "GET"): Operation("A job's units with their attempts", reply=ref("Units"), query=PAGE),
    ("JobControlHandler", "POST"): Operation("Control a job; its status after", reply=ref("JobStatus")),
    ("ResultsDownloadHandler", "GET"): Operation(
        "A job's result", reply_type=OCTETS, query={"partial": {"enum": ["0", "1", "true", "yes"]}}
    ),
    ("ClientsHandler", "GET"): Operation("Every client", reply=ref("Clients")),
    ("KeysHandler", "GET"): Operation("Every key", reply=ref("Keys")),
    ("KeysHandler", "POST"): Operation(
        "Make a key: its token, shown once", ok=201, body=ref("KeyCreate"), reply=ref("NewKey")
    ),
    ("KeyHandler", "DELETE"): Operation("Revoke a key (an account's with its machines)", reply=ref("KeyRevoked")),
    ("SessionHandler", "GET"): Operation("Who is signed in", reply=ref("Session")),
    ("SessionHandler", "POST"): Operation("Sign in to the dashboard: sets the session cookie", reply=ref("Session")),
    ("SessionHandler", "DELETE"): Operation("Sign out", reply=ref("SignedOut")),
    ("SnapshotHandler", "GET"): Operation(
        "Everything the dashboard shows: the counts, the jobs, one page of clients and their total",
        reply=obj(["overview", "jobs", "clients", "total", "view"]),
        query=CLIENT_VIEW,
    ),
    ("OverviewHandler", "GET"): Operation("The dashboard's overview and series", reply=obj(["overview", "series"])),
    ("DashboardJobsHandler", "GET"): Operation("The dashboard's jobs", reply=obj(["jobs"], jobs=array(OBJECT))),
    ("DashboardJobHandler", "GET"): Operation(
        "One job with its units, for the dashboard",
        reply=obj(["job", "units", "offset"]),
        query={"offset": PAGE["offset"], "limit": PAGE["limit"]},
    ),
    ("EventsHandler", "GET"): Operation(
        "The dashboard's live feed (server-sent events): a snapshot, then patches of what changed",
        reply_type="text/event-stream",
        query=CLIENT_VIEW,
    ),
    ("DashboardClientsHandler", "GET"): Operation(
        "One page of clients",
        reply=obj(["total", "clients"], total=INTEGER, clients=array(OBJECT)),
        query={
            "state": {"enum": ["all", "online", "offline"]},
            "sort": {"enum": ["name", "last_seen", "reliability", "done", "errors", "containers"]},
            **PAGE,
        },
    ),
    ("InstallScriptHandler", "GET"): Operation("The volunteer's installer", reply_type="text/x-shellscript"),
    ("CleanupScriptHandler", "GET"): Operation("The cleanup script", reply_type="text/x-shellscript"),
    ("InstallInfoHandler", "GET"): Operation("key=value lines for the installer", reply_type="text/plain"),
    ("WheelHandler", "GET"): Operation("The client's wheel", reply_type=OCTETS),
}
"""Every (handler class, method) of the route table; tests/api/test_openapi.py checks none is missing."""

ERROR_STATUSES = {
    400: "a malformed body or a bad value",
    401: "a missing, unknown, expired or revoked token",
    403: "a token of a role the route does not admit",
    404: "unknown (or another scientist's) job, blob, ...",
    405: "a method the route does not have",
    409: "contradicts the state",
    413: "a body over the master's max_body",
    415: "a body neither JSON nor msgpack",
    416: "a Range past the end",
    422: "bytes that do not match their hash",
}


# -- the document --------------------------------------------------------------------------


ENCODED_COLON = "(?::|%3[Aa])"
"""How a route spells a colon that a client may percent-encode (server/app.py)."""


def path_templates(pattern: str, names: list[str]) -> list[tuple[str, dict[str, str]]]:
    """The OpenAPI paths of a route's regular expression: each capturing group becomes a
    parameter named after the handler's argument (its pattern the group's), but a group of
    plain words (``(suspend|resume|...)``) becomes one path per word. Returns (path, {name: pattern})."""
    found: list[tuple[str, dict[str, str]]] = [("", {})]
    i = arg = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            found = [(path + pattern[i + 1], params) for path, params in found]
            i += 2
        elif c == "(":
            end = _closing(pattern, i)
            inner = pattern[i + 1 : end]
            if re.fullmatch(r"[\w-]+(?:\|[\w-]+)*", inner):
                found = [(path + word, params) for path, params in found for word in inner.split("|")]
            else:
                name = names[arg]
                inner = inner.replace(ENCODED_COLON, ":")  # a parameter's pattern is of its decoded value
                found = [(path + "{" + name + "}", params | {name: inner}) for path, params in found]
            arg += 1
            i = end + 1
        elif c in "[]?*+{}|^$.":
            raise ValueError(f"route {pattern!r}: {c!r} outside a group has no OpenAPI path")
        else:
            found = [(path + c, params) for path, params in found]
            i += 1
    return found


def _closing(pattern: str, start: int) -> int:
    """The index of the parenthesis that closes the group opened at ``start``."""
    depth, i, in_class = 0, start, False
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            i += 2
            continue
        if in_class:
            in_class = c != "]"
        elif c == "[":
            in_class = True
        elif c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    raise ValueError(f"unbalanced parentheses in route {pattern!r}")


def argument_names(handler: type[BaseHandler], methods: Iterable[str]) -> list[str]:
    """The names of the path arguments a handler's methods take (those without a default)."""
    for method in methods:
        function = getattr(handler, method.lower())
        params = list(inspect.signature(function).parameters.values())[1:]
        return [p.name for p in params if p.default is inspect.Parameter.empty]
    return []


def security(roles: frozenset[Role]) -> list[dict[str, list[str]]]:
    """Bearer, or nothing for the routes an anonymous caller may use (with or without a token)."""
    if roles == {Role.ANONYMOUS}:
        return []
    return ([{}] if Role.ANONYMOUS in roles else []) + [{"bearer": []}]


def _content(schema: Schema, types: Iterable[str] = BODY_TYPES) -> dict[str, Any]:
    return {media: {"schema": schema} for media in types}


def operation(
    handler: type[BaseHandler],
    method: str,
    roles: frozenset[Role],
    params: Mapping[str, str],
    path: str,
    defs: dict[str, Schema],
) -> dict[str, Any]:
    op = OPERATIONS[(handler.__name__, method)]
    doc = inspect.getdoc(getattr(handler, method.lower())) or inspect.getdoc(handler) or ""
    if doc == inspect.getdoc(BaseHandler):
        doc = ""
    slug = re.sub(r"[^A-Za-z0-9]+", "_", path.removeprefix("/api/v1").replace("{", "by_")).strip("_")
    out: dict[str, Any] = {
        "operationId": f"{method.lower()}_{slug or 'root'}",
        "summary": op.summary,
        "security": security(roles),
        "x-roles": sorted(r.value for r in roles),
    }
    if doc:
        out["description"] = doc
    parameters: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string", "pattern": anchored(regex)}}
        for name, regex in params.items()
    ]
    parameters += [{"name": name, "in": "query", "required": False, "schema": s} for name, s in op.query.items()]
    if parameters:
        out["parameters"] = parameters
    if op.body is not None:
        schema = op.body if isinstance(op.body, dict) else message_schema(op.body, defs)
        out["requestBody"] = {"required": True, "content": _content(schema)}
    elif op.body_type:
        out["requestBody"] = {"required": True, "content": {op.body_type: {"schema": {}}}}
    reply: dict[str, Any] = {"description": op.summary}
    if method != "HEAD":
        if op.reply is not None:
            reply["content"] = _content(op.reply if isinstance(op.reply, dict) else message_schema(op.reply, defs))
        elif op.reply_type:
            reply["content"] = {op.reply_type: {"schema": {}}}
    responses: dict[str, Any] = {str(op.ok): reply}
    responses |= {str(status): {"description": why} for status, why in op.more.items()}
    error = "HeadError" if method == "HEAD" else "Error"
    responses |= {"4XX": {"$ref": f"#/components/responses/{error}"}, "503": {"$ref": "#/components/responses/Busy"}}
    out["responses"] = responses
    return out


def document(routes: Routes) -> dict[str, Any]:
    """The OpenAPI 3.1 document of these routes."""
    defs: dict[str, Schema] = {}
    paths: dict[str, dict[str, Any]] = {}
    for pattern, handler, access in routes:
        names = argument_names(handler, access)
        for path, params in path_templates(pattern, names):
            item = paths.setdefault(path, {})
            for method, roles in access.items():
                item[method.lower()] = operation(handler, method, roles, params, path, defs)
    error = {
        "description": "what to fix: " + "; ".join(f"{s} {why}" for s, why in ERROR_STATUSES.items()),
        "content": _content(ref("Error")),
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "dockercomp master",
            "version": "1",
            "description": "Volunteer computing on Docker: the master's HTTP API (docs/protocol.md). Bodies are "
            "JSON or msgpack (application/msgpack), the reply in the request's kind unless Accept says otherwise. "
            "The dashboard's page may send its session cookie (dockercomp_token) instead of the bearer token.",
        },
        "paths": dict(sorted(paths.items())),
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "description": "dct_... tokens"}},
            "schemas": dict(sorted((hand_written() | defs).items())),
            "responses": {
                "Error": error,
                "HeadError": {"description": "an error (HEAD: no body; the status says which)"},
                "Busy": {
                    "description": "the store is unavailable for now; try again",
                    "content": _content(ref("Error")),
                },
            },
        },
    }


_cached: bytes | None = None


class OpenAPIHandler(BaseHandler):
    """This document, built once from the route table."""

    async def get(self) -> None:
        global _cached
        if _cached is None:
            from .app import ROUTES  # the table names this handler: import it when it is asked for

            _cached = json.dumps(document(ROUTES), indent=1).encode()
        self.set_header("Content-Type", codec.JSON)
        self.finish(_cached)
