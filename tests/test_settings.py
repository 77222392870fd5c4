"""Settings: defaults < TOML file < environment < flags, converted and validated at start."""

import dataclasses
import os

import pytest

from dockercomp.server.lifecycle import LeasePolicy
from dockercomp.server.settings import ServerSettings, default_data_dir
from dockercomp.settings import SettingsError, load_settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in list(os.environ):
        if name.startswith(("DOCKERCOMP_SERVER_", "DOCKERCOMP_TOY_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_DATA_HOME", "/data")


@pytest.fixture
def toml(tmp_path):
    def write(text: str) -> str:
        path = tmp_path / "settings.toml"
        path.write_text(text)
        return str(path)

    return write


def server(path=None, flags=None) -> ServerSettings:
    return load_settings(ServerSettings, "server", path, flags)


# -- precedence ---------------------------------------------------------------------------------


def test_defaults():
    settings = server()
    assert settings == ServerSettings()
    assert (settings.host, settings.port, settings.max_body) == ("127.0.0.1", 8080, 64 << 20)
    assert settings.data_path == "/data/dockercomp/master"
    assert settings.store_url == "sqlite:////data/dockercomp/master/dockercomp.db"
    assert settings.lease_policy == LeasePolicy(slack=120.0, heartbeat_timeout=90.0)


def test_a_file_overrides_defaults(toml):
    path = toml('[server]\nport = 9000\nhost = "0.0.0.0"\nlease_slack = 30\n')
    settings = server(path)
    assert (settings.port, settings.host, settings.lease_slack) == (9000, "0.0.0.0", 30.0)
    assert settings.heartbeat_timeout == ServerSettings.heartbeat_timeout


def test_a_file_may_use_top_level_keys(toml):
    assert server(toml("port = 9001\n")).port == 9001


def test_the_environment_overrides_the_file(toml, monkeypatch):
    path = toml('[server]\nport = 9000\nhost = "0.0.0.0"\n')
    monkeypatch.setenv("DOCKERCOMP_SERVER_PORT", "9100")
    settings = server(path)
    assert (settings.port, settings.host) == (9100, "0.0.0.0")


def test_flags_override_the_environment(toml, monkeypatch):
    path = toml("[server]\nport = 9000\nreap_interval = 2.0\n")
    monkeypatch.setenv("DOCKERCOMP_SERVER_PORT", "9100")
    monkeypatch.setenv("DOCKERCOMP_SERVER_LEASE_SLACK", "15")
    settings = server(path, {"port": 9200, "lease_slack": None, "host": None})
    assert settings.port == 9200  # flag over env over file
    assert settings.lease_slack == 15.0  # a flag left unset (None) does not hide the environment
    assert settings.reap_interval == 2.0  # the file, nothing above it
    assert settings.host == "127.0.0.1"  # the default, nothing above it


def test_every_layer_at_once(toml, monkeypatch):
    path = toml('[server]\nhost = "file"\nport = 1\ndata_dir = "file"\nlease_slack = 1\n')
    monkeypatch.setenv("DOCKERCOMP_SERVER_PORT", "2")
    monkeypatch.setenv("DOCKERCOMP_SERVER_DATA_DIR", "env")
    monkeypatch.setenv("DOCKERCOMP_SERVER_LEASE_SLACK", "2")
    settings = server(path, {"lease_slack": 3.0})
    assert (settings.host, settings.port, settings.data_dir, settings.lease_slack) == ("file", 2, "env", 3.0)
    assert settings.online_window == 60.0


def test_only_the_role_table_is_read(toml):
    path = toml("[server]\nport = 9000\n[client]\nslots = 4\n")
    assert server(path).port == 9000


def test_environment_names(monkeypatch):
    fields = [f.name for f in dataclasses.fields(ServerSettings)]
    for i, name in enumerate(("heartbeat_timeout", "reap_interval", "online_window", "heartbeat_interval")):
        assert name in fields
        monkeypatch.setenv(f"DOCKERCOMP_SERVER_{name.upper()}", str(i + 1))
    settings = server()
    assert (settings.heartbeat_timeout, settings.reap_interval, settings.online_window) == (1.0, 2.0, 3.0)
    assert settings.heartbeat_interval == 4.0
    monkeypatch.setenv("DOCKERCOMP_SERVER_port", "1")  # names are upper case
    assert server().port == 8080


def test_settings_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        server().port = 1  # type: ignore[misc]


def test_derived_values(monkeypatch):
    settings = server(flags={"data_dir": "/srv/dc", "max_body": "1KiB", "lease_slack": 5, "heartbeat_timeout": 7})
    assert settings.data_path == "/srv/dc"
    assert settings.store_url == "sqlite:////srv/dc/dockercomp.db"
    assert settings.max_body == 1024  # bytes, parsed once as the settings load
    assert settings.lease_policy == LeasePolicy(slack=5.0, heartbeat_timeout=7.0)
    assert server(flags={"store": "mongodb://db/dc"}).store_url == "mongodb://db/dc"
    monkeypatch.delenv("XDG_DATA_HOME")
    assert default_data_dir() == os.path.join(os.path.expanduser("~"), ".local", "share", "dockercomp", "master")


# -- conversion -----------------------------------------------------------------------------------


def test_environment_strings_are_converted(monkeypatch):
    monkeypatch.setenv("DOCKERCOMP_SERVER_PORT", " 9090 ")
    monkeypatch.setenv("DOCKERCOMP_SERVER_HEARTBEAT_TIMEOUT", "2.5")
    monkeypatch.setenv("DOCKERCOMP_SERVER_DATA_DIR", "123")
    monkeypatch.setenv("DOCKERCOMP_SERVER_OPEN_ENROLLMENT", "yes")
    settings = server()
    assert settings.port == 9090 and type(settings.port) is int
    assert settings.heartbeat_timeout == 2.5 and type(settings.heartbeat_timeout) is float
    assert settings.data_dir == "123"
    assert settings.open_enrollment is True


def test_file_values_are_converted(toml):
    settings = server(toml('port = "9090"\nheartbeat_timeout = 30\nmax_body = 2048\nreap_interval = "1.5"\n'))
    assert settings.port == 9090
    assert settings.heartbeat_timeout == 30.0 and type(settings.heartbeat_timeout) is float
    assert settings.max_body == 2048
    assert settings.reap_interval == 1.5
    assert server(toml("port = 9090.0\n")).port == 9090  # a whole float is an int


@dataclasses.dataclass(frozen=True)
class Toy:
    debug: bool = False
    limit: int | None = None
    ratio: float = 1.0
    name: str = "toy"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        *[("1", True), ("true", True), ("TRUE", True), ("yes", True), ("on", True)],
        *[("0", False), ("false", False), ("No", False), ("off", False), ("", False)],
    ],
)
def test_booleans_from_the_environment(monkeypatch, text, expected):
    monkeypatch.setenv("DOCKERCOMP_TOY_DEBUG", text)
    assert load_settings(Toy, "toy").debug is expected


