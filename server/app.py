"""The master: routes, the reaper, and ``serve`` which runs them until told to stop."""

import asyncio
import gc
import logging
import os
import re
import signal
import ssl
import sys
import time

from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets
from tornado.web import Application

from . import api, dashboard, events, images, install, keys, metrics, openapi, scientist
from .auth import OPERATOR_KEY, Key, Role, new_token, token_hash
from .errors import Conflict, NotFound
from .handlers import Answer, BaseHandler, Master, PlainRequests, RedactingFilter
from .settings import ServerSettings
from .store import open_store
from .store.base import REVALIDATE_SLICE

log = logging.getLogger(__name__)
V1 = r"/api/v1"
HASH = r"([^/]+)"
EXACT = re.compile(r"[A-Za-z0-9_/-]+")  # a route's pattern that matches only itself
IMAGE = r"(sha256:[0-9a-f]{64}|[^/]+(?:/[^/]+)*?)"  # an id, or a tag such as dockercomp/wordfreq:latest


class NotFoundHandler(BaseHandler):
    """Any method on an unknown path: 404, once the body is read (so the connection lives on)."""

    async def _not_found(self, *args: str, **kwargs: str) -> None:
        raise NotFound(f"no endpoint {self.request.method} {self.request.path}; see docs/protocol.md")

    get = head = post = put = delete = patch = options = _not_found


class HealthHandler(BaseHandler):
    async def get(self) -> None:
        self.reply({"ok": True})


PEOPLE = frozenset({Role.OPERATOR, Role.SCIENTIST})
MACHINES = frozenset({Role.CLIENT})
KNOWN = PEOPLE | MACHINES
OPERATOR = frozenset({Role.OPERATOR})
ANYONE = frozenset({Role.ANONYMOUS})
ENROLLING = frozenset({Role.VOLUNTEER, Role.ANONYMOUS})  # anonymous only with --open-enrollment

# Who may call what: every route, and per method the roles it admits. A scientist sees only
# their own jobs (the handlers answer 404 for another's); the operator sees everything.
ROUTES: list[tuple[str, type[BaseHandler], dict[str, frozenset[Role]]]] = [
    (rf"{V1}/health", HealthHandler, {"GET": ANYONE}),
    (rf"{V1}/openapi\.json", openapi.OpenAPIHandler, {"GET": ANYONE}),  # this table as OpenAPI 3.1
    # Prometheus scrapes, outside /api/v1 (its convention): the operator, or --metrics-token-file's token
    (r"/metrics", metrics.MetricsHandler, {"GET": OPERATOR}),
    # the client protocol: registration by a volunteer account (anyone, with open enrollment)
    (rf"{V1}/clients/register", api.RegisterHandler, {"POST": ENROLLING}),
    (rf"{V1}/clients/heartbeat", api.HeartbeatHandler, {"POST": MACHINES}),
    (rf"{V1}/lease", api.LeaseHandler, {"POST": MACHINES}),
    (rf"{V1}/results", api.ResultsHandler, {"POST": MACHINES}),
    (rf"{V1}/release", api.ReleaseHandler, {"POST": MACHINES}),
    (rf"{V1}/blobs/{HASH}", api.BlobHandler, {"GET": KNOWN, "HEAD": KNOWN, "PUT": KNOWN}),
    # images: pushed and signed by people, fetched by machines
    (rf"{V1}/images", images.ImagesHandler, {"GET": PEOPLE, "POST": PEOPLE}),
    # the colon as sent, or percent-encoded (%3A) as generic clients send it (Tornado decodes the argument)
    (rf"{V1}/images/(sha256(?::|%3[Aa])[0-9a-f]{{64}})/signatures", images.SignaturesHandler, {"POST": PEOPLE}),
    (rf"{V1}/images/{IMAGE}", images.ImageHandler, {"GET": KNOWN}),
    (rf"{V1}/layers/{IMAGE}", images.LayerHandler, {"GET": KNOWN, "PUT": PEOPLE}),
    (rf"{V1}/signers/{HASH}", images.SignerHandler, {"GET": ANYONE}),
    # scientists' jobs
    (rf"{V1}/chunks", scientist.ChunkHandler, {"POST": PEOPLE}),
    (rf"{V1}/jobs", scientist.JobsHandler, {"GET": PEOPLE, "POST": PEOPLE}),
    (rf"{V1}/jobs/{HASH}", scientist.JobHandler, {"GET": PEOPLE}),
    (rf"{V1}/jobs/{HASH}/units", scientist.UnitsHandler, {"GET": PEOPLE}),
    (rf"{V1}/jobs/{HASH}/({'|'.join(scientist.Verb)})", scientist.JobControlHandler, {"POST": PEOPLE}),
    (rf"{V1}/jobs/{HASH}/results", scientist.ResultsDownloadHandler, {"GET": PEOPLE}),
    # the operator's
    (rf"{V1}/clients", scientist.ClientsHandler, {"GET": OPERATOR}),
    (rf"{V1}/keys", keys.KeysHandler, {"GET": OPERATOR, "POST": OPERATOR}),
    (rf"{V1}/keys/{HASH}", keys.KeyHandler, {"DELETE": OPERATOR}),
    # the dashboard: people sign in; a scientist sees only their own jobs there, no client
    (rf"{V1}/session", dashboard.SessionHandler, {"GET": PEOPLE, "POST": PEOPLE, "DELETE": ANYONE}),
    *((path, handler, {"GET": PEOPLE}) for path, handler in dashboard.API),
    *((path, handler, {"GET": OPERATOR}) for path, handler in dashboard.OPERATOR_API),
    # what a volunteer needs to join, and the dashboard's page (which asks for a token)
    *((path, handler, {"GET": ANYONE}) for path, handler in install.ROUTES),
]


