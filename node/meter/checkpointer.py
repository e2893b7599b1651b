"""WAL checkpoints on their own thread, so the writer never stalls on a checkpoint's fsyncs.

The writer's connection runs with `wal_autocheckpoint = 0`; this thread copies the WAL back into
the database every `interval_s` and once more on close. PASSIVE never waits for readers or
writers (another process, e.g. the server while the CLI closes), so closing never stalls; SQLite
removes the WAL itself when the last connection to the database closes.

The thread also checks the file every round, so a deleted or replaced file is noticed without
traffic; then `forget_wal` empties our WAL (TRUNCATE) so no file at our path can inherit it.
"""

from __future__ import annotations

import logging
import sqlite3
import threading

from node.meter.db import connect
from node.meter.dbfile import FileGuard

log = logging.getLogger(__name__)


class Checkpointer:
    def __init__(
        self, path: str, busy_timeout_s: float, guard: FileGuard, interval_s: float = 0.5
    ) -> None:
        self._conn = connect(path, busy_timeout_s, synchronous="NORMAL", guard=guard)
        self._guard = guard
        self._interval_s = interval_s
        self._lock = threading.Lock()  # the connection is used by this thread and `forget_wal`
        self._wal_forgotten = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="meter-checkpoint", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        if self._guard.lost:
            self.forget_wal()
        else:
            self._checkpoint("PASSIVE")
        self._conn.close()

    def forget_wal(self) -> None:
        """Copy the WAL into our (moved) file and truncate it to zero bytes. Our writer is
        stopped by the guard, so this waits at most for reads in flight."""
        if self._wal_forgotten:
            return
        result = self._checkpoint("TRUNCATE")
        self._wal_forgotten = result is not None and result[0] == 0  # 1: still busy, retry
        if not self._wal_forgotten:
            log.warning("meter: the WAL of the lost database file is not emptied yet")

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            if self._guard.lost:
                self.forget_wal()
            else:
                self._checkpoint("PASSIVE")

    def _checkpoint(self, mode: str) -> tuple[int, int, int] | None:
        try:
            with self._lock:
                return self._conn.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
        except sqlite3.Error as exc:  # read-only or busy: the next round (or reader) retries
            log.debug("meter checkpoint (%s) skipped: %s", mode, exc)
            return None
