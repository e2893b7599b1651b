"""Budgets in the meter: exact amounts, periods, reservation at admission, settlement at finish,
`rejected` rows, org budgets, concurrency, and the migration of an older database."""

from __future__ import annotations

import sqlite3
import threading
from decimal import Decimal
from pathlib import Path

import pytest
from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

from node.meter import Filters, Meter, MoneyError, Usage
from node.meter import schema as meter_schema
from node.meter.budgets import parse_budget, period_bounds
from node.meter.times import iso, parse_moment
from tests.meter_support import T0, Clock, start

# 1 PLN per 1M prompt tokens and 2 PLN per 1M completion tokens: one token costs 1e-6 / 2e-6.
PROMPT, COMPLETION = "1", "2"


def _meter(tmp_path: Path, clock: Clock | None = None) -> Meter:
    meter = Meter(tmp_path / "m.db", clock=clock or Clock())
    meter.set_price("smollm2-135m", "cpu", PROMPT, COMPLETION, "PLN")
    return meter


def test_budget_amounts_are_exact_or_refused() -> None:
    assert parse_budget("0.000001", "day").amount == Decimal("0.000001")
    assert parse_budget("12.5", "total").amount_micro == 12_500_000
    for bad in ("0.0000001", "-1", "nan", "inf", "1e7", "ten"):
        with pytest.raises(MoneyError):
            parse_budget(bad, "day")
    with pytest.raises(ValueError, match="period"):
        parse_budget("1", "year")


@pytest.mark.parametrize(
    ("period", "now", "begins", "ends"),
    [
        ("day", "2026-03-04T10:00:00", "2026-03-04T00:00:00", "2026-03-05T00:00:00"),
        ("week", "2026-03-04T10:00:00", "2026-03-02T00:00:00", "2026-03-09T00:00:00"),  # Monday
        ("month", "2026-12-31T23:59:59", "2026-12-01T00:00:00", "2027-01-01T00:00:00"),
    ],
)
def test_periods_are_utc_calendar_periods(period: str, now: str, begins: str, ends: str) -> None:
    assert period_bounds(period, parse_moment(now)) == (parse_moment(begins), parse_moment(ends))
    assert period_bounds("total", parse_moment(now)) == (0, None)


def test_reservation_refusal_and_settlement(tmp_path: Path) -> None:
    clock = Clock()
    with _meter(tmp_path, clock) as meter:
        # 10 prompt + 20 completion tokens cost at most 10e-6 + 40e-6 = 0.00005 PLN.
        key, _ = meter.create_key("LLM", org=None, budget=parse_budget("0.0001", "day"))
        ceiling = Usage(prompt_tokens=10, completion_tokens=20)
        first = meter.admit(start("a", key_id=key.id, org=None), ceiling).result()
        second = meter.admit(start("b", key_id=key.id, org=None), ceiling).result()
        assert first.refusal is None and second.refusal is None
        assert first.price is not None and first.price.prompt_per_1m == Decimal(1)
        third = meter.admit(start("c", key_id=key.id, org=None), ceiling).result()
        assert third.refusal is not None and third.refusal.scope == "key"
        assert third.refusal.retry_after_s == 1  # reservations will be freed: retry soon
        row = meter.request_row("c")
        assert row is not None and row["status"] == "rejected" and row["finished"] is not None
        assert (row["prompt_tokens"], row["completion_tokens"], row["cost"]) == (0, 0, "0")
        assert meter.key_json(key)["budget"] == {
            "amount": "0.0001",
            "period": "day",
            "period_start": iso(period_bounds("day", T0)[0]),
            "spent": "0.0001",  # two reservations of 0.00005
            "remaining": "0",
        }
        # "a" ends after 10 + 5 tokens (0.00002), "b" is cancelled after its prompt (0.00001):
        # the freed reservations admit "d".
        meter.finish("a", Usage(10, 0, 5), "ok").result()
        assert meter.key_json(key)["budget"]["spent"] == "0.00007"
        meter.finish("b", Usage(10, 0, 0), "cancelled").result()
        assert meter.key_json(key)["budget"]["spent"] == "0.00003"
        assert meter.admit(start("d", key_id=key.id, org=None), ceiling).result().refusal is None
        meter.finish("d", Usage(10, 0, 20), "ok").result()
        refused = meter.admit(start("e", key_id=key.id, org=None), ceiling).result().refusal
        assert refused is not None  # 0.00008 spent, nothing reserved: wait for the next day
        assert refused.retry_after_s == (period_bounds("day", T0)[1] - T0) // 1_000_000
        assert meter.key_json(key)["budget"]["remaining"] == "0.00002"
        # The next day the budget is whole again.
        clock.advance(86_400)
        assert meter.admit(start("f", key_id=key.id, org=None), ceiling).result().refusal is None


