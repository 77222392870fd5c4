"""The master's settings (defaults < file < env DOCKERCOMP_SERVER_* < flags)."""

import os
from dataclasses import dataclass

from dockercomp.protocol.errors import ProtocolError
from dockercomp.protocol.quantities import parse_size
from dockercomp.settings import SettingsError

from .lifecycle import LeasePolicy


def default_data_dir() -> str:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(base, "dockercomp", "master")


@dataclass(frozen=True)
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 8080
    data_dir: str = ""  # default: ~/.local/share/dockercomp/master
    store: str = ""  # sqlite:///PATH (default: DATA_DIR/dockercomp.db) or mongodb://...
    max_body: str = "64MiB"  # the largest request body accepted (a chunk or a result batch)
    open_enrollment: bool = False  # let anyone register a machine, each as an account of its own
    heartbeat_interval: float = 10.0  # what clients are told
    heartbeat_timeout: float = 90.0  # a client silent this long loses its leases
    lease_slack: float = 120.0  # added to a job's timeout to make a lease's deadline
    reap_interval: float = 5.0  # how often expired leases are looked for
    online_window: float = 60.0  # a client seen within this many seconds counts as online
    certfile: str = ""  # PEM certificate chain: serve HTTPS (TLS 1.2 or newer) instead of HTTP
    keyfile: str = ""  # the PEM private key of certfile; both or neither
    behind_proxy: bool = False  # a TLS proxy in front: trust its X-Forwarded-Proto/-Host and X-Real-Ip

    @property
    def data_path(self) -> str:
        return self.data_dir or default_data_dir()

    @property
    def store_url(self) -> str:
        return self.store or f"sqlite:///{os.path.join(self.data_path, 'dockercomp.db')}"

    @property
    def max_body_bytes(self) -> int:
        return parse_size(self.max_body, "max_body")

    @property
    def lease_policy(self) -> LeasePolicy:
        return LeasePolicy(slack=self.lease_slack, heartbeat_timeout=self.heartbeat_timeout)

    def validate(self) -> None:
        if not 0 <= self.port <= 65535:
            raise SettingsError(f"port must be 0-65535, got {self.port}")
        if not self.store_url.startswith(("sqlite://", "mongodb://", "mongodb+srv://")):
            raise SettingsError("store must be sqlite:///PATH or mongodb://HOST/DB")
        try:
            max_body = self.max_body_bytes
        except ProtocolError as exc:  # parse_size's message names max_body
            raise SettingsError(str(exc)) from None
        if max_body < 1024:
            raise SettingsError("max_body must be at least 1KiB")
        for name in ("heartbeat_interval", "heartbeat_timeout", "reap_interval", "online_window"):
            if getattr(self, name) <= 0:
                raise SettingsError(f"{name} must be greater than 0")
        if self.lease_slack < 0:
            raise SettingsError("lease_slack must not be negative")
        if bool(self.certfile) != bool(self.keyfile):
            raise SettingsError("certfile and keyfile go together: give both (to serve HTTPS) or neither")
        for name in ("certfile", "keyfile"):
            path = getattr(self, name)
            if path and not (os.path.isfile(path) and os.access(path, os.R_OK)):
                raise SettingsError(f"{name} {path} is not a readable file")
