"""TLS everywhere but loopback: a master serving HTTPS with a certificate of a CA made here
(openssl), the daemon's session, the scientist's CLI and the installer verifying it, plain
HTTP to anything but loopback refused before a byte is sent, and a master behind a proxy."""

import io
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

from dockercomp.client.daemon import Daemon
from dockercomp.client.errors import MasterRefused, MasterUntrusted
from dockercomp.client.master import Backoff, MasterSession
from dockercomp.client.settings import ClientSettings
from dockercomp.protocol.messages import RegisterRequest
from dockercomp.scientist import Master, MasterError
from dockercomp.server.settings import ServerSettings
from dockercomp.settings import SettingsError
from tests.client.daemon_stub import StubRunner
from tests.masters import MasterProcess, Masters, start_master
from tests.pki import Pki, make_pki

ROOT = Path(__file__).resolve().parents[2]
LAN = "http://10.1.2.3:8080"  # never contacted: every test that names it refuses before sending
REFUSAL = "refusing plain HTTP to 10.1.2.3, which is not on loopback"
NO_VERIFY = pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")


# -- a CA and its certificates, made with openssl -------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


# -- masters ------------------------------------------------------------------------------------


MasterStarter = Callable[..., MasterProcess]


@pytest.fixture
def masters(tmp_path: Path) -> Iterator[MasterStarter]:
    """Start masters (``verify``: what their readiness poll checks the certificate against);
    each must exit 0 on SIGTERM without a traceback."""
    started = Masters(tmp_path)

    def start(*flags: str, verify: bool | str = True) -> MasterProcess:
        master = start_master(tmp_path / f"m{len(started.started)}", *flags, verify=verify)
        started.started.append(master)
        return master

    yield start
    started.close()


@pytest.fixture
def tls_master(masters: MasterStarter, pki: Pki) -> MasterProcess:
    """A master serving HTTPS with a certificate of our CA for 127.0.0.1; anyone may enroll."""
    return masters("--certfile", str(pki.cert), "--keyfile", str(pki.key), "--open-enrollment", verify=str(pki.ca))