def test_org_budget_covers_all_its_keys_and_total_never_resets(tmp_path: Path) -> None:
    with _meter(tmp_path) as meter:
        meter.set_org("acme", parse_budget("0.00003", "total"))
        one, _ = meter.create_key("LLM", org="acme")
        two, _ = meter.create_key("LLM", org="acme")
        ceiling = Usage(prompt_tokens=10, completion_tokens=5)  # at most 0.00002
        assert meter.admit(start("a", key_id=one.id), ceiling).result().refusal is None
        refusal = meter.admit(start("b", key_id=two.id), ceiling).result().refusal
        assert refusal is not None and (refusal.scope, refusal.name) == ("org", "acme")
        meter.finish("a", Usage(10, 0, 0), "ok").result()  # settles at 0.00001
        assert meter.admit(start("c", key_id=two.id), ceiling).result().refusal is None
        meter.finish("c", Usage(10, 0, 5), "ok").result()
        refusal = meter.admit(start("d", key_id=one.id), ceiling).result().refusal
        assert refusal is not None and refusal.retry_after_s is None  # `total`: never resets
        (org,) = [o for o in meter.list_orgs() if o["org"] == "acme"]
        assert org["keys"] == 2
        assert org["budget"]["spent"] == "0.00003" and org["budget"]["remaining"] == "0"


def test_a_request_without_a_price_is_not_stopped(tmp_path: Path) -> None:
    with _meter(tmp_path) as meter:
        key, _ = meter.create_key("LLM", budget=parse_budget("0", "month"))
        ceiling = Usage(prompt_tokens=10, completion_tokens=5)
        opened = meter.admit(start("free", key_id=key.id, gpu_type="L4"), ceiling).result()
        assert opened.price is None and opened.refusal is None
        assert meter.admit(start("paid", key_id=key.id), ceiling).result().refusal is not None


def test_concurrent_admissions_never_overrun(tmp_path: Path) -> None:
    with _meter(tmp_path) as meter:
        key, _ = meter.create_key("LLM", budget=parse_budget("0.000101", "total"))
        ceiling = Usage(prompt_tokens=4, completion_tokens=8)  # at most 0.00002 each
        results: dict[str, bool] = {}
        barrier = threading.Barrier(32)

        def ask(i: int) -> None:
            barrier.wait()
            opened = meter.admit(start(f"r{i}", key_id=key.id), ceiling).result()
            results[f"r{i}"] = opened.refusal is None

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(32)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        admitted = [rid for rid, ok in results.items() if ok]
        assert len(admitted) == 5  # 5 x 0.00002 <= 0.000101 < 6 x 0.00002
        for rid in admitted:
            meter.finish(rid, Usage(4, 0, 8), "ok").result()
        report = meter.billing_status(by="key")
        (row,) = report["rows"]
        assert row["cost"] == "0.0001" and row["requests"] == 32
        assert row["budget"]["remaining"] == "0.000001"
        assert len(meter.billing_requests(Filters(status="rejected"), 100)) == 27


