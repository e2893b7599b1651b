"""Limits and budgets end to end: `llm-node serve` on the real SmolLM2 GGUF, keys made through
the real CLI and the admin API, the official `openai` SDK as the client."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal
from pathlib import Path

import httpx
import openai
import pytest

from tests.test_api_e2e import CHAT_ID, cli, start_server

PROMPT_PRICE, COMPLETION_PRICE = Decimal("19.78"), Decimal("167.66")
MAX_TOKENS = 8


@dataclass
class Node:
    url: str
    db: Path
    admin: str

    def admin_call(self, method: str, path: str, **kw: object) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.admin}"}
        return httpx.request(method, f"{self.url}{path}", headers=headers, timeout=30, **kw)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    tmp = tmp_path_factory.mktemp("limits-e2e")
    db = tmp / "meter.db"
    admin = json.loads(cli(db, "api-keys", "create", "--level", "ADMIN", "--json"))["secret"]
    cli(db, "prices", "set", CHAT_ID, "testgpu", "--prompt", "19.78", "--completion", "167.66")
    url, process = start_server(tmp, db)
    yield Node(url, db, admin)
    process.send_signal(signal.SIGINT)
    try:
        process.wait(30)
    except Exception:
        process.kill()


def _ask(client: openai.OpenAI):  # type: ignore[no-untyped-def]
    return client.chat.completions.with_raw_response.create(
        model=CHAT_ID,
        messages=[{"role": "user", "content": "Name three colours."}],
        max_tokens=MAX_TOKENS,
        temperature=0,
    )


def test_a_budget_and_rpm_on_the_real_model(node: Node) -> None:
    created = node.admin_call("POST", "/admin/keys", json={"level": "LLM", "rpm": 3})
    assert created.status_code == 201, created.text
    key_id, secret = created.json()["id"], created.json()["secret"]
    client = openai.OpenAI(base_url=f"{node.url}/v1", api_key=secret, max_retries=0, timeout=120)

    first = _ask(client)
    assert first.headers["x-ratelimit-remaining-requests"] == "2"
    usage = first.parse().usage
    spent = Decimal(usage.model_extra["cost"])
    assert (
        spent
        == (usage.prompt_tokens * PROMPT_PRICE + usage.completion_tokens * COMPLETION_PRICE) / 10**6
    )
    # A budget that leaves room for one more request at its maximum cost, not two (budgets
    # have 6 decimals, costs more: round up).
    most = (usage.prompt_tokens * PROMPT_PRICE + MAX_TOKENS * COMPLETION_PRICE) / 10**6
    budget = (spent + most).quantize(Decimal("0.000001"), rounding=ROUND_CEILING)
    patched = node.admin_call(
        "PATCH", f"/admin/keys/{key_id}", json={"budget": {"amount": str(budget), "period": "day"}}
    )
    assert patched.status_code == 200, patched.text
    assert Decimal(patched.json()["budget"]["remaining"]) == budget - spent

    second = _ask(client)
    assert second.headers["x-ratelimit-remaining-requests"] == "1"
    spent += Decimal(second.parse().usage.model_extra["cost"])
    with pytest.raises(openai.RateLimitError) as refused:
        _ask(client)
    assert refused.value.code == "insufficient_quota"
    assert refused.value.response.headers["x-ratelimit-remaining-requests"] == "0"
    rejected_id = refused.value.response.headers["x-request-id"]
    with pytest.raises(openai.RateLimitError) as limited:
        _ask(client)  # the fourth request of the minute
    assert limited.value.code == "rate_limit_exceeded"
    assert 1 <= int(limited.value.response.headers["Retry-After"]) <= 60

    rows = node.admin_call("GET", f"/admin/requests?key={key_id}").json()
    assert [r["status"] for r in rows] == ["rejected", "rejected", "ok", "ok"]
    assert rows[1]["id"] == rejected_id and rows[1]["completion_tokens"] == 0
    report = node.admin_call("GET", f"/admin/usage?key={key_id}").json()
    assert Decimal(report["total"]["cost"]) == spent <= budget
    assert Decimal(report["rows"][0]["budget"]["remaining"]) == budget - spent
