"""The Responses and Anthropic dialects' shapes on paths the real model cannot be made to take on
demand: an engine failure after the stream started, the body limit and a full queue in each
dialect's envelope, and the metric parity sums. A real uvicorn server and a real meter, the fake
engine of `tests/fakes.py`; the same routes on the real model: `test_api_dialects_e2e.py`."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from node.api.app import create_app
from node.api.metrics import NodeMetrics
from node.meter import Meter
from node.service import NodeService
from tests.api_fixtures import serve_in_thread
from tests.fakes import FakeEngine, FakeGpu, FakePool

LIMIT = 8 * 1024


@dataclass
class Node:
    url: str
    secret: str
    meter: Meter
    engine: FakeEngine

    def post(
        self, path: str, body: object, headers: dict[str, str] | None = None
    ) -> httpx.Response:
        headers = {"x-api-key": self.secret} if headers is None else headers
        return httpx.post(f"{self.url}{path}", json=body, headers=headers, timeout=30)

    def events(self, path: str, body: dict) -> list[tuple[str, dict]]:
        """(event name, data) of a streamed answer."""
        with httpx.stream("POST", f"{self.url}{path}", json={**body, "stream": True},
                          headers={"x-api-key": self.secret}, timeout=30) as resp:  # fmt: skip
            assert resp.status_code == 200
            name, out = "", []
            for line in resp.iter_lines():
                if line.startswith("event: "):
                    name = line.removeprefix("event: ")
                elif line.startswith("data: "):
                    out.append((name, json.loads(line.removeprefix("data: "))))
            return out

    def row(self, request_id: str) -> dict:
        for _ in range(500):
            row = self.meter.request_row(request_id)
            if row is not None and row["status"] != "running":
                return row
            time.sleep(0.01)
        raise AssertionError(f"no final row {request_id}")


@pytest.fixture
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    db = tmp_path_factory.mktemp("dialects") / "meter.db"
    meter = Meter(db, busy_timeout_s=0.3, synchronous="NORMAL")
    _key, secret = meter.create_key("LLM", comment="tests")
    engine = FakeEngine("fake", max_active=1)
    metrics = NodeMetrics()
    service = NodeService([], FakePool(engine), meter, FakeGpu(), metrics)
    with serve_in_thread(create_app(service, metrics, max_body_bytes=LIMIT)) as url:
        for _ in range(500):
            if httpx.get(f"{url}/health").status_code == 200:
                break
            time.sleep(0.01)
        yield Node(url, secret, meter, engine)
    meter.close()


RESPONSES = {"model": "fake", "input": "hello there", "max_output_tokens": 6}
MESSAGES = {"model": "fake", "max_tokens": 6, "messages": [{"role": "user", "content": "hi"}]}


def test_a_failure_mid_stream_is_response_failed_and_an_anthropic_error_event(node: Node) -> None:
    node.engine.fail_after = 2
    events = node.events("/v1/responses", RESPONSES)
    name, data = events[-1]
    assert name == data["type"] == "response.failed"
    assert data["response"]["status"] == "failed"
    assert data["response"]["error"]["code"] == "server_error"
    assert [d["sequence_number"] for _, d in events] == list(range(len(events)))
    events = node.events("/v1/messages", MESSAGES)
    assert events[0][0] == "message_start"
    name, data = events[-1]
    assert name == "error" and set(data) == {"type", "error"} and data["type"] == "error"
    assert data["error"]["type"] == "api_error"
    assert "failed" in data["error"]["message"]


def test_body_limit_and_missing_key_in_each_envelope(node: Node) -> None:
    big = {**MESSAGES, "system": "x" * (2 * LIMIT)}
    resp = node.post("/v1/messages", big)
    assert resp.status_code == 413
    assert resp.json()["error"]["type"] == "request_too_large" and resp.headers["x-request-id"]
    resp = node.post("/v1/responses", {**RESPONSES, "instructions": "x" * (2 * LIMIT)})
    assert resp.status_code == 413 and resp.json()["error"]["code"] == "request_too_large"
    resp = node.post("/v1/messages/count_tokens", MESSAGES, headers={})
    assert resp.status_code == 401
    assert resp.json()["type"] == "error"
    assert resp.json()["error"]["type"] == "authentication_error"
    resp = node.post("/v1/nothing-here", {})
    assert resp.status_code == 404 and "error" in resp.json() and "type" not in resp.json()


def test_a_full_queue_is_anthropic_rate_limit_error(node: Node) -> None:
    node.engine.max_active = 0  # every submit: EngineBusy
    resp = node.post("/v1/messages", MESSAGES)
    assert resp.status_code == 429, resp.text
    assert resp.json()["error"]["type"] == "rate_limit_error"
    assert resp.headers["retry-after"] == "2"
    assert node.row(resp.headers["x-request-id"])["status"] == "error"


def test_non_streamed_messages_and_responses_are_one_row_each(node: Node) -> None:
    resp = node.post("/v1/messages", {**MESSAGES, "metadata": {"user_id": "u1"}})
    message = resp.json()
    assert message["content"] == [{"type": "text", "text": "w0 w1 w2 w3 w4 w5"}]
    assert message["stop_reason"] == "max_tokens"
    row = node.row(resp.headers["x-request-id"])
    assert (row["endpoint"], row["user"], row["completion_tokens"]) == ("messages", "u1", 6)
    assert message["usage"]["output_tokens"] == 6
    assert message["usage"]["input_tokens"] == row["prompt_tokens"]
    resp = node.post("/v1/responses", RESPONSES)
    body = resp.json()
    assert body["status"] == "incomplete"
    assert body["incomplete_details"] == {"reason": "max_output_tokens"}
    assert body["output"][0]["content"][0]["text"] == "w0 w1 w2 w3 w4 w5"
    row = node.row(resp.headers["x-request-id"])
    assert row["endpoint"] == "responses"
    assert body["usage"]["output_tokens"] == row["completion_tokens"] == 6


def test_prompt_tokens_total_counts_only_processed_tokens(node: Node) -> None:
    node.engine.cached_tokens = 2  # every generation reports 2 reused prompt tokens

    def metric(name: str) -> float:
        text = httpx.get(f"{node.url}/metrics").text
        found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
        return float(found.group(1)) if found else 0.0

    before = metric("llamacpp:prompt_tokens_total"), metric("llamacpp:prompt_tokens_cached_total")
    rows = [node.row(node.post("/v1/responses", RESPONSES).headers["x-request-id"])
            for _ in range(2)]  # fmt: skip
    assert all(r["cached_tokens"] == 2 for r in rows)
    processed = metric("llamacpp:prompt_tokens_total") - before[0]
    assert processed == sum(r["prompt_tokens"] - 2 for r in rows)
    assert metric("llamacpp:prompt_tokens_cached_total") - before[1] == 4
