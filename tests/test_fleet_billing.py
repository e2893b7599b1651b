"""Fleet billing reads PostgreSQL and agrees with the local meter to the last digit."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from node.fleet import billing as fleet_billing
from node.fleet.connect import connect
from node.fleet.exporter import Exporter
from node.meter import Filters, Meter, MixedCurrencies, Usage
from node.meter.billing import GROUPS
from tests.meter_support import Clock, start


def fill(meter: Meter, clock: Clock, prefix: str) -> None:
    """Rows over two days, two keys, two orgs, priced, unpriced and every final status."""
    meter.set_price("smollm2-135m", "cpu", "0.3", "1.000007")
    plan = [
        ("key_a", "acme", "smollm2-135m", "ok"),
        ("key_a", "acme", "other-model", "ok"),  # no price
        ("key_b", None, "smollm2-135m", "cancelled"),
        ("key_b", "beta", "smollm2-135m", "error"),
    ]
    for day in range(2):
        for i, (key, org, model, status) in enumerate(plan):
            rid = f"{prefix}{day}{i}"
            meter.open_request(start(rid, key_id=key, org=org, model=model, prompt_tokens=11))
            meter.finish(rid, Usage(11 + i, i, 3 * i + day), status).result()
        meter.open_request(start(f"{prefix}{day}-left", prompt_tokens=5)).result()
        clock.advance(86_400)
    meter.recover_interrupted()


def sums_only(report: dict[str, Any]) -> dict[str, Any]:
    """A local report without what only the local meter knows (budgets, limits of keys)."""
    rows = [
        {k: v for k, v in row.items() if k not in ("budget", "limits")} for row in report["rows"]
    ]
    return {**report, "rows": rows}


def test_fleet_reports_equal_the_local_ones(tmp_path: Path, fleet_url: str) -> None:
    clock = Clock()
    with Meter(tmp_path / "a.db", clock=clock) as meter:
        fill(meter, clock, "r")
        Exporter(meter, fleet_url, "node-a").export_pending()
        with connect(fleet_url) as conn:
            for by in GROUPS:
                for filters in (Filters(), Filters(org="acme"), Filters(since_us=clock.now - 1)):
                    local = sums_only(meter.billing_status(filters, by))
                    assert fleet_billing.status(conn, filters, by) == local, by
            fleet_rows = fleet_billing.requests(conn, Filters(key_id="key_b"), 100)
            local_rows = meter.billing_requests(Filters(key_id="key_b"), 100)
            assert [{k: v for k, v in r.items() if k != "node_id"} for r in fleet_rows] == (
                local_rows
            )
            assert {r["node_id"] for r in fleet_rows} == {"node-a"}
            interrupted = fleet_billing.requests(conn, Filters(status="interrupted"), 100)
            assert len(interrupted) == 2


def test_fleet_report_by_node_and_mixed_currencies(tmp_path: Path, fleet_url: str) -> None:
    clock = Clock()
    with Meter(tmp_path / "a.db", clock=clock) as a, Meter(tmp_path / "b.db", clock=clock) as b:
        fill(a, clock, "a")
        fill(b, clock, "b")
        for meter, name in ((a, "node-a"), (b, "node-b")):
            Exporter(meter, fleet_url, name).export_pending()
        with connect(fleet_url) as conn:
            report = fleet_billing.status(conn, Filters(), "node")
            assert [r["node_id"] for r in report["rows"]] == ["node-a", "node-b"]
            for row, meter in zip(report["rows"], (a, b), strict=True):
                assert {k: v for k, v in row.items() if k != "node_id"} == (
                    meter.billing_status()["total"]
                )
            b.set_price("smollm2-135m", "cpu", "1", "1", currency="EUR")
            b.open_request(start("eur", prompt_tokens=1)).result()
            b.finish("eur", Usage(1, 0, 1), "ok").result()
            Exporter(b, fleet_url, "node-b").export_pending()
            with pytest.raises(MixedCurrencies):
                fleet_billing.status(conn, Filters(), "node")
            eur = fleet_billing.status(conn, Filters(currency="EUR"), "node")
            assert eur["total"]["requests"] == 1 and eur["currency"] == "EUR"
