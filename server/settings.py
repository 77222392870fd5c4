"""The master's settings (defaults < file < env DOCKERCOMP_SERVER_* < flags)."""

import math
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from dockercomp.protocol.quantities import parse_duration, parse_size
from dockercomp.settings import Settings, SettingsError, setting

if TYPE_CHECKING:  # the CLI builds the flags of `dockercomp server` from this class: it imports no more
    from .lifecycle import LeasePolicy
    from .scheduler import Scheduler


def default_data_dir() -> str:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(base, "dockercomp", "master")


@dataclass(frozen=True)
class ServerSettings(Settings):
    host: str = setting("127.0.0.1", "address to listen on (default 127.0.0.1)", flag="--host")
    port: int = setting(8080, "port to listen on (default 8080; 0 picks a free one)", flag="--port")
    # default: ~/.local/share/dockercomp/master
    data_dir: str = setting("", "where the embedded store and blobs live", flag="--data-dir")
    # default: DATA_DIR/dockercomp.db
    store: str = setting("", "sqlite:///PATH (default) or mongodb://HOST/DB", flag="--store")
    # bytes; the largest request body accepted (a chunk or a result batch)
    max_body: int = setting(64 << 20, "largest request body accepted, e.g. 64MiB", flag="--max-body", parse=parse_size)
    open_enrollment: bool = setting(
        False, "let anyone register a machine, each as an account of its own", flag="--open-enrollment"
    )
    heartbeat_interval: float = 10.0  # what clients are told
    heartbeat_timeout: float = setting(
        90.0, "seconds of silence before a client loses its leases", flag="--heartbeat-timeout"
    )
    lease_slack: float = setting(120.0, "seconds added to a job's timeout for a lease's deadline", flag="--lease-slack")
    reap_interval: float = setting(5.0, "seconds between looks for expired leases", flag="--reap-interval")
    quarantine_after: int = setting(
        3, "invalid results after which a client leases nothing (default 3; 0: never)", flag="--quarantine-after"
    )
    outlier_after: int = setting(
        10, "failures on units others computed after which a client that has more of them than valid results"
        " leases nothing (default 10; 0: never)", flag="--outlier-after",
    )  # fmt: skip
    trust_after: int = setting(
        10, "valid results in a row after which a client may decide a unit of an adaptive job alone (default 10;"
        " 0: never)", flag="--trust-after",
    )  # fmt: skip
    spot_checks: float = setting(
        0.1, "share of a trusted client's units still replicated, drawn at random (default 0.1)", flag="--spot-checks"
    )
    scheduler: str = setting(
        "fifo", "which job a lease serves: fifo (priority, then age) or fairshare (owners by recent use)",
        flag="--scheduler",
    )  # fmt: skip
    max_running_per_owner: int = setting(
        0, "units one owner may run at once (default 0: no cap)", flag="--max-running-per-owner"
    )
    # seconds; how fast fairshare forgets past use
    fairshare_half_life: float = setting(
        3600.0, "fairshare: time for past use to count half, e.g. 1h (default 1h)", flag="--fairshare-half-life",
        parse=parse_duration,
    )  # fmt: skip
    online_window: float = 60.0  # a client seen within this many seconds counts as online
    # serves HTTPS (TLS 1.2 or newer) instead of HTTP; both or neither
    certfile: str = setting("", "PEM certificate chain: serve HTTPS (with --keyfile)", flag="--certfile")
    keyfile: str = setting("", "the PEM private key of --certfile", flag="--keyfile")
    behind_proxy: bool = setting(
        False, "a TLS proxy is in front: trust its X-Forwarded-Proto/-Host and X-Real-Ip", flag="--behind-proxy"
    )
    # the Host names the dashboard answers to besides loopback names, this machine's names, the
    # bind address and any IP address (a page whose name rebinds to us gets 421); "*": any
    allowed_hosts: str = setting(
        "", "a host name the dashboard answers to (repeat the flag for more; * for any)", flag="--allowed-host",
        metavar="NAME", repeat=True,
    )  # fmt: skip
    # slow or stalled connections: seconds a connection may idle between requests (and to send
    # its headers), and to send a whole body (64MiB in 10 minutes is ~110KB/s); then it is closed
    idle_timeout: float = setting(
        120.0, "seconds a connection may idle (or take to send its headers), e.g. 2m", flag="--idle-timeout",
        parse=parse_duration,
    )  # fmt: skip
    body_timeout: float = setting(
        600.0, "seconds a request may take to send its body, e.g. 10m", flag="--body-timeout", parse=parse_duration
    )
    # rate limits per remote address, each a token bucket: a burst, then so many a second (0: none)
    register_rate: float = setting(
        1.0, "machines one address may register per second after a burst (0: no limit)", flag="--register-rate"
    )
    register_burst: int = setting(500, "machines one address may register at once", flag="--register-burst")
    auth_failure_rate: float = setting(
        1.0, "bad tokens one address may send per second after a burst (0: no limit)", flag="--auth-failure-rate"
    )
    auth_failure_burst: int = setting(300, "bad tokens one address may send at once", flag="--auth-failure-burst")
    # per-scientist quotas (0: unlimited); the operator is never held to them
    max_units_per_job: int = setting(
        1_000_000, "units one scientist's job may have (default 1000000; 0: no cap)", flag="--max-units-per-job"
    )
    max_open_units: int = setting(
        10_000_000, "units one scientist may have unfinished over all jobs (default 10000000; 0: no cap)",
        flag="--max-open-units",
    )  # fmt: skip
    max_running_jobs: int = setting(
        1000, "jobs one scientist may have unfinished at once (default 1000; 0: no cap)", flag="--max-running-jobs"
    )
    max_bytes_per_owner: int = setting(
        0, "bytes of blobs (chunks, image layers) one scientist may store here, e.g. 100GiB (default 0: no cap)",
        flag="--max-bytes-per-owner", parse=parse_size,
    )  # fmt: skip

    # a file holding a secret that may scrape /metrics besides the operator's token (never on the command line)
    metrics_token_file: str = setting(
        "", "a file holding a token that may read /metrics (besides the operator's)", flag="--metrics-token-file",
        metavar="PATH",
    )  # fmt: skip

    @property
    def data_path(self) -> str:
        return self.data_dir or default_data_dir()

    @property
    def store_url(self) -> str:
        return self.store or f"sqlite:///{os.path.join(self.data_path, 'dockercomp.db')}"

    @property
    def lease_policy(self) -> "LeasePolicy":
        from .lifecycle import LeasePolicy

        return LeasePolicy(
            slack=self.lease_slack, heartbeat_timeout=self.heartbeat_timeout, quarantine_after=self.quarantine_after,
            trust_after=self.trust_after, spot_checks=self.spot_checks, outlier_after=self.outlier_after,
        )  # fmt: skip

    def make_scheduler(self) -> "Scheduler":
        from .scheduler import SCHEDULERS

        return SCHEDULERS[self.scheduler](self.max_running_per_owner, self.fairshare_half_life)

    def metrics_token(self) -> str:
        """The secret of --metrics-token-file ("" without one): SettingsError when it cannot be read or is empty."""
        if not self.metrics_token_file:
            return ""
        try:
            with open(self.metrics_token_file) as f:
                token = f.read().strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise SettingsError(f"cannot read metrics_token_file {self.metrics_token_file}: {exc}") from None
        if not token:
            raise SettingsError(f"metrics_token_file {self.metrics_token_file} is empty; put the scraper's token in it")
        return token

    def validate(self) -> None:
        if not 0 <= self.port <= 65535:
            raise SettingsError(f"port must be 0-65535, got {self.port}")
        if not self.store_url.startswith(("sqlite://", "mongodb://", "mongodb+srv://")):
            raise SettingsError("store must be sqlite:///PATH or mongodb://HOST/DB")
        if self.max_body < 1024:
            raise SettingsError("max_body must be at least 1KiB")
        for name in ("heartbeat_interval", "heartbeat_timeout", "reap_interval", "online_window"):
            if getattr(self, name) <= 0:
                raise SettingsError(f"{name} must be greater than 0")
        if self.lease_slack < 0:
            raise SettingsError("lease_slack must not be negative")
        for name in ("quarantine_after", "outlier_after", "trust_after"):
            if getattr(self, name) < 0:
                raise SettingsError(f"{name} must not be negative (0: never)")
        if not 0 <= self.spot_checks <= 1:
            raise SettingsError(f"spot_checks must be a share from 0 to 1 (e.g. 0.1), got {self.spot_checks}")
        from .scheduler import SCHEDULERS

        if self.scheduler not in SCHEDULERS:
            raise SettingsError(f"scheduler must be one of {', '.join(SCHEDULERS)}, got {self.scheduler!r:.40}")
        for name in ("idle_timeout", "body_timeout"):
            if not 0 < getattr(self, name) <= 86400:
                raise SettingsError(f"{name} must be more than 0 seconds and at most a day, e.g. 2m")
        for name in ("register_rate", "auth_failure_rate"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise SettingsError(f"{name} must be a number of requests a second, 0 or more (0: no limit)")
        for name in ("register_burst", "auth_failure_burst"):
            if not 1 <= getattr(self, name) <= 1_000_000:
                raise SettingsError(f"{name} must be from 1 to 1000000")
        for name in ("max_units_per_job", "max_open_units", "max_running_jobs", "max_bytes_per_owner"):
            if getattr(self, name) < 0:
                raise SettingsError(f"{name} must not be negative (0: no cap)")
        if self.max_running_per_owner < 0:
            raise SettingsError("max_running_per_owner must not be negative (0: no cap)")
        if self.fairshare_half_life <= 0:
            raise SettingsError("fairshare_half_life must be greater than 0, e.g. 1h")
        if bool(self.certfile) != bool(self.keyfile):
            raise SettingsError("certfile and keyfile go together: give both (to serve HTTPS) or neither")
        for name in ("certfile", "keyfile"):
            path = getattr(self, name)
            if path and not (os.path.isfile(path) and os.access(path, os.R_OK)):
                raise SettingsError(f"{name} {path} is not a readable file")
        self.metrics_token()