@pytest.fixture
def wrong_name_master(masters: MasterStarter, pki: Pki) -> MasterProcess:
    """A master whose certificate, of our CA, names wrong.example and not 127.0.0.1."""
    return masters("--certfile", str(pki.wrong_cert), "--keyfile", str(pki.wrong_key), verify=False)


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Fail any connection this process tries to open; the addresses it tried."""
    tried: list[object] = []

    def refuse(self: socket.socket, address: object) -> None:
        tried.append(address)
        raise AssertionError(f"a connection to {address} was attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    return tried


def dockercomp(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("DOCKERCOMP_", "DC_", "REQUESTS_CA"))}
    return subprocess.run(
        [sys.executable, "-m", "dockercomp", *args],
        env={**base, **(env or {})},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# -- the master serves HTTPS ------------------------------------------------------------------------


def test_the_master_serves_https_verified_against_the_ca(tls_master: MasterProcess, pki: Pki) -> None:
    assert tls_master.url.startswith("https://127.0.0.1:")
    assert f"master listening on {tls_master.url}" in tls_master.log()
    reply = requests.get(f"{tls_master.url}/install.sh", verify=str(pki.ca), timeout=10)
    assert reply.status_code == 200
    assert f"DEFAULT_SERVER='{tls_master.url}'" in reply.text  # it knows it is reached by https
    with pytest.raises(requests.exceptions.SSLError, match="certificate verify failed"):
        requests.get(f"{tls_master.url}/install.sh", timeout=10)  # the system's CAs do not know ours
    with pytest.raises(requests.ConnectionError):  # no plain HTTP on the same port
        requests.get(tls_master.url.replace("https://", "http://") + "/install.sh", timeout=10)


def test_the_daemons_session_verifies_the_masters_certificate(tls_master: MasterProcess, pki: Pki) -> None:
    session = MasterSession(tls_master.url, ca=str(pki.ca), backoff=Backoff(0.01, 0.02))
    reply = session.register(RegisterRequest("tls-test", 1), tries=3)
    assert reply.client and reply.token and session.retries == 0
    with pytest.raises(MasterRefused):  # an HTTP answer over TLS: the blob is not there
        session.download("0" * 32, io.BytesIO(), tries=3)


def test_a_certificate_of_an_unknown_ca_is_refused_at_once(tls_master: MasterProcess) -> None:
    session = MasterSession(tls_master.url, backoff=Backoff(0.01, 0.02))  # the system's CAs only
    with pytest.raises(MasterUntrusted, match=r"certificate .* was refused: .*(issuer|self.signed)"):
        session.register(RegisterRequest("tls-test", 1), tries=20)
    assert session.retries == 0


@NO_VERIFY
def test_a_certificate_for_another_name_is_refused_at_once(wrong_name_master: MasterProcess, pki: Pki) -> None:
    session = MasterSession(wrong_name_master.url, ca=str(pki.ca), backoff=Backoff(0.01, 0.02))
    started = time.monotonic()
    with pytest.raises(MasterUntrusted) as refused:
        session.register(RegisterRequest("tls-test", 1))  # no bound on tries: a retry would loop forever
    assert time.monotonic() - started < 10 and session.retries == 0
    message = str(refused.value)
    assert "certificate" in message and "refused" in message and "127.0.0.1" in message, message
    assert "not valid for" in message or "mismatch" in message, message


@NO_VERIFY
def test_the_daemon_stops_with_exit_1_on_a_refused_certificate(
    wrong_name_master: MasterProcess, pki: Pki, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    work_dir = str(tmp_path / "work")  # allow_unsigned: no image is run before the daemon stops
    settings = ClientSettings(server=wrong_name_master.url, ca=str(pki.ca), work_dir=work_dir, allow_unsigned=True)
    settings.validate()
    runner = StubRunner()  # the daemon never gets to use it: it stops before its first lease
    daemon = Daemon(settings, runner)
    assert daemon.master.verify == str(pki.ca)
    outcome: list[int] = []
    thread = threading.Thread(target=lambda: outcome.append(daemon.run()), daemon=True)
    thread.start()
    thread.join(30)
    if thread.is_alive():  # it kept retrying: stop it before failing
        daemon.stop()
        daemon.stop()
        thread.join(10)
        pytest.fail("the daemon kept trying a master whose certificate it refused")
    assert outcome == [1]
    assert runner.runs == []  # no unit ran
    assert "certificate of the master" in caplog.text and "was refused" in caplog.text
    assert not (tmp_path / "work" / "identity.json").exists()


# -- plain HTTP only on loopback ------------------------------------------------------------------


def test_client_settings_refuse_plain_http_off_loopback(no_network: list[object], tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=REFUSAL) as refused:
        ClientSettings(server=LAN).validate()
    assert "https://" in str(refused.value) and "--insecure" in str(refused.value)
    with pytest.raises(SettingsError, match="not on loopback"):
        ClientSettings(server="http://master.example:8080").validate()
    ClientSettings(server=LAN, insecure=True).validate()
    for url in ("http://127.0.0.1:8080", "http://127.1.2.3", "http://localhost:1/", "http://[::1]:8080",
                "https://10.1.2.3:8443", "https://master.example"):  # fmt: skip
        ClientSettings(server=url).validate()
    with pytest.raises(SettingsError, match=r"ca .* is not a readable file"):
        ClientSettings(server="https://master.example", ca=str(tmp_path / "none.pem")).validate()
    assert no_network == []


def test_the_client_command_refuses_plain_http_off_loopback(tmp_path: Path) -> None:
    done = dockercomp("client", "--server", LAN, "--work-dir", str(tmp_path / "work"))
    assert done.returncode == 2, done.stderr
    assert REFUSAL in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "work").exists()


def test_the_scientist_refuses_plain_http_off_loopback(no_network: list[object], tmp_path: Path) -> None:
    with pytest.raises(MasterError, match=REFUSAL) as refused:
        Master(LAN)
    assert refused.value.bad_input
    Master(LAN, insecure=True)  # nothing is sent until a call
    Master("http://127.0.0.1:8080")
    with pytest.raises(MasterError, match="is not a readable file") as refused:
        Master("https://master.example", ca=str(tmp_path / "none.pem"))
    assert refused.value.bad_input
    assert no_network == []
    done = dockercomp("jobs", "--server", LAN)
    assert done.returncode == 2 and REFUSAL in done.stderr, done.stderr


def test_the_scientists_cli_verifies_the_masters_certificate(tls_master: MasterProcess, pki: Pki) -> None:
    token = tls_master.token
    assert token
    assert Master(tls_master.url, ca=str(pki.ca), token=token).jobs() == []
    for args, env in ((["--ca", str(pki.ca)], {}), ([], {"DOCKERCOMP_CA": str(pki.ca)})):
        done = dockercomp("jobs", "--server", tls_master.url, "--token", token, *args, env=env)
        assert done.returncode == 0, done.stderr
    done = dockercomp("jobs", "--server", tls_master.url, "--token", token)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert f"the certificate of the master at {tls_master.url} was refused" in done.stderr, done.stderr
    assert "--ca FILE" in done.stderr


# -- behind a proxy ---------------------------------------------------------------------------------


FORWARDED = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "public.example"}


def installer_default(master: MasterProcess, headers: dict[str, str]) -> str:
    reply = requests.get(f"{master.url}/install.sh", headers=headers, timeout=10)
    assert reply.status_code == 200, reply.text
    return next(line for line in reply.text.splitlines() if line.startswith("DEFAULT_SERVER="))


def test_behind_a_proxy_the_installer_names_the_public_https_address(masters: MasterStarter) -> None:
    proxied = masters("--behind-proxy")
    assert installer_default(proxied, FORWARDED) == "DEFAULT_SERVER='https://public.example'"
    assert installer_default(proxied, {}) == f"DEFAULT_SERVER='{proxied.url}'"
    hostile = {**FORWARDED, "X-Forwarded-Host": "x'; touch /tmp/owned; '"}
    assert installer_default(proxied, hostile) == "DEFAULT_SERVER=''"  # --server is then needed
    direct = masters()
    assert installer_default(direct, FORWARDED) == f"DEFAULT_SERVER='{direct.url}'"  # the headers are ignored


# -- a bad certificate stops the master at start ------------------------------------------------------


def test_the_master_refuses_to_start_with_a_bad_certificate(pki: Pki, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    cases = [
        (["--certfile", str(tmp_path / "missing.pem"), "--keyfile", str(pki.key)], 2, "is not a readable file"),
        (["--certfile", str(pki.cert)], 2, "certfile and keyfile go together"),
        (["--certfile", str(garbage), "--keyfile", str(garbage)], 1, "cannot load the TLS certificate"),
        (["--certfile", str(pki.cert), "--keyfile", str(pki.wrong_key)], 1, "the key does not belong"),
    ]
    for flags, code, fragment in cases:
        args = ["server", "--host", "127.0.0.1", "--port", "0", "--data-dir", str(tmp_path / "data"), *flags]
        done = dockercomp(*args, timeout=30)
        assert done.returncode == code, (flags, done.stderr)
        assert fragment in done.stderr and "Traceback" not in done.stderr, (flags, done.stderr)


def test_server_settings_take_both_certificate_and_key_or_neither(pki: Pki) -> None:
    ServerSettings(certfile=str(pki.cert), keyfile=str(pki.key), behind_proxy=True).validate()
    for bad in ({"certfile": str(pki.cert)}, {"keyfile": str(pki.key)}):
        with pytest.raises(SettingsError, match="give both"):
            ServerSettings(**bad).validate()


# -- the installer ----------------------------------------------------------------------------------


def installer(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    """installer.sh with ARGS, trusting a made-up project key (these runs are dry or refused)."""
    args = (*args, "--trust", "ab" * 32)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DOCKERCOMP_", "XDG_"))}
    env["HOME"] = str(home)
    home.mkdir(exist_ok=True)
    return subprocess.run(["sh", str(ROOT / "installer.sh"), *args], env=env, cwd=home, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=120)  # fmt: skip


def test_the_installer_plans_to_trust_the_ca(pki: Pki, tmp_path: Path) -> None:
    prefix = tmp_path / "prefix"
    done = installer("--server", "https://127.0.0.1:1", "--ca", str(pki.ca), "--prefix", str(prefix), "--dry-run",
                     home=tmp_path / "home")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"trusting the CA certificates in {pki.ca}" in done.stderr
    assert f"would: copy the CA certificates {pki.ca} to {prefix}/ca.pem" in done.stderr
    assert not prefix.exists()
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("hello\n")
    for ca, fragment in ((tmp_path / "missing.pem", "is not a readable file"), (not_pem, "holds no PEM certificate")):
        done = installer("--server", "https://127.0.0.1:1", "--ca", str(ca), "--dry-run", home=tmp_path / "home")
        assert done.returncode != 0 and fragment in done.stderr, done.stderr


def test_the_installer_refuses_plain_http_off_loopback(tmp_path: Path) -> None:
    prefix = tmp_path / "prefix"
    done = installer("--server", LAN, "--prefix", str(prefix), "--dry-run", home=tmp_path / "home")
    assert done.returncode != 0
    assert f"error: {REFUSAL}" in done.stderr and "--insecure" in done.stderr
    assert "would fetch" not in done.stderr
    done = installer("--server", LAN, "--insecure", "--prefix", str(prefix), "--dry-run", home=tmp_path / "home")
    assert done.returncode == 0, done.stderr
    assert f"would fetch {LAN}/api/v1/install" in done.stderr
    assert not prefix.exists()
