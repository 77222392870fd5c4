"""Checkpoints of the write-ahead log, off the event loop.

With ``synchronous = NORMAL`` a commit in WAL mode does not wait for the disk; a checkpoint,
which copies the log into the database and syncs it, does. SQLite runs one inside whichever
commit fills the log past its threshold, which would hold the master's event loop for as long
as the disk takes (hundreds of milliseconds on a busy disk). So the master's connections turn
that off (``PRAGMA wal_autocheckpoint = 0``) and this thread, on a connection of its own,
checkpoints every ``interval`` seconds without blocking readers or writers (PASSIVE).
"""

import logging
import sqlite3
import threading

log = logging.getLogger(__name__)


class Checkpointer:
    def __init__(self, path: str, interval: float = 1.0) -> None:
        self.path, self.interval = path, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sqlite-checkpoint", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        try:
            while not self._stop.wait(self.interval):
                try:
                    db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                except sqlite3.Error as exc:  # busy or locked: the next round does it
                    log.debug("checkpoint skipped: %s", exc)
            db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except sqlite3.Error as exc:
            log.warning("the last checkpoint of %s failed: %s", self.path, exc)
        finally:
            db.close()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)
