"""Opening the meter database: connections, pragmas, migrations, thread-local readers.

Writes go through `writer.Writer` (one thread, one connection); reads use one connection per
thread so authentication never queues behind a write. Connections open an existing file only
(see `dbfile`); with a guard, only the very file the meter opened first.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time

from sqlite_utils import Database

from node.meter.dbfile import FileGuard, open_uri
from node.meter.errors import MeterUnavailable
from node.meter.schema import migrations, restore_seq_triggers

__all__ = ["MeterUnavailable", "Readers", "connect", "migrate"]

log = logging.getLogger(__name__)


def connect(
    path: str, busy_timeout_s: float, *, synchronous: str, guard: FileGuard | None = None
) -> sqlite3.Connection:
    """A connection in autocommit mode: transactions are explicit (`BEGIN IMMEDIATE`).

    The file must exist. With a guard, it must be the guard's file: checked before and after
    opening, before SQLite reads anything (a stranger's file would be read with our -wal).
    """
    if guard is not None:
        guard.check()
    try:
        conn = sqlite3.connect(
            open_uri(path),
            uri=True,
            timeout=busy_timeout_s,
            isolation_level=None,
            check_same_thread=False,
        )
    except sqlite3.Error as exc:
        raise MeterUnavailable(f"cannot open meter database {path}: {exc}") from exc
    try:
        if guard is not None:
            guard.check()
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
        conn.execute(f"PRAGMA synchronous = {synchronous}")
    except sqlite3.Error as exc:
        conn.close()
        raise MeterUnavailable(f"cannot open meter database {path}: {exc}") from exc
    except BaseException:
        conn.close()
        raise
    return conn


def migrate(conn: sqlite3.Connection, busy_timeout_s: float) -> None:
    """Apply pending migrations under the write lock; a no-op (no write) when none are pending.

    Several processes may open a new file at once. SQLite answers some of the lock upgrades
    this needs (the switch to WAL above all) with "database is locked" at once instead of
    waiting out the busy timeout, to avoid deadlocks; those are retried until it has passed.
    """
    deadline = time.monotonic() + busy_timeout_s
    while True:
        try:
            _migrate_once(conn)
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise MeterUnavailable(f"cannot prepare the meter database: {exc}") from exc
            time.sleep(0.01)
        except sqlite3.Error as exc:
            raise MeterUnavailable(f"cannot prepare the meter database: {exc}") from exc


def _migrate_once(conn: sqlite3.Connection) -> None:
    db = Database(conn, execute_plugins=False)
    if not migrations.pending(db):
        return
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("BEGIN IMMEDIATE")
    try:
        # Another process may have migrated while we waited for the lock.
        migrations.apply(db)  # nested in our transaction: sqlite-utils uses savepoints
        restored = restore_seq_triggers(db)
        if restored:
            log.warning("meter: a migration dropped the export triggers; recreated %s", restored)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


class Readers:
    """One read connection per thread, all closed together; each use checks the file first."""

    def __init__(self, path: str, busy_timeout_s: float, guard: FileGuard) -> None:
        self._path = path
        self._busy_timeout_s = busy_timeout_s
        self._guard = guard
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._closed = False

    def get(self) -> sqlite3.Connection:
        if self._closed:
            raise MeterUnavailable("the meter is closed")
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            with self._lock:
                if self._closed:
                    raise MeterUnavailable("the meter is closed")
                conn = connect(
                    self._path, self._busy_timeout_s, synchronous="NORMAL", guard=self._guard
                )
                conn.execute("PRAGMA query_only = 1")
                self._all.append(conn)
            self._local.conn = conn
        else:
            self._guard.check()
        return conn

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for conn in self._all:
                conn.close()
            self._all.clear()
