"""The master: routes, the reaper, and ``serve`` which runs them until told to stop."""

import asyncio
import logging
import signal

from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets
from tornado.web import Application

from . import api, dashboard, install, scientist
from .errors import NotFound
from .handlers import BaseHandler, Master
from .settings import ServerSettings
from .store import open_store

log = logging.getLogger(__name__)
V1 = r"/api/v1"
HASH = r"([^/]+)"


class NotFoundHandler(BaseHandler):
    """Any method on an unknown path: 404, once the body is read (so the connection lives on)."""

    async def _not_found(self, *args: str, **kwargs: str) -> None:
        raise NotFound(f"no endpoint {self.request.method} {self.request.path}; see docs/protocol.md")

    get = head = post = put = delete = patch = options = _not_found


def make_app(master: Master) -> Application:
    routes = [
        (rf"{V1}/clients/register", api.RegisterHandler),
        (rf"{V1}/clients/heartbeat", api.HeartbeatHandler),
        (rf"{V1}/lease", api.LeaseHandler),
        (rf"{V1}/results", api.ResultsHandler),
        (rf"{V1}/release", api.ReleaseHandler),
        (rf"{V1}/blobs/{HASH}", api.BlobHandler),
        (rf"{V1}/chunks", scientist.ChunkHandler),
        (rf"{V1}/jobs", scientist.JobsHandler),
        (rf"{V1}/jobs/{HASH}", scientist.JobHandler),
        (rf"{V1}/jobs/{HASH}/units", scientist.UnitsHandler),
        (rf"{V1}/jobs/{HASH}/results", scientist.ResultsDownloadHandler),
        (rf"{V1}/clients", scientist.ClientsHandler),
        *install.ROUTES,
    ]
    return Application(
        [(path, handler, {"master": master}) for path, handler in routes] + dashboard.routes(master, V1),
        default_handler_class=NotFoundHandler,
        default_handler_args={"master": master},
        compress_response=False,
    )


async def reap(master: Master) -> None:
    """Expire leases past their deadline, forever; any master may do it (it is a CAS)."""
    settings = master.settings
    while True:
        await asyncio.sleep(settings.reap_interval)
        try:
            expired = await master.store.expire(master.now(), settings.lease_policy)
            if expired:
                log.info("reaper: %d lease(s) expired, their units are reissued", expired)
        except Exception:
            log.exception("reaper: expiring leases failed; trying again in %.0fs", settings.reap_interval)


async def serve(settings: ServerSettings, ready: asyncio.Event | None = None) -> None:
    """Run a master until SIGTERM or SIGINT."""
    store, blobs = await open_store(settings.store_url, settings.data_path)
    master = Master(settings, store, blobs, await store.secret())
    server = HTTPServer(make_app(master), max_body_size=settings.max_body_bytes)
    sockets = bind_sockets(settings.port, settings.host)
    server.add_sockets(sockets)
    port = sockets[0].getsockname()[1]
    reaper = asyncio.create_task(reap(master))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("master listening on http://%s:%d, store %s", settings.host, port, settings.store_url)
    if ready is not None:
        ready.set()
    try:
        await stop.wait()
    finally:
        log.info("master stopping")
        reaper.cancel()
        server.stop()
        await server.close_all_connections()
        await store.close()
        await blobs.close()