# the POSTs answered from the caller and the body alone, as plain requests (handlers.PlainRequests)
PLAIN: dict[type[BaseHandler], Answer] = {
    api.HeartbeatHandler: api.heartbeat,
    api.LeaseHandler: api.lease,
    api.ResultsHandler: api.results,
}


def plain_routes() -> dict[str, tuple[Answer, frozenset[Role]]]:
    """The exact paths of the PLAIN handlers' routes: their answer, and the roles the table admits."""
    routes = {}
    for path, handler, access in ROUTES:
        if handler in PLAIN:
            if not EXACT.fullmatch(path):
                raise ValueError(f"the route {path} of {handler.__name__} must be one exact path to be answered plain")
            routes[path] = (PLAIN[handler], access["POST"])
    return routes


def make_app(master: Master) -> Application:
    feed = dashboard.Feed(master)

    def feeds(handler: type[BaseHandler]) -> dict[str, dashboard.Feed]:
        return {"feed": feed} if issubclass(handler, dashboard.DashboardHandler) else {}

    handlers = [
        (path, handler, {"master": master, "access": access} | feeds(handler)) for path, handler, access in ROUTES
    ]
    return Application(
        handlers + dashboard.pages(master),
        default_handler_class=NotFoundHandler,
        default_handler_args={"master": master},
        compress_response=False,
    )


async def reap(master: Master) -> None:
    """Expire leases past their deadline and decide again what found-out clients voted on,
    forever; any master may do it (both are compare-and-sets)."""
    settings = master.settings
    while True:
        await asyncio.sleep(settings.reap_interval)
        try:
            expired = await master.store.expire(master.now(), settings.lease_policy)
            if expired:
                log.info("reaper: %d lease(s) expired, their units are reissued", expired)
            decided = slice_ = await master.store.revalidate(master.now())
            while slice_ == REVALIDATE_SLICE:  # more to do: in slices, other requests served between them
                await asyncio.sleep(0)
                slice_ = await master.store.revalidate(master.now())
                decided += slice_
            if decided:
                log.info("reaper: %d unit(s) a found-out client voted on are decided again by others", decided)
        except Exception:
            log.exception("reaper: this round failed; trying again in %.0fs", settings.reap_interval)


class Collector:
    """Python's cyclic garbage collector, kept from stopping the master for a second at a time.

    Every open connection keeps its stream, its HTTP connection, their buffers and callbacks
    alive, about 76 tracked objects each. Python's automatic full (generation 2) collection
    walks all of them, and runs once the old generation has had a quarter of its size added,
    counting every object that grew old however soon it was freed: with 10,000 clients
    connected, each idle connection's objects of its last request grow old before its next,
    and the full collections stopped the event loop for 0.3-1 s every few seconds (bench/
    README.md, "scale"), finding nothing to free. So every ``FREEZE_EVERY`` seconds whatever
    is tracked is moved out of the collector's sight (``gc.freeze()``, which costs nothing),
    and the automatic collections go on over what was made since, which is little.

    Why that is safe in a master that runs for months: a frozen object is still freed by
    reference counting the moment nothing refers to it, as a request's objects are when it
    ends: nearly all the master's garbage (with 10,000 clients the collector found about 1,500
    objects a minute in cycles). What a freeze keeps is garbage in reference cycles (a closed
    connection's, if it leaves any), which only a collection frees. To bound it, the memory
    Python has allocated (``sys.getallocatedblocks``, about 1 ms per 4 million blocks:
    counting the frozen objects instead walks them all, 0.1 s with 10,000 clients) is read
    after each freeze; when it is more than ``GROWTH`` times (and ``FLOOR`` blocks more than)
    what the last full collection left, every object is handed back, collected and frozen
    again: one pause, as long as one of Python's own. So the master's memory in Python objects
    stays within twice what was alive after the last full collection (or that and ``FLOOR``),
    whatever garbage the freezes keep. Growth in clients costs such a pause too, one per
    doubling (while they register)."""

    FREEZE_EVERY = 1.0  # seconds
    GROWTH = 2.0
    FLOOR = 1_000_000  # blocks (an object or a buffer each: 50-100 MiB); a fresh master has about 170,000

    def __init__(self) -> None:
        self.blocks_after_full = 0
        self.full_collections = 0

    def bound(self) -> float:
        """The blocks allocated past which every object is collected again."""
        return max(self.GROWTH * self.blocks_after_full, self.blocks_after_full + self.FLOOR)

    def step(self) -> None:
        """Freeze what is tracked; collect everything when the memory grew past the bound."""
        gc.freeze()
        if sys.getallocatedblocks() > self.bound():
            self.full()

    def full(self) -> None:
        """Collect every object, then freeze those left (at start-up: the modules, routes, store)."""
        started = time.perf_counter()
        gc.unfreeze()
        freed = gc.collect()
        gc.freeze()
        self.blocks_after_full = sys.getallocatedblocks()
        self.full_collections += 1
        log.info("garbage: %d objects freed, %d blocks left, in %.0f ms", freed, self.blocks_after_full,
                 1000 * (time.perf_counter() - started))  # fmt: skip

    async def run(self) -> None:
        """Until cancelled (when the master stops), which hands every object back to the collector."""
        self.full()
        try:
            while True:
                await asyncio.sleep(self.FREEZE_EVERY)
                self.step()
        finally:
            gc.unfreeze()


