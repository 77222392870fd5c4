"""The OpenAPI document at /api/v1/openapi.json: valid OpenAPI 3.1, its paths and methods exactly
the routes of ROUTES (server/app.py), its schemas those of the message dataclasses and the job
file; and the regressions that schemathesis (tests/api/test_schemathesis.py) found."""

import dataclasses
import json
import re
from typing import Any

import requests
from openapi_spec_validator import validate
from openapi_spec_validator.validation import OpenAPIV31SpecValidator

from dockercomp.protocol import jobfile, messages
from dockercomp.protocol.limits import STDERR_TAIL
from dockercomp.server import openapi
from dockercomp.server.app import ROUTES
from dockercomp.server.lifecycle import Verb
from tests.masters import MasterProcess

from .helpers import assert_error

METHODS = ("get", "head", "post", "put", "delete", "patch", "options")
SAMPLES = {  # a value of every path parameter, to find the route a documented path lands on
    "blob": "0" * 32,
    "image_id": "sha256:" + "a" * 64,
    "ref": "dockercomp/sim:latest",
    "digest": "sha256:" + "c" * 64,
    "fingerprint": "d" * 64,
    "job_id": "j0123",
    "name": "alice",
}


def test_the_master_serves_a_valid_openapi_31_document_to_anyone(shared_master: MasterProcess) -> None:
    response = requests.get(f"{shared_master.api}/openapi.json", timeout=10)  # no token
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    served = response.json()
    assert served["openapi"].startswith("3.1")
    validate(served, cls=OpenAPIV31SpecValidator)
    assert served == json.loads(json.dumps(openapi.document(ROUTES)))


def documented() -> dict[str, dict[str, Any]]:
    return openapi.document(ROUTES)["paths"]


def test_the_documented_paths_and_methods_are_exactly_the_routes() -> None:
    """Each documented path, its parameters filled in, lands (first match, as Tornado routes)
    on a route that has exactly the documented methods; and every route is documented."""
    reached: dict[int, set[str]] = {}
    paths_of: dict[int, set[str]] = {}
    for path, item in documented().items():
        for param in re.findall(r"\{(\w+)\}", path):
            patterns = {p["schema"]["pattern"] for op in item.values() for p in op.get("parameters", [])
                        if p["name"] == param and p["in"] == "path"}  # fmt: skip
            assert patterns, f"{path}: {{{param}}} is not a documented path parameter"
            assert all(re.fullmatch(p, SAMPLES[param]) for p in patterns), (path, param, patterns)
        concrete = path.format(**SAMPLES)
        index = next((i for i, (regex, _, _) in enumerate(ROUTES) if re.fullmatch(regex, concrete)), None)
        assert index is not None, f"{path} is documented but no route serves it"
        regex, handler, access = ROUTES[index]
        methods = {m.upper() for m in item if m in METHODS}
        assert methods == set(access), f"{path} documents {methods}, {handler.__name__} ({regex}) has {set(access)}"
        reached.setdefault(index, set()).update(methods)
        paths_of.setdefault(index, set()).add(path)
    missing = [ROUTES[i][0] for i in range(len(ROUTES)) if i not in reached]
    assert not missing, f"routes not documented: {missing}"
    control = next(i for i, (_, handler, _) in enumerate(ROUTES) if handler.__name__ == "JobControlHandler")
    assert {p.rsplit("/", 1)[1] for p in paths_of[control]} == {v.value for v in Verb}


def test_every_operation_is_described_and_no_other() -> None:
    routed = {(handler.__name__, method) for _, handler, access in ROUTES for method in access}
    assert routed == set(openapi.OPERATIONS)