def test_booleans_and_optionals_from_a_file(toml):
    toy = load_settings(Toy, "toy", toml("[toy]\ndebug = true\nlimit = 5\n"))
    assert toy == Toy(debug=True, limit=5)
    assert load_settings(Toy, "toy", flags={"debug": False}) == Toy()


def test_optional_ints_from_the_environment(monkeypatch):
    monkeypatch.setenv("DOCKERCOMP_TOY_LIMIT", "12")
    assert load_settings(Toy, "toy").limit == 12


# -- bad values -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("variable", "value", "name"),
    [
        ("PORT", "http", "port"),
        ("PORT", "80.5", "port"),
        ("PORT", "", "port"),
        ("HEARTBEAT_TIMEOUT", "soon", "heartbeat_timeout"),
        ("HEARTBEAT_TIMEOUT", "nan", "heartbeat_timeout"),
        ("LEASE_SLACK", "nan", "lease_slack"),
        ("HEARTBEAT_INTERVAL", "inf", "heartbeat_interval"),
        ("REAP_INTERVAL", "-inf", "reap_interval"),
    ],
)
def test_bad_environment_values_name_the_setting(monkeypatch, variable, value, name):
    monkeypatch.setenv(f"DOCKERCOMP_SERVER_{variable}", value)
    with pytest.raises(SettingsError, match=rf"\b{name}\b"):
        server()


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ('port = "http"', "port"),
        ("port = true", "port"),  # a bool is not a number
        ("port = 80.5", "port"),  # nor is a fraction a port
        ("port = [80]", "port"),
        ("port = {n = 80}", "port"),
        ('host = ["a", "b"]', "host"),
        ("host = 1979-05-27", "host"),
        ("data_dir = false", "data_dir"),
        ("open_enrollment = 2", "open_enrollment"),
        ("heartbeat_timeout = true", "heartbeat_timeout"),
        ("heartbeat_timeout = nan", "heartbeat_timeout"),
        ("heartbeat_timeout = inf", "heartbeat_timeout"),
        ('heartbeat_timeout = "5m"', "heartbeat_timeout"),
        ("lease_slack = -1", "lease_slack"),
        ("heartbeat_timeout = 0", "heartbeat_timeout"),
        ("reap_interval = -5", "reap_interval"),
        ("online_window = 0", "online_window"),
        ("heartbeat_interval = 0.0", "heartbeat_interval"),
        ("port = 70000", "port"),
        ("port = -1", "port"),
        ('max_body = "10"', "max_body"),
        ('max_body = "64XB"', "max_body"),
        ('max_body = "lots"', "max_body"),
        ('store = "postgres://db"', "store"),
        ("colour = 1", "colour"),
    ],
)
def test_bad_file_values_name_the_setting(toml, text, name):
    with pytest.raises(SettingsError, match=rf"\b{name}\b"):
        server(toml(f"[server]\n{text}\n"))