def tls_context(settings: ServerSettings) -> ssl.SSLContext | None:
    """The server side of TLS (1.2 or newer) when a certificate is set, else None (plain HTTP).
    Raises OSError with what to fix when the certificate or key cannot be loaded."""
    if not settings.certfile:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(settings.certfile, settings.keyfile)
    except ssl.SSLError as exc:
        why = "the key does not belong to the certificate" if "KEY_VALUES_MISMATCH" in str(exc) else exc.reason
        raise OSError(
            f"cannot load the TLS certificate {settings.certfile} with the key {settings.keyfile}: {why or exc} "
            "(certfile must be a PEM certificate chain, keyfile its PEM private key)"
        ) from None
    except OSError as exc:
        raise OSError(
            f"cannot read the TLS certificate {settings.certfile} or its key {settings.keyfile}: {exc.strerror or exc}"
        ) from None
    return context


async def first_operator_token(master: Master) -> None:
    """On a store's first start, make the operator's token: print it once, and keep it in
    DATA_DIR/operator.token (mode 0600) for the CLI on this machine. A master that finds an
    operator key already (made by another master sharing the store) makes none."""
    if any(key.role == Role.OPERATOR for key in await master.store.list_keys()):
        return
    token = new_token()
    try:
        await master.store.add_key(Key(OPERATOR_KEY, Role.OPERATOR, token_hash(token), master.now(), OPERATOR_KEY))
    except Conflict:  # another master made it a moment ago
        return
    path = os.path.join(master.settings.data_path, "operator.token")
    os.makedirs(master.settings.data_path, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    print(f"operator token (shown once; also in {path}):\n{token}", flush=True)


def redact_logs() -> None:
    """Every log handler of this process passes records through RedactingFilter: no token
    reaches a log line, whoever logs it (our modules, tornado's access and error logs)."""
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())


async def serve(settings: ServerSettings, ready: asyncio.Event | None = None) -> None:
    """Run a master until SIGTERM or SIGINT."""
    tls = tls_context(settings)  # before anything is opened: a bad certificate stops the start
    store, blobs = await open_store(settings.store_url, settings.data_path)
    store.scheduler = settings.make_scheduler()
    store.policy = settings.lease_policy
    store.events.subscribe(events.log_event)
    master = Master(settings, store, blobs)
    await first_operator_token(master)
    redact_logs()
    server = HTTPServer(
        PlainRequests(make_app(master), master, plain_routes()), max_body_size=settings.max_body, ssl_options=tls,
        xheaders=settings.behind_proxy, idle_connection_timeout=settings.idle_timeout,
        body_timeout=settings.body_timeout,
    )  # fmt: skip
    sockets = bind_sockets(settings.port, settings.host)
    server.add_sockets(sockets)
    port = sockets[0].getsockname()[1]
    reaper = asyncio.create_task(reap(master))
    collector = asyncio.create_task(Collector().run())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    scheme = "https" if tls else "http"
    log.info("master listening on %s://%s:%d, store %s", scheme, settings.host, port, settings.store_url)
    if settings.behind_proxy:
        log.info("behind a proxy: X-Forwarded-Proto, X-Forwarded-Host and X-Real-Ip are trusted")
    if ready is not None:
        ready.set()
    try:
        await stop.wait()
    finally:
        log.info("master stopping")
        reaper.cancel()
        collector.cancel()
        server.stop()
        await server.close_all_connections()
        await store.close()
        await blobs.close()
