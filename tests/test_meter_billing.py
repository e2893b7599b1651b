"""Billing reports: JSON shapes (SPEC §6), groups, filters, totals, currencies."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from node.meter import Filters, Meter, MixedCurrencies, Usage
from node.meter.times import parse_moment
from tests.meter_support import Clock, start

SPEC_ROW_KEYS = {"requests", "prompt_tokens", "completion_tokens", "cost"}
SPEC_REQUEST_KEYS = {
    "id", "key_id", "org", "endpoint", "model", "gpu_type", "status", "prompt_tokens",
    "cached_tokens", "completion_tokens", "cost", "currency", "started", "finished",
}  # fmt: skip


@pytest.fixture
def meter(tmp_path: Path) -> Iterator[Meter]:
    """Five requests over two days, two keys/orgs, two models, two GPU types, one unpriced."""
    clock = Clock(parse_moment("2026-03-01T10:00:00"))
    with Meter(tmp_path / "m.db", clock=clock) as m:
        m.set_price("smollm2-135m", "cpu", "19.78", "167.66")
        m.set_price("smollm2-135m", "A100", "1", "2")
        m.set_price("other", "cpu", "0.5", "0.25")
        rows = [
            ("a1", "key_a", "acme", "smollm2-135m", "cpu", (18, 0, 16), "ok"),
            ("a2", "key_a", "acme", "smollm2-135m", "A100", (1000, 10, 500), "ok"),
            ("b1", "key_b", "beta", "other", "cpu", (4, 0, 8), "cancelled"),
            ("b2", "key_b", "beta", "smollm2-135m", "L4", (7, 0, 3), "ok"),  # no price
            ("a3", "key_a", "acme", "smollm2-135m", "cpu", (18, 0, 16), "error"),
        ]
        for i, (rid, key, org, model, gpu, counts, status) in enumerate(rows):
            if i == 3:
                clock.now = parse_moment("2026-03-02T09:30:00")
            m.open_request(start(rid, key_id=key, org=org, model=model, gpu_type=gpu)).result()
            clock.advance(2)
            m.finish(rid, Usage(*counts), status).result()
            clock.advance(1)
        yield m


def test_status_json_shape_and_totals(meter: Meter) -> None:
    report = meter.billing_status(by="key")
    assert report["currency"] == "PLN"
    assert [r["key_id"] for r in report["rows"]] == ["key_a", "key_b"]
    for row in [*report["rows"], report["total"]]:
        assert set(row) >= SPEC_ROW_KEYS
        assert all(isinstance(row[k], int) for k in ("requests", "prompt_tokens"))
        assert isinstance(row["cost"], str)
    key_a = report["rows"][0]
    # 2 x 0.0030386 + (1000 x 1 + 500 x 2) / 1e6 = 0.0080772
    assert (key_a["requests"], key_a["prompt_tokens"], key_a["completion_tokens"]) == (3, 1036, 532)
    assert key_a["cost"] == "0.0080772"
    assert key_a["no_price"] is False
    key_b = report["rows"][1]
    assert key_b["cost"] == "0.000004"  # 4 x 0.5 + 8 x 0.25 = 4 per 1M
    assert (key_b["no_price"], key_b["unpriced_requests"]) == (True, 1)
    total = report["total"]
    assert (total["requests"], total["prompt_tokens"], total["completion_tokens"]) == (5, 1047, 543)
    assert total["cached_tokens"] == 10
    assert total["cost"] == "0.0080812"


@pytest.mark.parametrize(
    ("by", "field", "groups"),
    [
        ("org", "org", {"acme": 3, "beta": 2}),
        ("model", "model", {"smollm2-135m": 4, "other": 1}),
        ("gpu", "gpu_type", {"cpu": 3, "A100": 1, "L4": 1}),
        ("day", "day", {"2026-03-01": 3, "2026-03-02": 2}),
    ],
)
def test_group_by(meter: Meter, by: str, field: str, groups: dict[str, int]) -> None:
    report = meter.billing_status(by=by)
    assert {r[field]: r["requests"] for r in report["rows"]} == groups


def test_filters(meter: Meter) -> None:
    day2 = parse_moment("2026-03-02")
    assert meter.billing_status(Filters(since_us=day2))["total"]["requests"] == 2
    assert meter.billing_status(Filters(until_us=day2))["total"]["requests"] == 3
    assert meter.billing_status(Filters(org="beta"))["total"]["requests"] == 2
    assert meter.billing_status(Filters(key_id="key_a"))["total"]["cost"] == "0.0080772"
    assert meter.billing_status(Filters(model="other"))["total"]["prompt_tokens"] == 4
    empty = meter.billing_status(Filters(org="nobody"))
    assert empty == {
        "currency": None,
        "by": "key",
        "rows": [],
        "total": {
            "requests": 0,
            "prompt_tokens": 0,
            "cached_tokens": 0,
            "completion_tokens": 0,
            "cost": "0",
            "cached_cost": "0",
            "unpriced_requests": 0,
            "no_price": False,
        },
    }


def test_unknown_group_is_refused(meter: Meter) -> None:
    with pytest.raises(ValueError, match="--by"):
        meter.billing_status(by="week")


def test_mixed_currencies_are_refused_unless_one_is_picked(meter: Meter) -> None:
    meter.set_price("other", "cpu", "1", "1", "EUR")
    meter.open_request(start("e1", model="other")).result()
    meter.finish("e1", Usage(1_000_000, 0, 0), "ok").result()
    with pytest.raises(MixedCurrencies, match="EUR, PLN"):
        meter.billing_status()
    eur = meter.billing_status(Filters(currency="EUR"))
    assert (eur["currency"], eur["total"]["requests"], eur["total"]["cost"]) == ("EUR", 1, "1")


def test_requests_listing_shape_order_and_filters(meter: Meter) -> None:
    rows = meter.billing_requests()
    assert [r["id"] for r in rows] == ["a3", "b2", "b1", "a2", "a1"]  # newest first
    for row in rows:
        assert set(row) >= SPEC_REQUEST_KEYS
        assert row["started"].endswith("Z") and row["finished"].endswith("Z")
    a1 = rows[-1]
    assert a1 == a1 | {
        "key_id": "key_a",
        "org": "acme",
        "endpoint": "/v1/chat/completions",
        "model": "smollm2-135m",
        "gpu_type": "cpu",
        "status": "ok",
        "prompt_tokens": 18,
        "cached_tokens": 0,
        "completion_tokens": 16,
        "cost": "0.0030386",
        "currency": "PLN",
        "started": "2026-03-01T10:00:00Z",
        "finished": "2026-03-01T10:00:02Z",
    }
    unpriced = rows[1]
    assert (unpriced["cost"], unpriced["currency"], unpriced["no_price"]) == ("0", None, True)
    assert [r["id"] for r in meter.billing_requests(limit=2)] == ["a3", "b2"]
    assert [r["id"] for r in meter.billing_requests(Filters(status="ok"))] == ["b2", "a2", "a1"]
    assert {r["id"] for r in meter.billing_requests(Filters(key_id="key_b"))} == {"b1", "b2"}
