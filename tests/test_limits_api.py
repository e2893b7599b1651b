"""Per-key limits through HTTP, with the limiter's clock in the test's hand (no sleeps for
windows): 429 with Retry-After and OpenAI's body, x-ratelimit-* headers on every response,
reservations settled at the end, also of a cancelled stream."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from node.meter import Limits
from node.meter.limits import RateLimiter
from tests.controls_support import ControlNode, assert_error, control_node


class Clock:
    def __init__(self) -> None:
        self.now = 5000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def clock() -> Clock:
    return Clock()


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, clock: Clock) -> Iterator[ControlNode]:
    db = tmp_path_factory.mktemp("limits") / "m.db"
    with control_node(db, limiter=RateLimiter(clock)) as node:
        yield node


def _key(node: ControlNode, limits: Limits) -> str:
    return node.meter.create_key("LLM", limits=limits)[1]


def test_rpm_counts_down_then_refuses_with_retry_after(node: ControlNode, clock: Clock) -> None:
    secret = _key(node, Limits(rpm=2))
    first = node.chat(secret, max_tokens=2)
    assert first.headers["x-ratelimit-limit-requests"] == "2"
    assert first.headers["x-ratelimit-remaining-requests"] == "1"
    clock.now += 20
    second = node.chat(secret, max_tokens=2, stream=True)
    assert second.status_code == 200 and second.text.rstrip().endswith("[DONE]")
    assert second.headers["x-ratelimit-remaining-requests"] == "0"
    clock.now += 10
    third = node.chat(secret, max_tokens=2)
    error = assert_error(third, 429, "requests", "rate_limit_exceeded")
    assert "2 requests per minute" in error["message"]
    assert third.headers["Retry-After"] == "30"  # the first leaves the minute 30 s from now
    assert third.headers["x-ratelimit-reset-requests"] == "50s"
    row = node.meter.request_row(third.headers["x-request-id"])
    assert row is not None and (row["status"], row["completion_tokens"]) == ("rejected", 0)
    # Other routes carry the headers too, and take nothing.
    models = node.call("GET", "/v1/models", secret)
    assert models.status_code == 200 and models.headers["x-ratelimit-remaining-requests"] == "0"
    clock.now += 30
    assert node.chat(secret, max_tokens=2).status_code == 200


def test_tpm_reserves_the_context_left_and_settles_to_real_tokens(
    node: ControlNode, clock: Clock
) -> None:
    secret = _key(node, Limits(tpm=70))
    # No max_tokens: 3 prompt tokens + the 61 left of the fake's 64-token context reserved.
    resp = node.chat(secret)
    assert resp.status_code == 200
    used = resp.json()["usage"]["total_tokens"]
    assert used == 3 + 8  # the fake engine stops after 8 tokens
    after = node.call("GET", "/v1/models", secret)
    assert after.headers["x-ratelimit-limit-tokens"] == "70"
    assert after.headers["x-ratelimit-remaining-tokens"] == str(70 - used)
    big = node.chat(secret, max_tokens=57)  # 60 > 59 left: refused until the 11 leave
    assert_error(big, 429, "tokens", "rate_limit_exceeded")
    assert big.headers["Retry-After"] == "60"
    clock.now += 60
    assert node.chat(secret, max_tokens=57).status_code == 200
    no_key_limits = node.call("GET", "/v1/models", node.llm)
    assert not any(h.startswith("x-ratelimit") for h in no_key_limits.headers)


def test_a_cancelled_stream_gives_back_its_parallel_slot(node: ControlNode) -> None:
    secret = _key(node, Limits(max_parallel=1, tpm=1000))
    node.engine.step_s = 0.02
    try:
        body = {
            "model": "fake",
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 40,
            "stream": True,
        }
        headers = {"Authorization": f"Bearer {secret}"}
        with httpx.stream(
            "POST", f"{node.url}/v1/chat/completions", json=body, headers=headers, timeout=30
        ) as resp:
            request_id = resp.headers["x-request-id"]
            assert resp.headers["x-ratelimit-remaining-tokens"] == str(1000 - 43)
            lines = resp.iter_lines()  # held: dropping the iterator would hang up at once
            assert next(lines).startswith("data: ")
            busy = node.chat(secret, max_tokens=2)
            error = assert_error(busy, 429, "requests", "rate_limit_exceeded")
            assert "1 parallel" in error["message"] and busy.headers["Retry-After"] == "1"
        row = _final_row(node, request_id)
    finally:
        node.engine.step_s = 0.002
    assert row["status"] == "cancelled"
    spent = row["prompt_tokens"] + row["completion_tokens"]
    assert spent < 43
    after = node.chat(secret, max_tokens=2)
    assert after.status_code == 200
    # The cancelled stream settled to what it used; this one to 3 + 2.
    assert after.headers["x-ratelimit-remaining-tokens"] == str(1000 - spent - 5)


def _final_row(node: ControlNode, request_id: str) -> dict:
    # The server learns of the hang-up asynchronously; its finish is the event we wait for.
    for _ in range(500):
        row = node.meter.request_row(request_id)
        if row is not None and row["status"] != "running":
            return row
        time.sleep(0.01)
    raise AssertionError("the cancelled request was never finished")


def test_limits_change_at_the_next_request(node: ControlNode) -> None:
    key, secret = node.meter.create_key("LLM", limits=Limits(rpm=1))
    assert node.chat(secret, max_tokens=1).status_code == 200
    assert node.chat(secret, max_tokens=1).status_code == 429
    node.meter.update_key(key.id, {"rpm": None})
    resp = node.chat(secret, max_tokens=1)
    assert resp.status_code == 200 and "x-ratelimit-limit-requests" not in resp.headers