def test_every_operation_says_who_may_call_it_and_documents_its_errors() -> None:
    doc = openapi.document(ROUTES)
    assert doc["components"]["securitySchemes"]["bearer"] == {
        "type": "http", "scheme": "bearer", "description": "dct_... tokens",
    }  # fmt: skip
    error = doc["components"]["schemas"]["Error"]
    assert error["required"] == ["error"]
    for path, item in doc["paths"].items():
        for method, op in item.items():
            assert op["responses"]["4XX"]["$ref"].startswith("#/components/responses/"), (method, path)
            anonymous = op["x-roles"] == ["anonymous"]
            assert (op["security"] == []) == anonymous, (method, path)
    assert doc["paths"]["/api/v1/keys"]["post"]["x-roles"] == ["operator"]
    assert doc["paths"]["/api/v1/lease"]["post"]["security"] == [{"bearer": []}]
    assert doc["paths"]["/api/v1/clients/register"]["post"]["security"] == [{}, {"bearer": []}]


def test_the_client_protocol_schemas_are_the_message_dataclasses() -> None:
    schemas = openapi.document(ROUTES)["components"]["schemas"]
    for cls in (messages.RegisterRequest, messages.Heartbeat, messages.LeaseRequest, messages.ResultBatch,
                messages.ReleaseRequest, messages.RegisterReply, messages.HeartbeatReply, messages.LeaseReply,
                messages.AckBatch, messages.Grant, messages.ResultReport, messages.ContainerInfo):  # fmt: skip
        schema = schemas[cls.__name__]
        fields = dataclasses.fields(cls)
        assert list(schema["properties"]) == [f.name for f in fields]
        required = [
            f.name for f in fields if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        ]
        assert schema["required"] == required
        assert schema["additionalProperties"] is False
    assert schemas["ResultStatus"]["enum"] == [s.value for s in messages.ResultStatus]
    assert schemas["ErrorKind"]["enum"] == [k.value for k in messages.ErrorKind]
    report = schemas["ResultReport"]["properties"]
    assert report["error"] == {"anyOf": [{"$ref": "#/components/schemas/ErrorKind"}, {"type": "null"}]}
    attempts = messages.LeaseReply.caps["attempts"].items  # the bounds are from_wire's (the caps)
    assert schemas["LeaseReply"]["properties"]["attempts"] == {
        "type": "array", "items": {"$ref": "#/components/schemas/Grant"}, "maxItems": attempts,
    }  # fmt: skip
    assert schemas["ResultReport"]["properties"]["stderr_tail"]["maxLength"] == STDERR_TAIL
    body = documented()["/api/v1/lease"]["post"]["requestBody"]["content"]
    assert set(body) == {"application/json", "application/msgpack"}


def test_the_job_file_schema_has_the_job_files_keys() -> None:
    schemas = openapi.document(ROUTES)["components"]["schemas"]
    assert set(schemas["JobFile"]["properties"]) == jobfile._TOP_KEYS
    assert set(schemas["JobCreate"]["properties"]) == {"job", "chunks", "hold"}


def test_a_route_regex_becomes_paths_and_parameters() -> None:
    assert openapi.path_templates(r"/api/v1/jobs/([^/]+)/(suspend|cancel)", ["job_id", "verb"]) == [
        ("/api/v1/jobs/{job_id}/suspend", {"job_id": "[^/]+"}),
        ("/api/v1/jobs/{job_id}/cancel", {"job_id": "[^/]+"}),
    ]
    assert openapi.path_templates(r"/install\.sh", []) == [("/install.sh", {})]


# -- regressions found by schemathesis --------------------------------------------------------


def test_a_signature_for_an_image_id_with_a_percent_encoded_colon_reaches_its_handler(
    shared_master: MasterProcess,
) -> None:
    """Generic clients (schemathesis among them) percent-encode the colon of sha256:...; the
    route took only a bare colon, so such a POST fell through to GET /images/REF: a 405."""
    url = f"{shared_master.api}/images/sha256%3A{'a' * 64}/signatures"
    response = requests.post(url, json={"key": "k"}, headers=shared_master.headers, timeout=10)
    assert_error(response, 400, "body must be")
