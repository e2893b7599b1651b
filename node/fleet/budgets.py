"""Budgets across the fleet: each request's maximum cost is checked and held in PostgreSQL.

One call (`budget_reserve`, one round trip) locks the key's and the org's row, compares
settled + reserved + this request's maximum cost with each budget, and holds the maximum.
The reservation is released, and the real cost settled, when the exporter delivers the
request's final row (a trigger in the fleet database), so N nodes admitting at once never
overrun a budget together. Only requests whose key or org has a budget make the call.

When the fleet database cannot be reached, `offline` decides:
- `refuse`: budgeted requests are refused (503); no overrun at all.
- `share:F` (0 < F <= 1): this node may hold, in total while cut off, up to F times what
  was left of each budget at its last successful reservation. With N nodes cut off at once
  a budget can be overrun by at most N x F x its amount (per period); F <= 1/N never
  overruns beyond what other nodes spent since this one last asked.
Rate limits (rpm, tpm, parallel) stay per node.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

from node.errors import NodeError
from node.fleet.connect import connect, psycopg_module, shown
from node.meter import Budget, Refusal, RequestStart
from node.meter.budgets import budget_of, period_bounds

log = logging.getLogger(__name__)

_POOL = 4  # connections kept for reservations (each call is one short statement)


class FleetBudgetUnavailable(NodeError):
    """The fleet database is unreachable and the policy refuses budgeted requests: 503."""

    status = 503
    type = "server_error"
    code = "fleet_db_unavailable"

    def headers(self) -> dict[str, str]:
        return {"Retry-After": "5"}


@dataclass(frozen=True)
class OfflinePolicy:
    share: float  # 0: refuse

    @classmethod
    def parse(cls, text: str) -> OfflinePolicy:
        """`refuse` or `share:F` with 0 < F <= 1; ValueError otherwise."""
        if text == "refuse":
            return cls(0.0)
        name, _, value = text.partition(":")
        try:
            share = float(value)
        except ValueError:
            share = -1.0
        if name != "share" or not 0 < share <= 1:
            raise ValueError(f"{text!r} is not 'refuse' or 'share:F' with 0 < F <= 1")
        return cls(share)


class FleetBudgets:
    def __init__(self, url: str, node_id: str, offline: OfflinePolicy) -> None:
        self._url = url
        self._node_id = node_id
        self._offline = offline
        self._idle: list[Any] = []
        self._lock = threading.Lock()
        # What was left of each budget after this node's last reservation, and what it has
        # held since it lost the fleet database (the `share` policy's allowance).
        self._left: dict[tuple[str, str], int] = {}
        self._offline_base: dict[tuple[str, str], int] = {}
        self._offline_held: dict[tuple[str, str], int] = {}

    def reserve(
        self, start: RequestStart, budgets: list[tuple[str, str, Budget]], units: int, now_us: int
    ) -> tuple[bool, Refusal | None]:
        """Hold `units` against the request's budgets fleet-wide: (held, the refusal if any).
        Not held: the fleet knows no budget of this key or org (one only in the local meter,
        which then checks it). Raises FleetBudgetUnavailable when unreachable and the policy
        refuses."""
        psycopg = psycopg_module()
        try:
            row = self._call(
                "SELECT * FROM budget_reserve(%s, %s, %s, %s, %s, %s)",
                (start.id, self._node_id, start.key_id, start.org, now_us, units),
            )
        except (psycopg.Error, OSError) as exc:
            return True, self._reserve_offline(budgets, units, now_us, exc)
        scope, name, micro, period, settled, key_left, org_left, checked = row
        with self._lock:
            self._offline_base.clear()
            self._offline_held.clear()
            if scope is None:
                if key_left is not None:
                    self._left[("key", start.key_id)] = key_left
                if org_left is not None and start.org is not None:
                    self._left[("org", start.org)] = org_left
                return checked > 0, None
        budget = budget_of(micro, period)
        assert budget is not None
        return True, _refusal(scope, name, budget, settled + units <= budget.units, now_us)

    def release(self, request_id: str) -> None:
        """Give back a reservation whose request never opened (best effort: a leftover only
        ever refuses more, never overruns)."""
        psycopg = psycopg_module()
        try:
            self._call("SELECT budget_release(%s)", (request_id,))
        except (psycopg.Error, OSError):
            log.warning("fleet budgets: could not release %s; it stays held", request_id)

    def _reserve_offline(
        self, budgets: list[tuple[str, str, Budget]], units: int, now_us: int, exc: Exception
    ) -> Refusal | None:
        if self._offline.share == 0:
            raise FleetBudgetUnavailable(
                "The fleet database is unreachable, so this node cannot check the budget;"
                " retry shortly or on another node."
            ) from exc
        with self._lock:
            for scope, name, budget in budgets:
                key = (scope, name)
                if key not in self._offline_base:
                    if key not in self._left:  # never asked: nothing known to share
                        raise FleetBudgetUnavailable(
                            "The fleet database is unreachable and this node knows nothing of"
                            " the budget yet; retry shortly or on another node."
                        ) from exc
                    self._offline_base[key] = self._left[key]
                allowance = int(self._offline_base[key] * self._offline.share)
                if self._offline_held.get(key, 0) + units > allowance:
                    return _refusal(scope, name, budget, False, now_us)
            for scope, name, _budget in budgets:
                key = (scope, name)
                self._offline_held[key] = self._offline_held.get(key, 0) + units
        log.warning("fleet budgets: fleet database unreachable; admitted on this node's share")
        return None

    def _call(self, sql: str, params: tuple[Any, ...]) -> tuple[Any, ...]:
        with self._lock:
            conn = self._idle.pop() if self._idle else None
        try:
            if conn is None or conn.closed:
                conn = connect(self._url, autocommit=True)
            row = conn.execute(sql, params).fetchone()
        except BaseException:
            if conn is not None:
                conn.close()
            raise
        with self._lock:
            if len(self._idle) < _POOL:
                self._idle.append(conn)
                conn = None
        if conn is not None:
            conn.close()
        return row

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def __repr__(self) -> str:
        return f"FleetBudgets({shown(self._url)})"


def _refusal(scope: str, name: str, budget: Budget, soon: bool, now_us: int) -> Refusal:
    """The 429's reasons, as the local check words them (a freed reservation: retry soon)."""
    _since, end = period_bounds(budget.period, now_us)
    if soon:
        retry: int | None = 1
    elif end is None:
        retry = None
    else:
        retry = max(1, -(-(end - now_us) // 1_000_000))
    return Refusal(scope, name, budget, retry)
