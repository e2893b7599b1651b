"""Fleet budget reservations against a real PostgreSQL, without serving: the reservation
call, the `share:F` allowance while PostgreSQL is stopped, `refuse`, and the settlement of a
reservation when the request's row is exported."""

from __future__ import annotations

import uuid

import pytest

from node.fleet import config
from node.fleet.budgets import FleetBudgets, FleetBudgetUnavailable, OfflinePolicy
from node.fleet.connect import connect
from node.fleet.schema import migrate
from node.meter import Budget, RequestStart
from node.meter.budgets import parse_budget
from node.meter.times import now_us
from tests.fleet_support import PostgresServer, query

UNITS = 10**12  # cost units per currency unit


def start(key_id: str) -> RequestStart:
    return RequestStart(
        id=uuid.uuid4().hex, key_id=key_id, org=None, endpoint="chat.completions",
        model="m", quant_type="Q4", gpu_type="cpu", gpu_name="cpu", user=None, prompt_tokens=1,
    )  # fmt: skip


def budgeted_key(url: str, budget: Budget | None) -> str:
    with connect(url, autocommit=True) as conn:
        migrate(conn)
        key, _secret = config.create_key(
            conn, level="LLM", comment=None, org=None, expires_in_days=None,
            now_us=now_us(), budget=budget,
        )  # fmt: skip
    return key.id


def test_offline_policy_parses_refuse_and_shares_only() -> None:
    assert OfflinePolicy.parse("refuse") == OfflinePolicy(0.0)
    assert OfflinePolicy.parse("share:0.25") == OfflinePolicy(0.25)
    for bad in ("share:0", "share:1.5", "share:x", "share", "allow"):
        with pytest.raises(ValueError, match="refuse"):
            OfflinePolicy.parse(bad)


def test_share_allowance_while_postgres_is_down_then_exact_again(
    fleet_url: str, postgres: PostgresServer
) -> None:
    budget = parse_budget("1", "total")
    key_id = budgeted_key(fleet_url, budget)
    held = [("key", key_id, budget)]
    sharing = FleetBudgets(fleet_url, "node-s", OfflinePolicy(0.5))
    refusing = FleetBudgets(fleet_url, "node-r", OfflinePolicy(0.0))
    try:
        assert sharing.reserve(start(key_id), held, UNITS // 5, now_us()) == (
            True,
            None,
        )  # 0.8 left
        postgres.stop()
        try:
            # Half of the 0.8 left: 0.3 fits, another 0.2 would pass 0.4.
            assert sharing.reserve(start(key_id), held, 3 * UNITS // 10, now_us()) == (True, None)
            _held, refusal = sharing.reserve(start(key_id), held, UNITS // 5, now_us())
            assert refusal is not None and (refusal.scope, refusal.name) == ("key", key_id)
            with pytest.raises(FleetBudgetUnavailable):
                refusing.reserve(start(key_id), held, 1, now_us())
        finally:
            postgres.start()
        # Back online the fleet's own totals decide: it holds only the 0.2 reserved online.
        assert sharing.reserve(start(key_id), held, 7 * UNITS // 10, now_us()) == (True, None)
        _held, refusal = sharing.reserve(start(key_id), held, UNITS // 5, now_us())
        # Held, not settled yet: a reservation may free up, so worth a retry soon.
        assert refusal is not None and refusal.retry_after_s == 1
    finally:
        sharing.close()
        refusing.close()


def test_reservation_is_settled_once_by_the_export_of_its_row(fleet_url: str) -> None:
    budget = parse_budget("1", "day")
    key_id = budgeted_key(fleet_url, budget)
    budgets = FleetBudgets(fleet_url, "node-x", OfflinePolicy(0.0))
    request = start(key_id)
    try:
        for _ in range(2):
            assert budgets.reserve(request, [("key", key_id, budget)], UNITS // 2, now_us()) == (
                True,
                None,
            )
        # A key the fleet has no budget for (one only in a node's meter): nothing held there.
        other = budgeted_key(fleet_url, None)
        assert budgets.reserve(start(other), [("key", other, budget)], 1, now_us()) == (
            False,
            None,
        )
    finally:
        budgets.close()
    spend = "SELECT sum(settled), sum(reserved) FROM budget_spend WHERE name = %s"
    assert query(fleet_url, spend, (key_id,)) == [(0, UNITS // 2)]  # asked twice, held once
    row = (
        "INSERT INTO requests (request_id, node_id, seq, key_id, endpoint, model, quant_type,"
        " gpu_type, gpu_name, status, prompt_tokens, cached_tokens, completion_tokens,"
        " cost_units, started) VALUES (%s, 'node-x', 1, %s, 'chat.completions', 'm', 'Q4',"
        " 'cpu', 'cpu', 'ok', 1, 0, 3, 1234, %s) ON CONFLICT (request_id) DO NOTHING"
    )
    for _ in range(2):  # the exporter may send a row twice; the table and the budget keep one
        with connect(fleet_url) as conn:
            conn.execute(row, (request.id, key_id, now_us()))
            conn.commit()
    assert query(fleet_url, spend, (key_id,)) == [(1234, 0)]
    assert query(fleet_url, "SELECT count(*) FROM budget_reservations") == [(0,)]
