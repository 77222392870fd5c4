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

from dockercomp.protocol.jobfile import MAX_GPUS, docker_arch
from dockercomp.protocol.limits import MAX_BATCH, MAX_SLOTS, MIN_SLOTS, NAME_RE
from dockercomp.protocol.messages import HostFacts
from dockercomp.protocol.quantities import format_size, parse_duration, parse_size
from dockercomp.protocol.transport import ca_problem, plain_http_refusal
from dockercomp.settings import Settings, SettingsError, setting

DEFAULT_SERVER = "http://127.0.0.1:8080"
_HOURS_RE = re.compile(r"([01]?\d|2[0-4]):([0-5]\d)-([01]?\d|2[0-4]):([0-5]\d)")
DAY = 24 * 60


def parse_run_hours(text: str) -> tuple[tuple[int, int], ...]:
    """``22:00-07:00,12:00-13:30`` as (start, end) minutes of the day, local time; a range whose
    end is before its start wraps midnight; empty: always. SettingsError says what is wrong."""
    ranges = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        match = _HOURS_RE.fullmatch(part.replace(" ", ""))
        if not match:
            raise SettingsError(f"run_hours: {part!r:.40} is not a range of local times such as 22:00-07:00")
        h1, m1, h2, m2 = (int(g) for g in match.groups())
        start, end = h1 * 60 + m1, h2 * 60 + m2
        if start > DAY or end > DAY:
            raise SettingsError(f"run_hours: {part!r:.40}: 24:00 is the latest time of a day")
        start %= DAY  # 24:00-06:00 starts at midnight
        if start == end:
            raise SettingsError(f"run_hours: {part!r:.40} starts where it ends (for always, leave run_hours empty)")
        ranges.append((start, end))
    return tuple(ranges)


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


def host_gpus() -> int:
    """The NVIDIA GPUs of this machine (its /dev/nvidiaN devices), 0 when it has none."""
    try:
        return sum(1 for name in os.listdir("/dev") if re.fullmatch(r"nvidia\d+", name))
    except OSError:
        return 0


def free_disk(path: str) -> int:
    """Bytes free for us on the filesystem of ``path`` (0 when it cannot be told)."""
    try:
        st = os.statvfs(path)
    except OSError:
        return 0
    return st.f_bavail * st.f_frsize


def host_facts(engine_version: str = "") -> HostFacts:
    """What the master shows operators about this machine, and matches units against (its
    architecture as Docker names it: a unit built for arm64 never goes to an amd64 machine)."""
    return HostFacts(
        cores=os.cpu_count() or 0,
        memory=host_memory(),
        os=f"{platform.system()} {platform.release()}".strip(),
        arch=docker_arch(platform.machine()) or platform.machine()[:32],
        docker=engine_version[:64],
        gpus=host_gpus(),
    )


