"""The exporter thread: every final local meter row reaches PostgreSQL exactly once.

Rows are read past the local watermark in sequence order and inserted in batches with
`ON CONFLICT (request_id) DO NOTHING`; only after PostgreSQL committed a batch does the
watermark move (in the local meter). A crash between the two sends the batch again, and the
conflict clause drops the copies: at least once on the wire, exactly once in the table. Nothing
is ever dropped: on any error the connection is closed and the same rows are retried, with
exponential backoff, while the node goes on serving and metering locally.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from node.fleet.connect import connect, psycopg_module, shown
from node.fleet.schema import migrate
from node.fleet.status import ExportStatus
from node.meter import Meter, MeterUnavailable
from node.meter.export import COLUMNS

log = logging.getLogger(__name__)

# Local column → PostgreSQL column, in `COLUMNS` order, with the array type unnest needs.
_PG = {"id": "request_id", "user": '"user"'}
_TYPES = {
    "seq": "bigint",
    "prompt_tokens": "bigint",
    "cached_tokens": "bigint",
    "completion_tokens": "bigint",
    "prompt_price_micro": "bigint",
    "completion_price_micro": "bigint",
    "cached_price_micro": "bigint",
    "cost_units": "bigint",
    "started": "bigint",
    "finished": "bigint",
}
_TARGET = ", ".join(_PG.get(c, c) for c in COLUMNS)
_ARRAYS = ", ".join(f"%s::{_TYPES.get(c, 'text')}[]" for c in COLUMNS)
# One statement per batch: the rows travel as one array per column.
_INSERT = (
    f"INSERT INTO requests (node_id, {_TARGET}) SELECT %s, * FROM unnest({_ARRAYS})"
    " ON CONFLICT (request_id) DO NOTHING"
)
_NODE = (
    "INSERT INTO nodes (node_id, exported_seq) VALUES (%s, %s) ON CONFLICT (node_id) DO UPDATE"
    " SET exported_seq = greatest(nodes.exported_seq, excluded.exported_seq), last_export = now()"
)


class Exporter:
    def __init__(
        self,
        meter: Meter,
        url: str,
        node_id: str,
        *,
        batch: int = 1000,
        interval_s: float = 0.25,
        backoff_s: tuple[float, float] = (0.2, 10.0),
        clock: Callable[[], float] = time.time,
    ) -> None:
        """`interval_s`: how often to look for new final rows; `backoff_s`: the first and the
        largest wait after a failure (doubling in between)."""
        self._meter = meter
        self._url = url
        self.node_id = node_id
        self._batch = batch
        self._interval_s = interval_s
        self._backoff_s = backoff_s
        self._clock = clock
        self._started_at = clock()
        self._conn: Any = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._up = False
        self._last_success: float | None = None
        self._failures = 0
        self._error: str | None = "not connected yet"
        self._acked = meter.export_state().exported_seq
        self._thread: threading.Thread | None = None

    # -- life cycle ---------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="fleet-exporter", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop after one last pass (bounded by `timeout_s`), so a clean shutdown leaves
        nothing behind while PostgreSQL is up."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                log.warning("fleet export: still busy after %.0f s; rows left wait", timeout_s)

    # -- one pass -----------------------------------------------------------------------------

    def export_pending(self) -> int:
        """Send every row past the watermark; the number sent. Raises on any failure."""
        if self._conn is None or self._conn.closed:
            self._conn = connect(self._url)
            migrate(self._conn)
        sent = 0
        last_seq = self._meter.export_state().last_seq
        while self._acked < last_seq:
            rows = self._meter.exportable_rows(self._acked, self._batch)
            if not rows:
                break
            columns = [list(values) for values in zip(*rows, strict=True)]
            top = rows[-1][0]
            with self._conn.transaction():
                self._conn.execute(_INSERT, (self.node_id, *columns))
                self._conn.execute(_NODE, (self.node_id, top))
            # Committed: only now may the watermark pass these rows.
            self._meter.acknowledge_export(top).result()
            with self._lock:
                self._acked = top
            sent += len(rows)
        return sent

    def _run(self) -> None:
        psycopg = psycopg_module()
        delay = self._backoff_s[0]
        while True:
            stopping = self._stop.is_set()
            try:
                self.export_pending()
            except (psycopg.Error, OSError, MeterUnavailable) as exc:
                self._failed(exc)
                if stopping:
                    break
                self._stop.wait(delay)  # a stop request ends the wait; the last pass follows
                delay = min(delay * 2, self._backoff_s[1])
                continue
            except Exception as exc:  # a bug: keep the node serving, say so, keep trying
                log.exception("fleet export: unexpected failure")
                self._failed(exc)
                if stopping:
                    break
                self._stop.wait(self._backoff_s[1])
                continue
            delay = self._backoff_s[0]
            with self._lock:
                if not self._up:
                    log.info("fleet export: connected to %s", shown(self._url))
                self._up, self._error, self._last_success = True, None, self._clock()
            if stopping:
                break
            self._stop.wait(self._interval_s)
        self._close()

    def _failed(self, exc: BaseException) -> None:
        message = " ".join(str(exc).split()) or type(exc).__name__
        with self._lock:
            if self._up or self._error != message:
                log.warning("fleet export to %s failed (will retry): %s", shown(self._url), message)
            self._up, self._error = False, message
            self._failures += 1
        self._close()

    def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # closing a broken connection may fail too; it is gone either way
                log.debug("fleet export: close failed", exc_info=True)

    # -- status -------------------------------------------------------------------------------

    def status(self) -> ExportStatus:
        """A fresh look at the local meter (one indexed read) and the last pass's outcome."""
        with self._lock:
            acked, up, success = self._acked, self._up, self._last_success
            failures, error = self._failures, self._error
        try:
            lag = max(self._meter.export_state().last_seq - acked, 0)
            oldest = self._meter.first_waiting_finished(acked) if lag else None
        except MeterUnavailable:
            lag, oldest = 0, None
        lag_seconds = 0.0
        if oldest is not None:
            # A recovered row is backdated to its last checkpoint: count from our start at most.
            lag_seconds = max(self._clock() - max(oldest / 1e6, self._started_at), 0.0)
        return ExportStatus(self.node_id, up, lag, lag_seconds, success, failures, error)
