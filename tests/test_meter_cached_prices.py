"""Cached prompt tokens priced on their own: the one cost formula, through the meter, billing,
budgets, the CLI and the admin API. Expected amounts are worked out here in Decimal from the
price strings, independently of `money.py`."""

from __future__ import annotations

import json
import subprocess
from decimal import Decimal
from pathlib import Path

import openai
from hypothesis import given
from hypothesis import strategies as st

from node.meter import Meter, Usage
from node.meter.budgets import parse_budget
from node.meter.money import Rates, cost_parts, cost_units, max_cost_units
from tests.controls_support import assert_error, control_node
from tests.meter_support import start
from tests.node_process import CHAT_ID, LLM_NODE, cli, start_server, stop_server

PROMPT, CACHED, COMPLETION = "2.5", "0.25", "10"


def _expected(prompt: int, cached: int, completion: int) -> Decimal:
    return (
        (prompt - cached) * Decimal(PROMPT)
        + cached * Decimal(CACHED)
        + completion * Decimal(COMPLETION)
    ) / 1_000_000


def test_cached_tokens_are_billed_at_the_cached_price(tmp_path: Path) -> None:
    with Meter(tmp_path / "m.db") as meter:
        meter.set_price("smollm2-135m", "cpu", PROMPT, COMPLETION, "USD", CACHED)
        meter.open_request(start("r1", prompt_tokens=120)).result()
        bill = meter.finish("r1", Usage(120, 100, 7), "ok").result()
        assert bill.cost == _expected(120, 100, 7) == Decimal("0.000145")
        status = meter.billing_status()
        assert status["total"]["cost"] == "0.000145"
        assert Decimal(status["total"]["cached_cost"]) == 100 * Decimal(CACHED) / 1_000_000
        row = meter.billing_requests()[0]
        assert (row["cached_tokens"], row["cached_per_1m"]) == (100, CACHED)


def test_without_a_cached_price_the_seed_example_is_unchanged(tmp_path: Path) -> None:
    with Meter(tmp_path / "m.db") as meter:
        meter.set_price("smollm2-135m", "cpu", "19.78", "167.66", "PLN")
        meter.open_request(start("r1", prompt_tokens=18)).result()
        bill = meter.finish("r1", Usage(18, 12, 16), "ok").result()
        assert bill.cost == Decimal("0.0030386")
        assert meter.billing_requests()[0]["cached_per_1m"] is None


def test_a_price_change_does_not_reprice_a_running_request(tmp_path: Path) -> None:
    with Meter(tmp_path / "m.db") as meter:
        meter.set_price("smollm2-135m", "cpu", PROMPT, COMPLETION, "USD", CACHED)
        meter.open_request(start("r1", prompt_tokens=50)).result()
        meter.set_price("smollm2-135m", "cpu", PROMPT, COMPLETION, "USD")  # cached price gone
        bill = meter.finish("r1", Usage(50, 40, 3), "ok").result()
        assert bill.cost == _expected(50, 40, 3)


def test_a_checkpointed_row_bills_its_cache_if_interrupted(tmp_path: Path) -> None:
    db = tmp_path / "m.db"
    with Meter(db) as meter:
        meter.set_price("smollm2-135m", "cpu", PROMPT, COMPLETION, "USD", CACHED)
        meter.open_request(start("r1", prompt_tokens=80)).result()
        meter.checkpoint("r1", Usage(80, 64, 5)).result()
    with Meter(db) as meter:  # the node's next start recovers the running row
        assert meter.recover_interrupted() == 1
        row = meter.billing_requests()[0]
        assert row["status"] == "interrupted"
        assert Decimal(row["cost"]) == _expected(80, 64, 5)


@given(
    rows=st.lists(
        st.tuples(st.integers(0, 10**6), st.integers(0, 10**6), st.integers(0, 10**6)),
        min_size=1,
        max_size=20,
    ).map(lambda rows: [(p + c, c, k) for p, c, k in rows]),
    rates=st.tuples(
        st.integers(0, 10**11), st.integers(0, 10**11), st.none() | st.integers(0, 10**11)
    ),
)
def test_the_formula_on_sums_equals_the_sum_of_row_costs(
    rows: list[tuple[int, int, int]], rates: tuple[int, int, int | None]
) -> None:
    price = Rates(*rates)
    summed = [sum(column) for column in zip(*rows, strict=True)]
    assert cost_units(*summed, price) == sum(cost_units(*row, price) for row in rows)
    for prompt, cached, completion in rows:
        parts = cost_parts(prompt, cached, completion, price)
        assert 0 <= parts.total <= max_cost_units(prompt, completion, price)


def test_the_reservation_covers_an_uncached_prompt_and_a_dearer_cached_price() -> None:
    cheap = Rates(prompt=2_000_000, completion=5_000_000, cached=500_000)
    assert max_cost_units(10, 4, cheap) == 10 * 2_000_000 + 4 * 5_000_000
    dear = Rates(prompt=2_000_000, completion=5_000_000, cached=3_000_000)  # odd, but allowed
    assert max_cost_units(10, 4, dear) == 10 * 3_000_000 + 4 * 5_000_000


