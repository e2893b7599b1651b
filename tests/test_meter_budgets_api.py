"""Budgets through HTTP: 32 concurrent requests against a budget that covers 5 of them."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import httpx

from node.meter import Filters
from node.meter.budgets import parse_budget
from tests.controls_support import assert_error, control_node

# Prompt "<user> hi <assistant>" is 3 fake tokens; max_tokens 8. At 1 and 2 per 1M tokens the
# most one request can cost is 3e-6 + 16e-6 = 0.000019; the budget covers 5 of them.
BUDGET = "0.0001"
MAX_COST = Decimal("0.000019")


def test_concurrent_requests_never_overrun_a_budget(tmp_path: Path) -> None:
    db = tmp_path / "m.db"
    with control_node(db) as node:
        node.meter.set_price("fake", "fakegpu", "1", "2", "PLN")
        key, secret = node.meter.create_key("LLM", org="acme")
        node.meter.update_key(key.id, {"budget": parse_budget(BUDGET, "total")})
        node.engine.step_s = 0.005  # slow enough that the 32 overlap

        async def run() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=node.url, timeout=60) as client:
                headers = {"Authorization": f"Bearer {secret}"}
                body = {
                    "model": "fake",
                    "messages": [{"role": "user", "content": "hi"}],
                    "max_tokens": 8,
                }
                return await asyncio.gather(
                    *[
                        client.post("/v1/chat/completions", json=body, headers=headers)
                        for _ in range(32)
                    ]
                )

        replies = asyncio.run(run())
        ok = [r for r in replies if r.status_code == 200]
        refused = [r for r in replies if r.status_code != 200]
        assert len(ok) == 5  # 5 x 0.000019 <= 0.0001 < 6 x 0.000019
        for resp in refused:
            assert_error(resp, 429, "insufficient_quota", "insufficient_quota")
            row = node.meter.request_row(resp.headers["x-request-id"])
            assert row is not None and row["status"] == "rejected"
            assert (row["prompt_tokens"], row["completion_tokens"], row["cost"]) == (0, 0, "0")
        billed = sum(Decimal(r.json()["usage"]["cost"]) for r in ok)
        assert billed == 5 * MAX_COST  # each ran its whole max_tokens
        assert billed <= Decimal(BUDGET)
        assert len(node.meter.billing_requests(Filters(status="rejected"), 100)) == 27
        remaining = str(Decimal(BUDGET) - billed).rstrip("0")  # 0.000005
        usage = node.call("GET", "/admin/usage?by=key", node.admin).json()
        (row,) = [r for r in usage["rows"] if r["key_id"] == key.id]
        assert row["cost"] == str(billed).rstrip("0") and row["requests"] == 32
        assert row["budget"]["remaining"] == remaining == "0.000005"
        # Nothing was generated for the refused ones: the engine saw exactly five requests.
        assert len(node.engine.submitted) == 5
    status = subprocess.run(
        [sys.executable, "-m", "node.cli", "billing", "status", "--db", str(db), "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    report = json.loads(status.stdout)
    (cli_row,) = [r for r in report["rows"] if r["key_id"] == key.id]
    assert cli_row["budget"]["remaining"] == "0.000005"
    assert cli_row["budget"]["spent"] == "0.000095"


def test_org_budget_refuses_over_http_and_unpriced_models_pass(tmp_path: Path) -> None:
    with control_node(tmp_path / "m.db") as node:
        node.meter.set_org("acme", parse_budget("0", "day"))
        _key, secret = node.meter.create_key("LLM", org="acme")
        # No price for `fake` on this GPU yet: cost 0, never stopped.
        assert node.chat(secret, max_tokens=2).status_code == 200
        node.meter.set_price("fake", "fakegpu", "1", "2", "PLN")
        resp = node.chat(secret, max_tokens=2)
        error = assert_error(resp, 429, "insufficient_quota", "insufficient_quota")
        assert "organisation 'acme'" in error["message"]
        assert 1 <= int(resp.headers["Retry-After"]) <= 86_400  # the next UTC day
        emb = node.call(
            "POST", "/v1/embeddings", secret, json={"model": "fake-embed", "input": "a b c"}
        )
        assert emb.status_code == 200  # the embedder has no price either
