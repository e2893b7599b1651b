"""The admin API's fleet side: writes to PostgreSQL, then into this node's copy at once, and the
usage reports read from every node's exported rows.

The same methods as the `Meter`'s for keys, orgs and prices, so `node.api.admin` does not know
which it talks to. A write goes to the fleet database (every node learns of it by NOTIFY
within about a second), then this node syncs before answering, so the answer and the next
request here already see it. While the fleet database is away, writes fail with 503.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from decimal import Decimal
from typing import Any

from node.errors import NodeError
from node.fleet import billing as fleet_billing
from node.fleet import config
from node.fleet.connect import connect, psycopg_module, shown
from node.fleet.replica import Replica
from node.meter import ApiKey, Budget, Filters, Limits, Meter, Price
from node.meter.money import parse_currency, parse_rates
from node.meter.prices import PriceMicro, to_price

log = logging.getLogger(__name__)


_READ_FAILED = "The fleet database cannot be read now; retry when it is reachable."


class FleetWriteFailed(NodeError):
    """The fleet database did not take a key, org or price change, or could not be read for a
    report: HTTP 503."""

    status = 503
    type = "server_error"
    code = "fleet_db_unavailable"


class FleetConfig:
    def __init__(self, meter: Meter, url: str, replica: Replica) -> None:
        self._meter = meter
        self._url = url
        self._replica = replica
        self._lock = threading.Lock()
        self._conn: Any = None

    def _call(self, action: Any, failure: str) -> Any:
        psycopg = psycopg_module()
        with self._lock:
            try:
                if self._conn is None or self._conn.closed:
                    self._conn = connect(self._url, autocommit=True)
                return action(self._conn)
            except (psycopg.Error, OSError) as exc:
                if self._conn is not None:
                    self._conn.close()
                    self._conn = None
                # No host or error text for the client: the reason goes to the node's log.
                log.warning("fleet config: %s failed: %s", shown(self._url), exc)
                raise FleetWriteFailed(failure) from exc

    def _write(self, change: Any) -> Any:
        result = self._call(
            change,
            "The fleet database did not take the change; nothing was changed."
            " Retry when it is reachable.",
        )
        # Stored in the fleet; should this sync fail, the thread's next one brings it here.
        with contextlib.suppress(Exception):
            self._replica.sync()
        return result

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
        now = self._meter.now_us()
        return self._write(
            lambda c: config.create_key(
                c,
                level=level,
                comment=comment,
                org=org,
                expires_in_days=expires_in_days,
                now_us=now,
                limits=limits,
                budget=budget,
            )
        )

    def update_key(self, key_id: str, changes: dict[str, Any]) -> ApiKey | None:
        now = self._meter.now_us()
        return self._write(lambda c: config.update_key(c, key_id, changes, now_us=now))

    def delete_key(self, key_id: str) -> bool:
        return self._write(lambda c: config.delete_key(c, key_id))

    def set_org(
        self, name: str, budget: Budget | None, *, keep_budget: bool = False
    ) -> dict[str, Any]:
        self._write(lambda c: config.set_org(c, name, budget, keep=keep_budget))
        return self._meter.org_json(name)

    def set_price(
        self,
        model: str,
        gpu_type: str,
        prompt_per_1m: str | Decimal,
        completion_per_1m: str | Decimal,
        currency: str = "PLN",
        cached_per_1m: str | Decimal | None = None,
    ) -> Price:
        if not model or not gpu_type:
            raise ValueError("model and GPU type must not be empty")
        rates = parse_rates(prompt_per_1m, completion_per_1m, cached_per_1m)
        price = PriceMicro(rates, parse_currency(currency))
        now = self._meter.now_us()
        self._write(lambda c: config.set_price(c, model, gpu_type, price, now_us=now))
        return to_price(model, gpu_type, price)

    # --- reports over the whole fleet (rows as exported; a node's newest may still be on its way)

    def billing_status(self, filters: Filters, by: str = "key") -> dict[str, Any]:
        return self._call(lambda c: fleet_billing.status(c, filters, by), _READ_FAILED)

    def billing_requests(self, filters: Filters, limit: int = 100) -> list[dict[str, Any]]:
        return self._call(lambda c: fleet_billing.requests(c, filters, limit), _READ_FAILED)

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