@dataclass(frozen=True)
class ClientSettings(Settings):
    server: str = setting("", "master URL (default http://$DC_HOST:$DC_PORT or http://127.0.0.1:8080)", flag="--server")
    name: str = setting("", "the name operators see (default: the host name)", flag="--name")
    enroll: str = setting("", "the volunteer token the master's operator gave you", flag="--enroll", metavar="TOKEN")
    # 0: the cores minus one, at least one
    slots: int = setting(0, "units run at once (default: the cores minus one, at least one)", flag="--slots")
    # bytes (a size such as 4GiB in the file, the environment and the flag); None: half of this machine's
    memory: int | None = setting(
        None,
        "memory donated to containers, e.g. 4GiB (default: half of this machine's)",
        flag="--memory",
        parse=parse_size,
    )
    # None: every GPU this machine has (its /dev/nvidiaN devices)
    gpus: int | None = setting(None, "GPUs donated to containers (default: all this machine has)", flag="--gpus")
    # identity, chunk cache, spooled results, status
    work_dir: str = setting(
        "", "identity, chunk cache and results (default ~/.local/share/dockercomp/client)", flag="--work-dir"
    )
    cache_size: int = setting(
        2 << 30, "bound of the chunk cache, e.g. 2GiB (default 2GiB)", flag="--cache-size", parse=parse_size
    )
    # bytes: a larger /output/result is refused unread; /output as a whole may hold no more on disk
    max_result: int = setting(
        256 << 20,
        "largest result a unit may leave, and most /output may hold, e.g. 256MiB (default 256MiB)",
        flag="--max-result",
        parse=parse_size,
    )
    # bytes downloaded for the images fetched from the master that the engine still holds
    image_budget: int = setting(
        10 << 30,
        "disk for images fetched from the master, e.g. 10GiB (default 10GiB); a larger image is refused",
        flag="--image-budget",
        parse=parse_size,
    )
    # bytes; larger outputs are uploaded as blobs before their result
    inline_output: int = setting(1 << 20, "largest output sent inline with its result", parse=parse_size)
    # after a first stop, running units get this long to finish before release
    stop_timeout: float = setting(60.0, "seconds running units get to finish after a first stop", flag="--stop-timeout")
    # service mode: a warm container with no unit for this long is stopped
    service_idle: float = setting(
        60.0,
        "how long a warm service-mode container waits for its next unit, e.g. 2m (default 60s)",
        flag="--service-idle",
        parse=parse_duration,
    )
    request_timeout: float = 30.0  # seconds one request to the master may take
    backoff_base: float = 1.0  # the first retry waits about this long; each failure doubles it
    backoff_max: float = 60.0  # ...up to this many seconds
    status_interval: float = 2.0  # how often the status file is rewritten when nothing changed
    upload_batch: int = 64  # results per upload request
    prefetch: bool = True  # lease the next batch while the current one computes
    # PEM files of public keys (comma-separated) whose signed images this volunteer runs
    trust: str = setting(
        "",
        "run only images signed by a public key in this PEM file (repeatable)",
        flag="--trust",
        metavar="KEYFILE",
        repeat=True,
    )
    allow_unsigned: bool = setting(False, "run images no trusted key signed (a lab only)", flag="--allow-unsigned")
    # comma-separated shell patterns an image's tag must match
    allow_images: str = setting(
        "",
        "run only images with a tag matching one of these patterns, e.g. 'dockercomp/*'",
        flag="--allow-images",
        metavar="PATTERN",
        repeat=True,
    )
    allow_registries: bool = setting(
        False,
        "pull images a job names as name@sha256:... from their registry (never by tag)",
        flag="--allow-registries",
    )
    # seconds (a duration in the file, the environment and the flag)
    max_timeout: float = setting(
        86400.0,
        "refuse units that may run longer than this, e.g. 2h (default 24h)",
        flag="--max-timeout",
        parse=parse_duration,
    )
    # local times, comma separated ranges; empty: always
    run_hours: str = setting(
        "",
        "run units only in these local hours, e.g. 22:00-07:00 (may wrap midnight; ranges comma separated)",
        flag="--run-hours",
        metavar="HH:MM-HH:MM",
        repeat=True,
    )
    # 0: whatever the load; else others' 1-minute load average must stay below it
    idle_load: float = setting(
        0.0,
        "run units only while the load average of everything else is below this, e.g. 1.5 (default 0: always)",
        flag="--idle-load",
    )
    idle_check: float = 30.0  # seconds between two looks at the load average (no flapping)
    ca: str = setting(
        "", "PEM CA certificates to trust for the master instead of the system's", flag="--ca", metavar="FILE"
    )
    # https is still verified
    insecure: bool = setting(
        False, "allow plain http:// to a master not on loopback (a lab network)", flag="--insecure"
    )

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
        """The memory donated: the setting, else half of this machine's."""
        if self.memory is not None:
            return self.memory
        return max(256 << 20, host_memory() // 2)

    @property
    def gpu_count(self) -> int:
        """The GPUs donated: the setting, else every one this machine has."""
        return self.gpus if self.gpus is not None else host_gpus()

    @property
    def work_path(self) -> str:
        return os.path.abspath(os.path.expanduser(self.work_dir or default_work_dir()))

    @property
    def trust_files(self) -> list[str]:
        return [p.strip() for p in self.trust.split(",") if p.strip()]

    @property
    def run_ranges(self) -> tuple[tuple[int, int], ...]:
        """The run hours as (start, end) minutes of the day; empty: always."""
        return parse_run_hours(self.run_hours)

    @property
    def image_patterns(self) -> list[str]:
        return [p.strip() for p in self.allow_images.split(",") if p.strip()]

    def validate(self) -> None:
        url = urlsplit(self.server_url)
        if url.scheme not in ("http", "https") or not url.netloc:
            raise SettingsError(f"server must be a URL such as http://127.0.0.1:8080, got {self.server_url!r:.80}")
        refusal = None if self.insecure else plain_http_refusal(self.server_url)
        if refusal:
            raise SettingsError(refusal)
        problem = ca_problem(self.ca)
        if problem:
            raise SettingsError(f"ca {problem}")
        if not NAME_RE.fullmatch(self.client_name):
            raise SettingsError("name must be 1-128 printable characters")
        if not (self.slots == 0 or MIN_SLOTS <= self.slots <= MAX_SLOTS):
            raise SettingsError(
                f"slots must be from {MIN_SLOTS} to {MAX_SLOTS} (0 for the cores minus one), got {self.slots}"
            )
        if self.memory_bytes < 16 << 20:
            raise SettingsError(f"memory must be at least 16MiB, got {format_size(self.memory_bytes)}")
        if self.gpus is not None and not 0 <= self.gpus <= MAX_GPUS:
            raise SettingsError(f"gpus must be from 0 to {MAX_GPUS}, got {self.gpus}")
        if self.cache_size < 1 << 20:
            raise SettingsError(f"cache_size must be at least 1MiB, got {format_size(self.cache_size)}")
        if self.max_result < 1 << 10:
            raise SettingsError(f"max_result must be at least 1KiB, got {format_size(self.max_result)}")
        if self.image_budget < 1 << 20:
            raise SettingsError(f"image_budget must be at least 1MiB, got {format_size(self.image_budget)}")
        for name in ("request_timeout", "backoff_base", "backoff_max", "status_interval"):
            if getattr(self, name) <= 0:
                raise SettingsError(f"{name} must be greater than 0")
        if self.stop_timeout < 0:
            raise SettingsError("stop_timeout must not be negative")
        if self.max_timeout <= 0:
            raise SettingsError("max_timeout must be greater than 0")
        if not 0 < self.service_idle <= 86400:
            raise SettingsError(f"service_idle must be more than 0s and at most 24h, got {self.service_idle:g}s")
        for path in self.trust_files:
            if not os.path.isfile(path):
                raise SettingsError(f"trust: {path} is not a file of PEM public keys")
        self.run_ranges  # noqa: B018 - raises SettingsError for a bad range
        if not (self.idle_load >= 0 and self.idle_load < 1e6):
            raise SettingsError(f"idle_load must be a load average such as 1.5 (0: any load), got {self.idle_load:g}")
        if not self.idle_check > 0:
            raise SettingsError("idle_check must be greater than 0")
        if not 1 <= self.upload_batch <= MAX_BATCH:
            raise SettingsError(f"upload_batch must be from 1 to {MAX_BATCH}")
