"""The client daemon's settings (defaults < file < env DOCKERCOMP_CLIENT_* < flags).

Empty values mean "work it out from this machine": the master from $DC_HOST/$DC_PORT, slots
from the cores, memory from /proc/meminfo, the work directory under $XDG_DATA_HOME.
"""

import os
import platform
import re
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

from dockercomp.protocol.errors import ProtocolError
from dockercomp.protocol.messages import HostFacts
from dockercomp.protocol.quantities import parse_duration, parse_size
from dockercomp.protocol.transport import plain_http_refusal
from dockercomp.settings import SettingsError

DEFAULT_SERVER = "http://127.0.0.1:8080"
_NAME_RE = re.compile(r"[^\x00-\x1f\x7f]{1,128}")


def default_server() -> str:
    """``http://$DC_HOST:$DC_PORT`` when both are set, else the master on this machine."""
    host, port = os.environ.get("DC_HOST"), os.environ.get("DC_PORT")
    return f"http://{host}:{port}" if host and port else DEFAULT_SERVER


def default_work_dir() -> str:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(base, "dockercomp", "client")


def default_slots() -> int:
    """The machine's cores minus one, so the volunteer keeps one for themselves; at least one."""
    return max(1, (os.cpu_count() or 1) - 1)


def host_memory() -> int:
    """The machine's memory in bytes (MemTotal), 0 when /proc/meminfo cannot tell."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def host_facts(engine_version: str = "") -> HostFacts:
    """What the master shows operators about this machine."""
    return HostFacts(
        cores=os.cpu_count() or 0,
        memory=host_memory(),
        os=f"{platform.system()} {platform.release()}".strip(),
        arch=platform.machine(),
        docker=engine_version[:64],
    )


@dataclass(frozen=True)
class ClientSettings:
    server: str = ""  # the master's URL; default http://$DC_HOST:$DC_PORT, else http://127.0.0.1:8080
    name: str = ""  # shown to operators; default this machine's host name
    enroll: str = ""  # the volunteer token the master's operator gave, to register this machine with
    slots: int = 0  # units run at once (cores donated); 0: the cores minus one, at least one
    memory: str = ""  # memory donated to containers, e.g. 4GiB; default half of this machine's
    work_dir: str = ""  # identity, chunk cache, spooled results, status; default ~/.local/share/dockercomp/client
    cache_size: str = "2GiB"  # the chunk cache's bound
    inline_output: str = "1MiB"  # larger outputs are uploaded as blobs before their result
    stop_timeout: float = 60.0  # after a first stop, running units get this long to finish before release
    request_timeout: float = 30.0  # seconds one request to the master may take
    backoff_base: float = 1.0  # the first retry waits about this long; each failure doubles it
    backoff_max: float = 60.0  # ...up to this many seconds
    status_interval: float = 2.0  # how often the status file is rewritten when nothing changed
    upload_batch: int = 64  # results per upload request
    prefetch: bool = True  # lease the next batch while the current one computes
    trust: str = ""  # PEM files of public keys (comma-separated) whose signed images this volunteer runs
    allow_unsigned: bool = False  # run images no trusted key signed (a lab only)
    allow_images: str = ""  # comma-separated shell patterns an image's tag must match, e.g. dockercomp/*
    allow_registries: bool = False  # pull name@sha256:... images from their registry (never by tag)
    max_timeout: str = "24h"  # refuse units that may run longer than this
    ca: str = ""  # a PEM file of CA certificates to trust for the master instead of the system's
    insecure: bool = False  # allow plain http:// to a master not on loopback (a lab network); https is still verified

    @property
    def server_url(self) -> str:
        return (self.server or default_server()).rstrip("/")

    @property
    def client_name(self) -> str:
        return self.name or socket.gethostname() or "dockercomp-client"

    @property
    def slot_count(self) -> int:
        return self.slots or default_slots()

    @property
    def memory_bytes(self) -> int:
        if self.memory:
            return parse_size(self.memory, "memory")
        return max(256 << 20, host_memory() // 2)

    @property
    def work_path(self) -> str:
        return os.path.abspath(os.path.expanduser(self.work_dir or default_work_dir()))

    @property
    def cache_bytes(self) -> int:
        return parse_size(self.cache_size, "cache_size")

    @property
    def trust_files(self) -> list[str]:
        return [p.strip() for p in self.trust.split(",") if p.strip()]

    @property
    def image_patterns(self) -> list[str]:
        return [p.strip() for p in self.allow_images.split(",") if p.strip()]

    @property
    def max_timeout_seconds(self) -> float:
        return parse_duration(self.max_timeout, "max_timeout")

    @property
    def inline_bytes(self) -> int:
        return parse_size(self.inline_output, "inline_output")

    def validate(self) -> None:
        url = urlsplit(self.server_url)
        if url.scheme not in ("http", "https") or not url.netloc:
            raise SettingsError(f"server must be a URL such as http://127.0.0.1:8080, got {self.server_url!r:.80}")
        refusal = None if self.insecure else plain_http_refusal(self.server_url)
        if refusal:
            raise SettingsError(refusal)
        if self.ca and not (os.path.isfile(self.ca) and os.access(self.ca, os.R_OK)):
            raise SettingsError(f"ca {self.ca} is not a readable file (of PEM CA certificates)")
        if not _NAME_RE.fullmatch(self.client_name):
            raise SettingsError("name must be 1-128 printable characters")
        if not 0 <= self.slots <= 4096:
            raise SettingsError(f"slots must be from 1 to 4096 (0 for the cores minus one), got {self.slots}")
        try:
            memory, cache, _ = self.memory_bytes, self.cache_bytes, self.inline_bytes
        except ProtocolError as exc:  # parse_size's message names the setting
            raise SettingsError(str(exc)) from None
        if memory < 16 << 20:
            raise SettingsError(f"memory must be at least 16MiB, got {self.memory!r}")
        if cache < 1 << 20:
            raise SettingsError(f"cache_size must be at least 1MiB, got {self.cache_size!r}")
        for name in ("request_timeout", "backoff_base", "backoff_max", "status_interval"):
            if getattr(self, name) <= 0:
                raise SettingsError(f"{name} must be greater than 0")
        if self.stop_timeout < 0:
            raise SettingsError("stop_timeout must not be negative")
        try:
            if self.max_timeout_seconds <= 0:
                raise SettingsError("max_timeout must be greater than 0")
        except ProtocolError as exc:
            raise SettingsError(str(exc)) from None
        for path in self.trust_files:
            if not os.path.isfile(path):
                raise SettingsError(f"trust: {path} is not a file of PEM public keys")
        if not 1 <= self.upload_batch <= 10_000:
            raise SettingsError("upload_batch must be from 1 to 10000")
