"""The client's settings: defaults from this machine, then file < environment < flags."""

import os
from pathlib import Path

import pytest

from dockercomp.client.settings import ClientSettings
from dockercomp.settings import SettingsError, load_settings


def test_settings_defaults_come_from_this_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DC_HOST", "master.example")
    monkeypatch.setenv("DC_PORT", "9000")
    monkeypatch.setenv("XDG_DATA_HOME", "/data")
    settings = ClientSettings(insecure=True)  # plain http:// to a master off loopback (tests/tls has the rule)
    settings.validate()
    assert settings.server_url == "http://master.example:9000"
    assert settings.work_path == "/data/dockercomp/client"
    assert settings.slot_count == max(1, (os.cpu_count() or 1) - 1)
    assert settings.memory_bytes > 0 and settings.client_name


def test_settings_come_from_the_file_then_the_environment_then_flags(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config = tmp_path / "client.toml"
    config.write_text('[client]\nslots = 2\ncache_size = "64MiB"\nname = "from-file"\n')
    monkeypatch.setenv("DOCKERCOMP_CLIENT_SLOTS", "3")
    monkeypatch.setenv("DOCKERCOMP_CLIENT_NAME", "from-env")
    settings = load_settings(ClientSettings, "client", str(config), {"name": "from-flag", "slots": None})
    assert (settings.slot_count, settings.name, settings.cache_size) == (3, "from-flag", 64 << 20)
    refused = [
        ({"cache_size": "lots"}, "cache_size"),
        ({"server": "ftp://x"}, "server must be a URL"),
        ({"slots": 5000}, "slots must be"),
        ({"memory": "1MiB"}, "memory must be at least"),
    ]
    for bad, fragment in refused:
        with pytest.raises(SettingsError, match=fragment):
            load_settings(ClientSettings, "client", None, bad)
