"""`Meter`: the one object the service and the CLI use. Sync reads, writes as futures.

Writes (open, checkpoint, finish, keys, prices) run on the writer thread and return
`concurrent.futures.Future`s that resolve once durable; the service awaits them with
`asyncio.wrap_future`. Reads (key verification, prices, billing) run on the calling thread's own
connection and see every commit at once, also one made by another process, so a deleted or
expired key fails on the very next verification without any cache to invalidate.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import Future
from decimal import Decimal
from typing import Any, TypeVar

from node.meter import billing, budgets, export, keys, prices, replica, usage
from node.meter.billing import Filters
from node.meter.budgets import Budget
from node.meter.checkpointer import Checkpointer
from node.meter.db import MeterUnavailable, Readers, connect, migrate
from node.meter.dbfile import FileGuard, create_private
from node.meter.export import ExportState
from node.meter.keys import ApiKey, Limits
from node.meter.money import parse_currency, parse_rates
from node.meter.prices import Price, PricePeriod
from node.meter.replica import ConfigChanges, SyncState
from node.meter.times import US_PER_SECOND, now_us
from node.meter.usage import Bill, Opened, RequestStart, Usage
from node.meter.writer import Writer

T = TypeVar("T")

LAST_USED_INTERVAL_US = 5 * US_PER_SECOND  # at most one last_used write per key per interval


class Meter:
    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        busy_timeout_s: float = 5.0,
        synchronous: str = "NORMAL",
        max_size_bytes: int | None = None,
        max_batch: int = 256,
        clock: Callable[[], int] = now_us,
    ) -> None:
        """Open (creating 0600 and migrating if needed) and start the writer thread.

        Only this first open may create the file; from then on the meter uses that very file
        and raises MeterUnavailable once it is deleted or replaced, never writing elsewhere.

        `synchronous`: SQLite's setting for the writer (FULL: a commit survives power loss;
        NORMAL: survives a crash of the process). `max_size_bytes` caps the file (a full disk
        behaves the same way). `max_batch`: most writes committed together (1: no group commit).
        `clock` returns microseconds since the epoch (tests pin it).
        """
        if synchronous.upper() not in ("NORMAL", "FULL", "EXTRA"):
            raise ValueError(f"synchronous {synchronous!r} must be NORMAL, FULL or EXTRA")
        # Absolute: every later connection must reach the same file even after a chdir.
        self.path = os.path.abspath(os.fspath(path))
        self._clock = clock
        try:
            create_private(self.path)  # the only place a meter database is ever created
        except OSError as exc:
            raise MeterUnavailable(
                f"cannot open meter database {self.path}: {exc.strerror or exc}"
            ) from exc
        conn = connect(self.path, busy_timeout_s, synchronous=synchronous.upper())
        try:
            self._guard = FileGuard(self.path)  # the file `conn` holds, from now on
            migrate(conn, busy_timeout_s)
            _ensure_wal(conn)
            conn.execute("PRAGMA wal_autocheckpoint = 0")  # the checkpointer thread does it
            if max_size_bytes is not None:
                page_size = conn.execute("PRAGMA page_size").fetchone()[0]
                conn.execute(f"PRAGMA max_page_count = {max(1, max_size_bytes // page_size)}")
            self._checkpointer = Checkpointer(self.path, busy_timeout_s, self._guard)
            self._guard.on_lost = self._checkpointer.forget_wal
        except OSError as exc:  # the file vanished between creation and the identity check
            conn.close()
            raise MeterUnavailable(f"cannot open meter database {self.path}: {exc}") from exc
        except BaseException:
            conn.close()
            raise
        self._writer = Writer(conn, max_batch=max_batch, guard=self._guard.check)
        self._readers = Readers(self.path, busy_timeout_s, self._guard)
        self._touched: dict[str, int] = {}
        self._touch_lock = threading.Lock()

    def close(self) -> None:
        self._writer.close()
        self._readers.close()
        self._checkpointer.close()

    def __enter__(self) -> Meter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- the request path -------------------------------------------------------------------

    def verify_key(self, secret: str) -> ApiKey | None:
        """The live key for a bearer secret; None for unknown, deleted or expired keys."""
        if not isinstance(secret, str) or not secret:
            return None
        now = self._clock()
        key = self._read(lambda c: keys.verify(c, secret, now_us=now))
        if key is not None:
            self._note_use(key.id, now)
        return key

    def current_price(self, model: str, gpu_type: str) -> Price | None:
        return self._read(lambda c: prices.current(c, model, gpu_type))

    def open_request(self, start: RequestStart) -> Future[Price | None]:
        """Durable row (status running) with the prices in force; the price it is billed at."""
        return self._writer.submit(
            lambda c: usage.open_request(c, start, now_us=self._clock()).price
        )

    def reject(self, start: RequestStart) -> Future[Opened]:
        """The `rejected` row (0 tokens) of a request a rate limit refused."""
        return self._writer.submit(
            lambda c: usage.open_request(c, start, now_us=self._clock(), refused=True)
        )

    def admit(
        self, start: RequestStart, ceiling: Usage, *, budgets_checked: bool = False
    ) -> Future[Opened]:
        """`open_request` that reserves the request's maximum cost (`ceiling` tokens) against
        the key's and org's budgets; a refused request gets a `rejected` row, 0 tokens.
        `budgets_checked`: the fleet database checked them (only local totals are kept)."""
        return self._writer.submit(
            lambda c: usage.open_request(
                c, start, now_us=self._clock(), ceiling=ceiling, budgets_checked=budgets_checked
            )
        )

    def max_cost(
        self, start: RequestStart, ceiling: Usage
    ) -> tuple[list[tuple[str, str, Budget]], int]:
        """The budgets a request counts against and its most possible cost at the price in
        force now (cost units; 0 without a price), for a fleet-wide reservation."""

        def read(conn: sqlite3.Connection) -> tuple[list[tuple[str, str, Budget]], int]:
            found = usage.budgets_of(conn, start.key_id, start.org)
            price = prices.current_micro(conn, start.model, start.gpu_type)
            if not found or price is None:
                return found, 0
            return found, usage.ceiling_units(price, ceiling)

        return self._read(read)

    def checkpoint(self, request_id: str, usage_so_far: Usage) -> Future[None]:
        return self._writer.submit(
            lambda c: usage.checkpoint(c, request_id, usage_so_far, now_us=self._clock())
        )

    def finish(self, request_id: str, final: Usage, status: str) -> Future[Bill]:
        return self._writer.submit(
            lambda c: usage.finish(c, request_id, final, status, now_us=self._clock())
        )

    def recover_interrupted(self) -> int:
        """At server start: rows still running become interrupted at their last checkpoint."""
        return self._wait(self._writer.submit(usage.recover))

    # --- keys -------------------------------------------------------------------------------

    def create_key(
        self,
        level: str,
        *,
        comment: str | None = None,
        org: str | None = None,
        expires_in_days: float | None = None,
        limits: Limits | None = None,
        budget: Budget | None = None,
    ) -> tuple[ApiKey, str]:
        """A new key and its secret: the only time the secret is ever seen."""
        return self._wait(
            self._writer.submit(
                lambda c: keys.create(
                    c,
                    level=level,
                    comment=comment,
                    org=org,
                    expires_in_days=expires_in_days,
                    now_us=self._clock(),
                    limits=limits or Limits(),
                    budget=budget,
                )
            )
        )

    def update_key(self, key_id: str, changes: dict[str, Any]) -> ApiKey | None:
        """Change fields of `keys.UPDATABLE` (None clears); None when there is no such key."""
        return self._wait(
            self._writer.submit(lambda c: keys.update(c, key_id, changes, now_us=self._clock()))
        )

    def get_key(self, key_id: str) -> ApiKey | None:
        return self._read(lambda c: keys.get(c, key_id))

    def list_keys(self) -> list[ApiKey]:
        return self._read(keys.list_all)

    def key_json(self, key: ApiKey) -> dict[str, Any]:
        """`key.to_json()` with the budget's spending in the current period."""
        data = key.to_json()
        if key.budget is not None:
            budget, now = key.budget, self._clock()
            data["budget"] = self._read(lambda c: budgets.status(c, "key", key.id, budget, now))
        return data

    # --- orgs -------------------------------------------------------------------------------

    def set_org(
        self, name: str, budget: Budget | None, *, keep_budget: bool = False
    ) -> dict[str, Any]:
        """Record an org and set its budget (None: none); `keep_budget` only records it."""
        self._wait(
            self._writer.submit(lambda c: budgets.set_org(c, name, budget, keep=keep_budget))
        )
        return self.org_json(name)

    def org_json(self, name: str) -> dict[str, Any]:
        now = self._clock()
        return self._read(lambda c: budgets.org_json(c, name, now))

    def list_orgs(self) -> list[dict[str, Any]]:
        now = self._clock()
        return self._read(lambda c: budgets.list_orgs(c, now))

    def delete_key(self, key_id: str) -> bool:
        return self._wait(self._writer.submit(lambda c: keys.delete(c, key_id)))

    # --- prices -----------------------------------------------------------------------------

    def set_price(
        self,
        model: str,
        gpu_type: str,
        prompt_per_1m: str | Decimal,
        completion_per_1m: str | Decimal,
        currency: str = "PLN",
        cached_per_1m: str | Decimal | None = None,
    ) -> Price:
        """Applies to requests admitted from now on. Raises MoneyError for an inexact price.
        `cached_per_1m`: the price of cached prompt tokens (None: the prompt price)."""
        if not model or not gpu_type:
            raise ValueError("model and GPU type must not be empty")
        rates = parse_rates(prompt_per_1m, completion_per_1m, cached_per_1m)
        code = parse_currency(currency)
        self._wait(
            self._writer.submit(
                lambda c: prices.set_price(
                    c,
                    model=model,
                    gpu_type=gpu_type,
                    rates=rates,
                    currency=code,
                    now_us=self._clock(),
                )
            )
        )
        return prices.to_price(model, gpu_type, prices.PriceMicro(rates, code))

    def list_prices(self, *, history: bool = False) -> list[PricePeriod]:
        return self._read(lambda c: prices.list_periods(c, history=history))

    # --- billing ----------------------------------------------------------------------------

    def billing_status(self, filters: Filters | None = None, by: str = "key") -> dict[str, Any]:
        """`billing.status`; grouped by key or org, each row with a budget also carries
        `budget` (amount, period, spent in the current period, remaining) and key rows their
        `limits`."""
        now = self._clock()

        def report(conn: sqlite3.Connection) -> dict[str, Any]:
            data = billing.status(conn, filters or Filters(), by)
            if by in ("key", "org"):
                for row in data["rows"]:
                    budgets.annotate(conn, by, row, now)
            return data

        return self._read(report)

    def billing_requests(
        self, filters: Filters | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        return self._read(lambda c: billing.requests(c, filters or Filters(), limit))

    def request_row(self, request_id: str) -> dict[str, Any] | None:
        rows = self._read(lambda c: billing.requests(c, Filters(request_id=request_id), 1))
        return rows[0] if rows else None

    # --- fleet export: rows by sequence number, for node.fleet's exporter -------------------

    def claim_node_id(self, wanted: str | None = None) -> str:
        """This meter's node id; `wanted` replaces it only while nothing was exported."""
        return self._wait(self._writer.submit(lambda c: export.claim_node_id(c, wanted)))

    def export_state(self) -> ExportState:
        return self._read(export.state)

    def exportable_rows(self, after_seq: int, limit: int) -> list[tuple[Any, ...]]:
        """Final rows past `after_seq`, oldest first, columns as `export.COLUMNS`."""
        return self._read(lambda c: export.rows_after(c, after_seq, limit))

    def first_waiting_finished(self, after_seq: int) -> int | None:
        return self._read(lambda c: export.finished_of(c, after_seq))

    def acknowledge_export(self, seq: int) -> Future[None]:
        """Move the watermark to `seq`, once PostgreSQL committed every row up to it."""
        return self._writer.submit(lambda c: export.acknowledge(c, seq, now_us=self._clock()))

    # --- fleet mode: the local copy of the fleet's keys, orgs and prices --------------------

    def config_rows(self) -> ConfigChanges:
        """Local keys, orgs and prices in the fleet's shapes (a node joining brings them)."""
        return self._read(replica.local_rows)

    def apply_config(self, changes: ConfigChanges) -> Future[None]:
        return self._writer.submit(lambda c: replica.apply(c, changes, now_us=self._clock()))

    def mark_synced(self, version: int) -> Future[None]:
        return self._writer.submit(lambda c: replica.mark_synced(c, version, now_us=self._clock()))

    def sync_state(self) -> SyncState:
        return self._read(replica.state)

    def now_us(self) -> int:
        """The meter's clock (tests pin it): what the fleet stores as times too."""
        return self._clock()

    # --- internals --------------------------------------------------------------------------

    def _read(self, query: Callable[[sqlite3.Connection], T]) -> T:
        """Run `query` on this thread's connection; a failing database is MeterUnavailable
        (HTTP 503), a bug in the query stays what it is."""
        conn = self._readers.get()  # checks that the file is still ours
        try:
            return query(conn)
        except (sqlite3.IntegrityError, sqlite3.ProgrammingError, sqlite3.InterfaceError):
            raise
        except sqlite3.DatabaseError as exc:  # locked, corrupt, I/O error, schema gone
            raise MeterUnavailable(f"meter database cannot be read: {exc}") from exc

    def _note_use(self, key_id: str, now: int) -> None:
        # Coalesced: at most one queued write per key per interval, never one per request.
        with self._touch_lock:
            last = self._touched.get(key_id)
            if last is not None and now - last < LAST_USED_INTERVAL_US:
                return
            self._touched[key_id] = now
        self._writer.submit(lambda c: keys.touch(c, {key_id: now}))

    @staticmethod
    def _wait(future: Future[T]) -> T:
        return future.result()


def _ensure_wal(conn: sqlite3.Connection) -> None:
    """WAL for a database another tool created; a read-only file keeps its mode (reads work)."""
    with contextlib.suppress(sqlite3.Error):
        conn.execute("PRAGMA journal_mode = WAL").fetchall()


__all__ = ["Bill", "Meter", "MeterUnavailable", "RequestStart", "Usage"]
