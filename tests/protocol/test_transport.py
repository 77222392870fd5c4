"""What the daemon's session and the scientist's client share: the words of a refusal, the CA
file check, the bearer token and the certificate check on every request."""

import json
from pathlib import Path

import pytest
import requests

from dockercomp.protocol import codec
from dockercomp.protocol.transport import Transport, ca_problem, error_message


def reply(status: int, body: bytes, content_type: str) -> requests.Response:
    response = requests.Response()
    response.status_code, response._content = status, body
    response.headers["Content-Type"] = content_type
    response.reason = "Bad Request"
    return response


def test_the_masters_error_message_in_json_or_msgpack() -> None:
    assert error_message(reply(400, json.dumps({"error": "no job 'x'"}).encode(), codec.JSON)) == "no job 'x'"
    assert error_message(reply(409, codec.pack({"error": "decided", "status": 409}), codec.MSGPACK)) == "decided"


def test_a_reply_not_from_a_master_says_what_there_is() -> None:
    assert error_message(reply(502, b"  <html>bad gateway</html>\n", "text/html")) == "<html>bad gateway</html>"
    assert error_message(reply(400, b"[1, 2]", codec.JSON)) == "[1, 2]"
    assert error_message(reply(400, b"", codec.JSON)) == "Bad Request"
    assert len(error_message(reply(500, b"x" * 1000, "text/plain"))) == 200


def test_a_ca_file_must_be_readable(tmp_path: Path) -> None:
    assert ca_problem("") is None and ca_problem(None) is None
    missing = tmp_path / "none.pem"
    assert ca_problem(str(missing)) == f"{missing} is not a readable file (of PEM CA certificates)"
    missing.write_text("-----BEGIN CERTIFICATE-----\n")
    assert ca_problem(str(missing)) is None


def test_each_request_has_the_token_and_the_ca(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    sent: list[dict[str, object]] = []

    def request(self: requests.Session, method: str, url: str, **kw: object) -> requests.Response:
        sent.append({"method": method, "url": url, **kw})
        return reply(200, b"{}", codec.JSON)

    monkeypatch.setattr(requests.Session, "request", request)
    transport = Transport("https://master.example/", timeout=7.0, token="dct_abc", ca=str(tmp_path / "ca.pem"))
    transport.request("GET", "/jobs")
    transport.request("POST", "/clients/register", token="", headers={"Accept": codec.MSGPACK}, timeout=2.0)
    transport.request("GET", "https://master.example/api/v1/blobs/x")
    first, second, third = sent
    assert first["url"] == "https://master.example/api/v1/jobs" and first["timeout"] == 7.0
    assert first["headers"] == {"Authorization": "Bearer dct_abc"} and first["verify"] == str(tmp_path / "ca.pem")
    assert second["headers"] == {"Accept": codec.MSGPACK} and second["timeout"] == 2.0  # "": no token
    assert third["url"] == "https://master.example/api/v1/blobs/x"
    assert Transport("https://m.example", timeout=1.0).verify is True  # the system's CAs
    assert "was refused: expired (a private CA is trusted with --ca FILE)" in transport.certificate_refused("expired")
