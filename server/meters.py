"""This master process's own Prometheus instruments (server/metrics.py serves them)."""

from prometheus_client import CollectorRegistry, Counter, Histogram

from .events import COUNTERS


class Meters:
    """This master process's own instruments, and the running sums of its scrapes."""

    def __init__(self, token: str = "") -> None:
        self.token = token  # --metrics-token-file's secret ("" without one)
        self.registry = CollectorRegistry(auto_describe=True)
        self.request_seconds = Histogram(
            "dockercomp_request_seconds", "Time this master process took to answer a client's authorised "
            "lease, results or heartbeat request (per process)", ["route"], registry=self.registry,
        )  # fmt: skip
        self.blob_bytes = Counter(
            "dockercomp_blob_bytes_served", "Blob bytes this master process sent (per process)", registry=self.registry
        )
        self.settled: dict[str, int] = dict.fromkeys(COUNTERS, 0)  # activity of the minutes before settled_until
        self.settled_until = 0
