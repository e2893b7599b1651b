"""Price list with history: changes apply to requests admitted after them; no price, cost 0."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from node.meter import Meter, MoneyError, Usage
from tests.meter_support import Clock, start


def test_set_and_read_the_current_price(tmp_path: Path) -> None:
    with Meter(tmp_path / "m.db") as meter:
        assert meter.current_price("smollm2-135m", "A100") is None
        meter.set_price("smollm2-135m", "A100", "1.5", "2.000001", "eur")
        price = meter.current_price("smollm2-135m", "A100")
        assert price is not None
        assert (price.prompt_per_1m, price.completion_per_1m) == (
            Decimal("1.5"),
            Decimal("2.000001"),
        )
        assert price.currency == "EUR"
        assert meter.current_price("smollm2-135m", "a100") == price  # GPU type ignores case
        assert meter.current_price("smollm2-135m", "H100") is None
        assert meter.current_price("other", "A100") is None


def test_a_change_applies_only_to_requests_admitted_after_it(tmp_path: Path) -> None:
    clock = Clock()
    with Meter(tmp_path / "m.db", clock=clock) as meter:
        meter.set_price("smollm2-135m", "cpu", "19.78", "167.66")
        assert meter.open_request(start("before")).result().prompt_per_1m == Decimal("19.78")
        clock.advance(60)
        meter.set_price("smollm2-135m", "cpu", "10", "100")
        after = meter.open_request(start("after")).result()
        assert after is not None and after.prompt_per_1m == Decimal("10")
        clock.advance(60)
        usage = Usage(prompt_tokens=18, completion_tokens=16)
        # "before" finishes after the change and still pays the price it was admitted at.
        assert meter.finish("before", usage, "ok").result().cost == Decimal("0.0030386")
        assert meter.finish("after", usage, "ok").result().cost == Decimal("0.00178")
        history = meter.list_prices(history=True)
        assert [p.price.prompt_per_1m for p in history] == [Decimal("19.78"), Decimal("10")]
        assert history[0].valid_until == history[1].valid_from
        assert history[1].valid_until is None
        assert [p.price.prompt_per_1m for p in meter.list_prices()] == [Decimal("10")]
        rows = {r["id"]: r for r in meter.billing_requests()}
        assert rows["before"]["prompt_per_1m"] == "19.78"
        assert rows["after"]["completion_per_1m"] == "100"


def test_a_request_without_a_price_is_metered_at_cost_zero(tmp_path: Path) -> None:
    with Meter(tmp_path / "m.db") as meter:
        assert meter.open_request(start("free", gpu_type="L4")).result() is None
        bill = meter.finish("free", Usage(prompt_tokens=5, completion_tokens=7), "ok").result()
        assert (bill.cost, bill.currency, bill.priced) == (Decimal(0), None, False)
        report = meter.billing_status()
        assert report["total"]["completion_tokens"] == 7
        assert report["total"]["cost"] == "0"
        assert report["rows"][0]["no_price"] is True
        assert report["rows"][0]["unpriced_requests"] == 1
        assert meter.billing_requests()[0]["no_price"] is True


@pytest.mark.parametrize(
    ("prompt", "completion", "currency"),
    [("-1", "1", "PLN"), ("1", "0.0000001", "PLN"), ("x", "1", "PLN"), ("1", "1", "ZLOTY")],
)
def test_bad_prices_write_nothing(
    tmp_path: Path, prompt: str, completion: str, currency: str
) -> None:
    with Meter(tmp_path / "m.db") as meter:
        with pytest.raises(MoneyError):
            meter.set_price("m", "cpu", prompt, completion, currency)
        assert meter.list_prices(history=True) == []