def test_an_older_database_keeps_its_rows_and_learns_rejected(tmp_path: Path) -> None:
    db_path = tmp_path / "old.db"
    old = Migrations(meter_schema.migrations.name)  # the first three migrations, as shipped
    for step in (meter_schema.m001_api_keys, meter_schema.m002_prices, meter_schema.m003_requests):
        old()(step)
    conn = sqlite3.connect(db_path)
    old.apply(Database(conn))
    conn.execute(
        "INSERT INTO requests (id, key_id, endpoint, model, quant_type, gpu_type, gpu_name,"
        " prompt_tokens, started, status) VALUES ('old', 'k', 'e', 'm', 'q', 'cpu', 'cpu', 7,"
        " 1, 'ok')"
    )
    conn.commit()
    conn.close()
    with Meter(db_path) as meter:
        row = meter.request_row("old")
        assert row is not None and (row["prompt_tokens"], row["status"]) == (7, "ok")
        key, _ = meter.create_key("LLM", budget=parse_budget("0", "day"))
        meter.set_price("m", "cpu", "1", "1")
        opened = meter.admit(start("new", key_id=key.id, model="m"), Usage(1, 0, 1)).result()
        assert opened.refusal is not None
    conn = sqlite3.connect(db_path)
    try:
        indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='index'")}
    finally:
        conn.close()
    assert {"requests_started", "requests_key", "requests_running", "requests_org"} <= indexes


def _brute_force(db: Path, column: str, name: str, since_us: int) -> int:
    conn = sqlite3.connect(db)
    try:
        (units,) = conn.execute(
            "SELECT coalesce(sum(max(cost_units, reserved_units)), 0) FROM requests"
            f" WHERE {column} = ? AND started >= ?",
            (name, since_us),
        ).fetchone()
    finally:
        conn.close()
    return units


def test_running_totals_match_the_rows_through_budget_changes_and_recovery(
    tmp_path: Path,
) -> None:
    clock = Clock()
    db = tmp_path / "m.db"
    with _meter(tmp_path, clock) as meter:
        key, _ = meter.create_key("LLM", org="acme")  # no budget yet: nothing tracked
        ceiling = Usage(prompt_tokens=10, completion_tokens=20)
        for i, day in enumerate((0, 0, 1, 3)):  # rows on several days
            clock.now = T0 + day * 86_400_000_000
            meter.admit(start(f"a{i}", key_id=key.id), ceiling).result()
            meter.finish(f"a{i}", Usage(10, 0, i), "ok").result()
        meter.admit(start("running", key_id=key.id), ceiling).result()
        # Set a budget after the traffic: the month so far counts, running row included.
        meter.update_key(key.id, {"budget": parse_budget("1", "month")})
        meter.set_org("acme", parse_budget("1", "week"))
        month = period_bounds("month", clock.now)[0]
        week = period_bounds("week", clock.now)[0]
        expected_key = _brute_force(db, "key_id", key.id, month)
        expected_org = _brute_force(db, "org", "acme", week)
        key_status = meter.key_json(meter.get_key(key.id))["budget"]  # type: ignore[arg-type]
        assert Decimal(key_status["spent"]) * 10**12 == expected_key
        (org,) = meter.list_orgs()
        assert Decimal(org["budget"]["spent"]) * 10**12 == expected_org
        # Settling and recovering keep them equal; removing and setting again rebuilds.
        meter.admit(start("late", key_id=key.id), ceiling).result()
        meter.finish("late", Usage(10, 0, 7), "cancelled").result()
        meter.update_key(key.id, {"budget": None})
        meter.admit(start("untracked", key_id=key.id), ceiling).result()
        meter.finish("untracked", Usage(3, 0, 3), "ok").result()
        meter.update_key(key.id, {"budget": parse_budget("1", "total")})
        assert meter.recover_interrupted() == 1  # "running" dies with its process
        total = meter.key_json(meter.get_key(key.id))["budget"]["spent"]  # type: ignore[arg-type]
        assert Decimal(total) * 10**12 == _brute_force(db, "key_id", key.id, 0)
        (org,) = meter.list_orgs()
        assert Decimal(org["budget"]["spent"]) * 10**12 == _brute_force(db, "org", "acme", week)


def test_deleting_a_key_drops_its_running_totals(tmp_path: Path) -> None:
    with _meter(tmp_path) as meter:
        key, _ = meter.create_key("LLM", budget=parse_budget("1", "day"))
        meter.admit(start("a", key_id=key.id), Usage(1, 0, 1)).result()
        assert meter.delete_key(key.id)
    conn = sqlite3.connect(tmp_path / "m.db")
    try:
        left = conn.execute("SELECT count(*) FROM budget_spend WHERE name = ?", (key.id,))
        assert left.fetchone() == (0,)
    finally:
        conn.close()