def test_a_budget_reserves_the_uncached_maximum(tmp_path: Path) -> None:
    with Meter(tmp_path / "m.db") as meter:
        meter.set_price("smollm2-135m", "cpu", PROMPT, COMPLETION, "USD", CACHED)
        one_request = _expected(100, 0, 10)  # the most 100 prompt + 10 completion tokens cost
        key, _secret = meter.create_key("LLM", budget=parse_budget(one_request, "total"))
        ceiling = Usage(100, 0, 10)
        fits = meter.admit(start("fits", key_id=key.id, prompt_tokens=100), ceiling).result()
        assert fits.refusal is None
        over = meter.admit(start("over", key_id=key.id, prompt_tokens=100), ceiling).result()
        assert over.refusal is not None  # the first reservation holds the whole budget
        meter.finish("fits", Usage(100, 96, 10), "ok").result()
        again = meter.admit(start("again", key_id=key.id, prompt_tokens=100), ceiling).result()
        assert again.refusal is not None  # the cached discount left less than a whole request
        spent = meter.billing_status(by="key")["rows"][0]
        assert Decimal(spent["cost"]) == _expected(100, 96, 10)


def test_cli_sets_lists_and_refuses_a_bad_cached_price(tmp_path: Path) -> None:
    db = tmp_path / "m.db"
    args = ["prices", "set", "m", "cpu", "--prompt", "1", "--completion", "2", "--db", str(db)]
    bad = subprocess.run(
        [LLM_NODE, *args, "--cached", "x"], capture_output=True, text=True, timeout=60
    )
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "--cached" in bad.stderr
    assert json.loads(cli(db, "prices", "list", "--json")) == []
    done = json.loads(cli(db, *args[:-2], "--cached", "0.1", "--json"))
    assert done["cached_per_1m"] == "0.1"
    listed = cli(db, "prices", "list")
    assert "cached / 1M" in listed and "0.1" in listed


def test_admin_api_sets_a_cached_price_and_a_chat_is_billed_by_it(tmp_path: Path) -> None:
    with control_node(tmp_path / "m.db") as node:
        bad = node.call(
            "PUT",
            "/admin/prices/fake/fakegpu",
            node.admin,
            json={"prompt": PROMPT, "completion": COMPLETION, "cached": "-1"},
        )
        assert_error(bad, 400, "invalid_request_error", bad.json()["error"]["code"])
        assert bad.json()["error"]["param"] == "cached"
        resp = node.call(
            "PUT",
            "/admin/prices/fake/fakegpu",
            node.admin,
            json={"prompt": PROMPT, "completion": COMPLETION, "cached": CACHED, "currency": "USD"},
        )
        assert resp.status_code == 200 and resp.json()["cached_per_1m"] == CACHED
        node.engine.cached_tokens = 2
        chat = node.chat(node.llm, max_tokens=5)
        usage = chat.json()["usage"]
        assert usage["prompt_tokens_details"]["cached_tokens"] == 2
        expected = _expected(usage["prompt_tokens"], 2, usage["completion_tokens"])
        assert Decimal(usage["cost"]) == expected
        report = node.call("GET", "/admin/usage", node.admin).json()
        assert Decimal(report["total"]["cost"]) == expected
        assert Decimal(report["total"]["cached_cost"]) == 2 * Decimal(CACHED) / 1_000_000


def test_a_repeated_prompt_on_the_real_model_bills_its_cached_tokens(tmp_path: Path) -> None:
    db = tmp_path / "meter.db"
    key = json.loads(cli(db, "api-keys", "create", "--level", "LLM", "--json"))
    cli(db, "prices", "set", CHAT_ID, "testgpu", "--prompt", PROMPT, "--completion", COMPLETION,
        "--cached", CACHED, "--currency", "USD")  # fmt: skip
    url, process = start_server(tmp_path, db, parallel=1)
    try:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key=key["secret"], max_retries=0)
        messages = [{"role": "user", "content": "Say something about the sea and the sky."}]
        bills = []
        for _ in range(2):  # one slot: the second request finds the first one's prompt in it
            raw = client.chat.completions.with_raw_response.create(
                model=CHAT_ID, messages=messages, max_tokens=4, temperature=0
            )
            usage = raw.parse().usage
            bills.append((usage, raw.headers["x-request-id"]))
    finally:
        stop_server(process)
    (first, _), (second, second_id) = bills
    assert first.prompt_tokens_details.cached_tokens == 0
    cached = second.prompt_tokens_details.cached_tokens
    assert 0 < cached < second.prompt_tokens
    expected = _expected(second.prompt_tokens, cached, second.completion_tokens)
    assert Decimal(second.model_extra["cost"]) == expected
    with Meter(db) as meter:
        row = meter.request_row(second_id)
    assert row is not None and Decimal(row["cost"]) == expected
    assert row["cached_tokens"] == cached
