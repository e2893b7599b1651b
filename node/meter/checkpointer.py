"""WAL checkpoints on their own thread, so the writer never stalls on a checkpoint's fsyncs.

The writer's connection runs with `wal_autocheckpoint = 0`; this thread copies the WAL back into
the database every `interval_s` and once more on close. PASSIVE never waits for readers or
writers (another process, e.g. the server while the CLI closes), so closing never stalls; SQLite
removes the WAL itself when the last connection to the database closes.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading

from node.meter.db import connect

log = logging.getLogger(__name__)


class Checkpointer:
    def __init__(
        self, path: str | os.PathLike[str], busy_timeout_s: float, interval_s: float = 0.5
    ) -> None:
        self._conn = connect(path, busy_timeout_s, synchronous="NORMAL")
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="meter-checkpoint", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._checkpoint("PASSIVE")
        self._conn.close()

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            self._checkpoint("PASSIVE")

    def _checkpoint(self, mode: str) -> None:
        try:
            self._conn.execute(f"PRAGMA wal_checkpoint({mode})").fetchall()
        except sqlite3.Error as exc:  # read-only or busy: the next round (or reader) retries
            log.debug("meter checkpoint (%s) skipped: %s", mode, exc)
