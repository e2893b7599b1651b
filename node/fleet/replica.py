"""The thread that keeps this node's copy of the fleet's keys, orgs and prices current.

It LISTENs on `llm_node_config` (every change notifies at commit) and also polls every
`poll_s`, so a change made on any node reaches this one within about a second, and within
the poll period even when a notification is lost. Each sync reads the rows changed since the
local version in one snapshot and applies them in one local transaction.

While PostgreSQL is away the local copy stays as it was: known keys keep working until the
copy is `max_staleness_s` old (then `check_fresh` refuses every key), unknown keys are refused
(they are not in the copy), and revocations arrive with the first sync after it returns.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from node.errors import NodeError
from node.fleet import config
from node.fleet.connect import connect, psycopg_module, shown
from node.fleet.schema import migrate
from node.meter import Meter, MeterUnavailable

log = logging.getLogger(__name__)

CHANNEL = "llm_node_config"
_TICK_S = 0.5  # how often the listening thread looks at its stop flag


class FleetConfigStale(NodeError):
    """The local copy of the fleet's keys is older than the node may trust: HTTP 503."""

    status = 503
    type = "server_error"
    code = "fleet_config_stale"


@dataclass(frozen=True)
class ReplicaStatus:
    up: bool  # the last sync reached PostgreSQL
    version: int  # the fleet's change counter the local copy reflects
    age_s: float | None  # since the fleet last confirmed the copy; None: never


class Replica:
    def __init__(
        self,
        meter: Meter,
        url: str,
        *,
        poll_s: float = 5.0,
        max_staleness_s: float = 300.0,
        backoff_s: tuple[float, float] = (0.2, 5.0),
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._meter = meter
        self._url = url
        self.poll_s = poll_s
        self.max_staleness_s = max_staleness_s
        self._backoff_s = backoff_s
        self._clock = clock
        self._stop = threading.Event()
        self._lock = threading.Lock()  # one sync at a time (the thread, an admin write)
        self._conn: Any = None
        self._joined = False
        self._up = False
        state = meter.sync_state()
        self._version = state.version
        self._synced_at = None if state.synced_at is None else state.synced_at / 1e6
        self._thread: threading.Thread | None = None

    # -- life cycle ---------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="fleet-replica", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        with self._lock:
            self._close()

    # -- the request path ---------------------------------------------------------------------

    def check_fresh(self) -> None:
        """Raise FleetConfigStale when the copy is too old to trust a key from it."""
        synced = self._synced_at
        if synced is None or self._clock() - synced > self.max_staleness_s:
            raise FleetConfigStale(
                "This node cannot reach the fleet database and its copy of the API keys is"
                " too old to trust; retry shortly or on another node."
            )

    def status(self) -> ReplicaStatus:
        synced = self._synced_at
        age = None if synced is None else max(self._clock() - synced, 0.0)
        return ReplicaStatus(self._up, self._version, age)

    # -- syncing ------------------------------------------------------------------------------

    def sync(self) -> int:
        """Bring the local copy up to the fleet's latest version; that version. Raises on any
        failure (psycopg.Error, OSError, MeterUnavailable)."""
        with self._lock:
            if self._conn is None or self._conn.closed:
                self._conn = connect(self._url, autocommit=True)
                migrate(self._conn)
            if not self._joined:
                added = config.push_local(self._conn, self._meter.config_rows())
                if added:
                    log.info("fleet config: this node brought %d keys, orgs or prices", added)
                changes = config.changes_since(self._conn, 0)  # the whole copy, once a start
                self._joined = True
            else:
                changes = config.changes_since(self._conn, self._version)
            if changes.complete or changes.version > self._version:
                self._meter.apply_config(changes).result()
            else:
                self._meter.mark_synced(changes.version).result()
            self._version = changes.version
            self._synced_at = self._clock()
            self._up = True
            return changes.version

    def _run(self) -> None:
        psycopg = psycopg_module()
        delay = self._backoff_s[0]
        listener: Any = None
        while not self._stop.is_set():
            try:
                if listener is None:
                    listener = connect(self._url, autocommit=True)
                    listener.execute(f"LISTEN {CHANNEL}")
                self.sync()
                if delay != self._backoff_s[0]:
                    log.info("fleet config: in sync again with %s", shown(self._url))
                delay = self._backoff_s[0]
                self._wait_for_change(listener)
            except (psycopg.Error, OSError, MeterUnavailable) as exc:
                self._failed(exc, first=delay == self._backoff_s[0])
                listener = _closed(listener)
                self._stop.wait(delay)
                delay = min(delay * 2, self._backoff_s[1])
            except Exception:  # a bug: keep serving from the copy, say so, keep trying
                log.exception("fleet config: unexpected failure")
                self._up = False
                listener = _closed(listener)
                self._stop.wait(self._backoff_s[1])
        _closed(listener)

    def _wait_for_change(self, listener: Any) -> None:
        """Until a notification arrives, the poll period passes, or stop is asked."""
        deadline = time.monotonic() + self.poll_s
        while not self._stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            for _ in listener.notifies(timeout=min(left, _TICK_S), stop_after=1):
                return

    def _failed(self, exc: BaseException, *, first: bool) -> None:
        self._up = False
        with self._lock:
            self._close()
        if first:
            message = " ".join(str(exc).split()) or type(exc).__name__
            log.warning(
                "fleet config sync with %s failed (will retry): %s", shown(self._url), message
            )

    def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            _closed(conn)


def _closed(conn: Any) -> None:
    if conn is not None:
        try:
            conn.close()
        except Exception:  # a broken connection may fail to close; it is gone either way
            log.debug("fleet config: close failed", exc_info=True)
    return None