@pytest.mark.parametrize(
    ("flags", "name"),
    [
        ({"port": "x"}, "port"),
        ({"port": True}, "port"),
        ({"heartbeat_timeout": float("nan")}, "heartbeat_timeout"),
        ({"lease_slack": float("inf")}, "lease_slack"),
        ({"reap_interval": 0.0}, "reap_interval"),
        ({"max_body": "1B"}, "max_body"),
        ({"portt": 1}, "portt"),
    ],
)
def test_bad_flags_name_the_setting(flags, name):
    with pytest.raises(SettingsError, match=rf"\b{name}\b"):
        server(flags=flags)


@pytest.mark.parametrize(("variable", "value"), [("DEBUG", "maybe"), ("DEBUG", "2"), ("RATIO", "x"), ("LIMIT", "1.5")])
def test_bad_values_of_other_types(monkeypatch, variable, value):
    monkeypatch.setenv(f"DOCKERCOMP_TOY_{variable}", value)
    with pytest.raises(SettingsError, match=rf"setting {variable.lower()} must be"):
        load_settings(Toy, "toy")


def test_bool_settings_take_no_numbers_from_a_file(toml):
    with pytest.raises(SettingsError, match="debug"):
        load_settings(Toy, "toy", toml("[toy]\ndebug = 2\n"))


def test_unknown_settings_are_named_with_the_role(toml):
    with pytest.raises(SettingsError, match=r"unknown server setting.*colour, size"):
        server(toml("[server]\ncolour = 1\nsize = 2\n"))
    with pytest.raises(SettingsError, match=r"unknown server setting.*client"):
        server(toml("[client]\nslots = 4\n"))  # no [server] table: top-level keys are read


def test_a_missing_file_is_a_settings_error(tmp_path):
    with pytest.raises(SettingsError, match="cannot read settings file"):
        server(str(tmp_path / "nope.toml"))


def test_a_malformed_file_is_a_settings_error(toml):
    with pytest.raises(SettingsError, match="cannot read settings file"):
        server(toml("[server\nport = 1\n"))


@pytest.mark.parametrize("text", ['server = "x"', "server = 5", "server = [1, 2]"])
def test_a_role_that_is_not_a_table_is_a_settings_error(toml, text):
    with pytest.raises(SettingsError, match="server must be a table"):
        server(toml(text + "\n"))


def test_settings_errors_are_a_tree_of_their_own():
    from dockercomp.protocol.errors import ProtocolError

    assert not issubclass(SettingsError, ProtocolError)  # the CLI reports both as bad input (exit 2)


def test_sizes_are_bytes_however_they_are_given(toml, monkeypatch):
    assert server(toml('max_body = "2KiB"\n')).max_body == 2048
    monkeypatch.setenv("DOCKERCOMP_SERVER_MAX_BODY", "1MiB")
    assert server().max_body == 1 << 20
    assert server(flags={"max_body": "4KiB"}).max_body == 4096
    assert ServerSettings(max_body="8KiB").max_body == 8192  # built in Python, too
    with pytest.raises(SettingsError, match="max_body"):
        ServerSettings(max_body="lots")


# -- flags, made from the fields ------------------------------------------------------------------


def test_each_flag_comes_from_its_field(tmp_path):
    import argparse

    from dockercomp.client.settings import ClientSettings
    from dockercomp.settings import add_flags, flag_values

    parser = argparse.ArgumentParser()
    add_flags(parser, ServerSettings)
    args = parser.parse_args(["--port", "9000", "--max-body", "1MiB", "--heartbeat-timeout", "5", "--behind-proxy"])
    settings = server(flags=flag_values(args, ServerSettings))
    assert (settings.port, settings.max_body, settings.heartbeat_timeout, settings.behind_proxy) == (
        9000, 1 << 20, 5.0, True,
    )  # fmt: skip
    assert flag_values(parser.parse_args([]), ServerSettings) == dict.fromkeys(flag_values(args, ServerSettings))
    assert "heartbeat_interval" not in flag_values(args, ServerSettings)  # a field without a flag

    parser = argparse.ArgumentParser()
    add_flags(parser, ClientSettings)
    a, b = tmp_path / "a.pem", tmp_path / "b.pem"
    a.touch()
    b.touch()
    argv = ["--trust", str(a), "--trust", str(b), "--allow-images", "lab/*", "--memory", "2GiB", "--max-timeout", "2h"]
    values = flag_values(parser.parse_args(argv), ClientSettings)
    assert (values["trust"], values["allow_images"]) == (f"{a},{b}", "lab/*")  # repeatable, comma-joined
    client = load_settings(ClientSettings, "client", flags=values)
    assert (client.trust_files, client.memory, client.max_timeout) == ([str(a), str(b)], 2 << 30, 7200.0)
    assert load_settings(ClientSettings, "client").memory is None  # unset: half of this machine's


def test_client_sizes_and_durations_are_parsed_once(monkeypatch):
    from dockercomp.client.settings import ClientSettings

    monkeypatch.setenv("DOCKERCOMP_CLIENT_CACHE_SIZE", "64MiB")
    monkeypatch.setenv("DOCKERCOMP_CLIENT_MAX_TIMEOUT", "90m")
    monkeypatch.setenv("DOCKERCOMP_CLIENT_MEMORY", "")  # empty: worked out from this machine
    settings = load_settings(ClientSettings, "client")
    assert (settings.cache_size, settings.max_timeout, settings.memory) == (64 << 20, 5400.0, None)
    assert ClientSettings(memory="1GiB", inline_output="4KiB").memory == 1 << 30
    with pytest.raises(SettingsError, match="max_timeout"):
        ClientSettings(max_timeout="soon")
