"""API shape and error tests: a real uvicorn server and a real meter, the fake engine of
`tests/fakes.py` (fast and deterministic). The same paths on the real model: `test_api_e2e.py`."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import sqlite3
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import httpx
import openai
import pytest

from node.api.app import create_app
from node.api.metrics import NodeMetrics
from node.meter import Meter
from node.service import NodeService
from tests.api_fixtures import read_events_then_hang_up, serve_in_thread
from tests.fakes import FakeEmbedder, FakeEngine, FakeGpu, FakePool

LIMIT = 64 * 1024  # body limit of this test server


@dataclass
class Node:
    url: str
    secret: str
    key_id: str
    meter: Meter
    engine: FakeEngine
    db: Path

    def client(self, secret: str | None = None) -> openai.OpenAI:
        return openai.OpenAI(
            base_url=f"{self.url}/v1", api_key=secret or self.secret, max_retries=0
        )

    def post(self, path: str, body: object, **kw: object) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.secret}", **kw.pop("headers", {})}  # type: ignore[dict-item]
        kw.setdefault("timeout", 30)
        return httpx.post(f"{self.url}{path}", json=body, headers=headers, **kw)  # type: ignore[arg-type]

    def row(self, request_id: str) -> dict:
        row = self.meter.request_row(request_id)
        assert row is not None, f"no meter row {request_id}"
        return row


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    db = tmp_path_factory.mktemp("api") / "meter.db"
    meter = Meter(db, busy_timeout_s=0.3, synchronous="NORMAL")
    key, secret = meter.create_key("LLM", comment="tests")
    engine = FakeEngine("fake")
    metrics = NodeMetrics()
    service = NodeService([], FakePool(engine, FakeEmbedder()), meter, FakeGpu(), metrics)
    with serve_in_thread(create_app(service, metrics, max_body_bytes=LIMIT)) as url:
        _wait_ready(url)
        yield Node(url, secret, key.id, meter, engine, db)
    meter.close()


def _wait_ready(url: str) -> None:
    for _ in range(500):
        if httpx.get(f"{url}/health").status_code == 200:
            return
        time.sleep(0.01)
    raise AssertionError("node never became ready")


def _assert_error(
    resp: httpx.Response, status: int, type_: str, code: str | None, param: str | None = None
) -> dict:
    assert resp.status_code == status, resp.text
    assert resp.headers["x-request-id"]
    body = resp.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert {"message", "type", "param", "code"} <= set(error)
    assert error["message"]
    assert error["type"] == type_
    assert error["code"] == code
    assert error["param"] == param
    return error


CHAT = {"model": "fake", "messages": [{"role": "user", "content": "hello there"}]}


# --- happy paths through the official SDK ---------------------------------------------------


def test_chat_completion_through_sdk_is_metered_under_its_request_id(node: Node) -> None:
    raw = node.client().chat.completions.with_raw_response.create(
        model="fake", messages=[{"role": "user", "content": "hi"}], max_tokens=5, user="alice"
    )
    completion = raw.parse()
    assert completion.object == "chat.completion"
    assert completion.choices[0].message.content == "w0 w1 w2 w3 w4"
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage.completion_tokens == 5
    assert completion.usage.prompt_tokens == 3  # "<user> hi <assistant>"
    assert completion.usage.total_tokens == 8
    assert completion.usage.prompt_tokens_details.cached_tokens == 0
    row = node.row(raw.headers["x-request-id"])
    assert row["status"] == "ok"
    assert (row["prompt_tokens"], row["completion_tokens"]) == (3, 5)
    assert row["endpoint"] == "chat.completions"
    assert row["key_id"] == node.key_id
    assert row["gpu_type"] == "fakegpu"
    assert row["user"] == "alice"


def test_chat_stream_sends_role_deltas_finish_usage_then_done(node: Node) -> None:
    stream = node.client().chat.completions.create(
        **CHAT, max_tokens=3, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "w0 w1 w2"
    finish = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finish) == 1 and finish[0].choices[0].finish_reason == "length"
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == 3
    assert all(c.usage is None for c in chunks[:-1])


def test_raw_stream_ends_with_done_and_carries_no_usage_unless_asked(node: Node) -> None:
    with httpx.stream(
        "POST",
        f"{node.url}/v1/chat/completions",
        json={**CHAT, "max_tokens": 2, "stream": True},
        headers={"Authorization": f"Bearer {node.secret}"},
    ) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        request_id = resp.headers["x-request-id"]
        lines = [line for line in resp.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    events = [json.loads(line[6:]) for line in lines[:-1]]
    assert all(e["object"] == "chat.completion.chunk" for e in events)
    assert all("usage" not in e for e in events)
    assert node.row(request_id)["completion_tokens"] == 2


def test_completions_stream_and_whole(node: Node) -> None:
    client = node.client()
    whole = client.completions.create(model="fake", prompt="once upon", max_tokens=4)
    assert whole.object == "text_completion"
    assert whole.choices[0].text == "w0 w1 w2 w3"
    assert whole.usage.prompt_tokens == 2
    listed = client.completions.create(model="fake-alias", prompt=["one"], max_tokens=2)
    assert listed.choices[0].text == "w0 w1"
    assert listed.model == "fake"
    chunks = list(
        client.completions.create(
            model="fake", prompt="a b c", max_tokens=3, stream=True,
            stream_options={"include_usage": True},
        )
    )  # fmt: skip
    assert "".join(c.choices[0].text for c in chunks if c.choices) == "w0 w1 w2"
    assert chunks[-1].choices == [] and chunks[-1].usage.prompt_tokens == 3


def test_completions_default_to_sixteen_tokens_like_openai(node: Node) -> None:
    node.engine.default_tokens = 100
    try:
        out = node.client().completions.create(model="fake", prompt="go")
    finally:
        node.engine.default_tokens = 8
    assert out.usage.completion_tokens == 16


def test_sampling_fields_reach_the_engine(node: Node) -> None:
    node.client().chat.completions.create(
        **CHAT, temperature=0.2, top_p=0.9, seed=7, stop=["w9", "zz"], max_completion_tokens=3,
        presence_penalty=0.5, frequency_penalty=-0.5, logit_bias={"42": -100},
        extra_body={"top_k": 5, "min_p": 0.1, "repeat_penalty": 1.1},
    )  # fmt: skip
    params = node.engine.submitted[-1]
    assert params.temperature == 0.2 and params.top_p == 0.9 and params.seed == 7
    assert params.stop == ("w9", "zz") and params.max_tokens == 3
    assert params.presence_penalty == 0.5 and params.frequency_penalty == -0.5
    assert dict(params.logit_bias) == {42: -100.0}
    assert (params.top_k, params.min_p, params.repeat_penalty) == (5, 0.1, 1.1)
    assert params.grammar is None


def test_stop_sequence_finishes_with_stop(node: Node) -> None:
    out = node.client().chat.completions.create(**CHAT, stop="w2")
    assert out.choices[0].message.content == "w0 w1"
    assert out.choices[0].finish_reason == "stop"


def test_response_format_becomes_a_grammar(node: Node) -> None:
    node.client().chat.completions.create(**CHAT, response_format={"type": "json_object"})
    assert "root" in (node.engine.submitted[-1].grammar or "")
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    node.client().chat.completions.create(
        **CHAT,
        response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}},
    )
    assert "root" in (node.engine.submitted[-1].grammar or "")


def test_content_parts_are_joined(node: Node) -> None:
    parts = [{"type": "text", "text": "one two"}, {"type": "text", "text": " three"}]
    out = node.client().chat.completions.create(
        model="fake", messages=[{"role": "user", "content": parts}], max_tokens=1
    )
    assert out.usage.prompt_tokens == 5  # <user> one two three <assistant>


def test_embeddings_float_and_base64(node: Node) -> None:
    client = node.client()
    floats = client.embeddings.create(
        model="fake-embed", input=["ab cd", "x"], encoding_format="float"
    )
    assert [d.index for d in floats.data] == [0, 1]
    assert len(floats.data[0].embedding) == 4
    assert floats.usage.prompt_tokens == 3
    sdk_default = client.embeddings.create(model="fake-embed", input="ab cd")  # base64 on wire
    assert sdk_default.data[0].embedding == pytest.approx(floats.data[0].embedding, rel=1e-6)
    raw = node.post(
        "/v1/embeddings", {"model": "fake-embed", "input": "x", "encoding_format": "base64"}
    )
    vector = struct.unpack("<4f", base64.b64decode(raw.json()["data"][0]["embedding"]))
    assert list(vector) == pytest.approx(floats.data[1].embedding, rel=1e-6)
    row = node.row(raw.headers["x-request-id"])
    assert (row["endpoint"], row["prompt_tokens"], row["status"]) == ("embeddings", 1, "ok")


def test_models_list_and_retrieve_with_price(node: Node) -> None:
    node.meter.set_price("fake", "fakegpu", "19.78", "167.66", "PLN")
    client = node.client()
    ids = [m.id for m in client.models.list()]
    assert ids == ["fake", "fake-embed"]
    card = client.models.retrieve("fake").model_dump()
    assert card["owned_by"] == "llm-node"
    assert card["context_length"] == 64
    assert card["quant_type"] == "Q4_1" and card["gpu_type"] == "fakegpu"
    assert card["price"] == {
        "prompt_per_1m": "19.78",
        "completion_per_1m": "167.66",
        "currency": "PLN",
    }
    assert client.models.retrieve("fake-embed").model_dump()["price"] is None
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("nope")


def test_priced_usage_carries_exact_cost(node: Node) -> None:
    node.meter.set_price("fake", "fakegpu", "19.78", "167.66", "PLN")
    # 18 prompt tokens: "<user>" + 16 words + "<assistant>"
    words = " ".join(f"p{i}" for i in range(16))
    resp = node.post(
        "/v1/chat/completions",
        {"model": "fake", "messages": [{"role": "user", "content": words}], "max_tokens": 16},
    )
    usage = resp.json()["usage"]
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (18, 16)
    assert usage["cost"] == "0.0030386" and usage["currency"] == "PLN"
    assert Decimal(node.row(resp.headers["x-request-id"])["cost"]) == Decimal("0.0030386")


# --- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({"messages": CHAT["messages"]}, "model", "missing_required_parameter"),
        ({"model": "fake"}, "messages", "missing_required_parameter"),
        ({**CHAT, "messages": []}, "messages", "invalid_value"),
        ({**CHAT, "temperature": "hot"}, "temperature", "invalid_value"),
        ({**CHAT, "temperature": 3}, "temperature", "invalid_value"),
        ({**CHAT, "max_tokens": 0}, "max_tokens", "invalid_value"),
        ({**CHAT, "n": 2}, "n", "unsupported_value"),
        ({**CHAT, "stream": "yes"}, "stream", "invalid_value"),
        ({**CHAT, "stream_options": {"include_usage": 1}}, "stream_options.include_usage",
         "invalid_value"),
        ({**CHAT, "logit_bias": {"abc": 1}}, "logit_bias", "invalid_value"),
        ({**CHAT, "logit_bias": {"²": 1}}, "logit_bias", "invalid_value"),  # isdigit() is true
        ({**CHAT, "logit_bias": {"٣": 1}}, "logit_bias", "invalid_value"),  # int() gives 3
        ({**CHAT, "logit_bias": {"07": 1}}, "logit_bias", "invalid_value"),  # would alias "7"
        ({**CHAT, "logit_bias": {"-1": 1}}, "logit_bias", "invalid_value"),
        ({**CHAT, "logit_bias": {"5": 101}}, "logit_bias", "invalid_value"),
        ({**CHAT, "logit_bias": {"5": "1"}}, "logit_bias", "invalid_value"),
        ({**CHAT, "stop": [""]}, "stop[0]", "invalid_value"),
        ({**CHAT, "stop": ""}, "stop", "invalid_value"),
        ({**CHAT, "stop": ["x"] * 17}, "stop", "invalid_value"),
        ({**CHAT, "response_format": {"type": "xml"}}, "response_format", "invalid_value"),
        (
            {**CHAT, "response_format": {"type": "json_schema"}},
            "response_format.json_schema",
            "missing_required_parameter",
        ),
        (
            {**CHAT, "messages": [{"role": "wizard", "content": "x"}]},
            "messages[0].role",
            "invalid_value",
        ),
        ({**CHAT, "messages": [{"role": "user", "content": 5}]}, "messages[0].content",
         "invalid_value"),
        ({**CHAT, "messages": [{"role": "user"}]}, "messages[0].content",
         "missing_required_parameter"),
        ({**CHAT, "messages": [{"role": "tool", "content": "x"}]}, "messages[0].tool_call_id",
         "missing_required_parameter"),
        ({**CHAT, "messages": [{"content": "x"}]}, "messages[0].role", "invalid_value"),
        ({**CHAT, "messages": [{"role": "user", "content": []}]}, "messages[0].content",
         "invalid_value"),
        ({**CHAT, "messages": [{"role": "user", "content": "x", "tool_calls": []}]},
         "messages[0].tool_calls", "unknown_parameter"),
        ({**CHAT, "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}]},
         "messages[0].content[0].type", "unsupported_value"),
        ({**CHAT, "logprobs": True}, "logprobs", "unsupported_value"),
        ({**CHAT, "top_k": 2**40}, "top_k", "invalid_value"),
        ({**CHAT, "seed": 1.5}, "seed", "invalid_value"),
    ],
)  # fmt: skip
def test_bad_chat_bodies_are_400_naming_the_param(
    node: Node, body: dict, param: str, code: str
) -> None:
    _assert_error(
        node.post("/v1/chat/completions", body), 400, "invalid_request_error", code, param
    )


def test_parameters_the_model_refuses_are_400_before_any_meter_row(node: Node) -> None:
    resp = node.post("/v1/chat/completions", {**CHAT, "logit_bias": {"999999": 5}})
    _assert_error(resp, 400, "invalid_request_error", "invalid_value", "logit_bias")
    assert node.meter.request_row(resp.headers["x-request-id"]) is None


def test_unknown_fields_are_refused_naming_them(node: Node) -> None:
    for path, body in [
        ("/v1/chat/completions", {**CHAT, "frobnicate": {"x": 1}}),
        ("/v1/completions", {"model": "fake", "prompt": "x", "frobnicate": 1}),
        ("/v1/embeddings", {"model": "fake-embed", "input": "x", "frobnicate": 1}),
    ]:
        error = _assert_error(
            node.post(path, body), 400, "invalid_request_error", "unknown_parameter", "frobnicate"
        )
        assert "frobnicate" in error["message"]
    body = {**CHAT, "response_format": {"type": "json_object", "schema": {}}}
    _assert_error(node.post("/v1/chat/completions", body), 400, "invalid_request_error",
                  "unknown_parameter", "response_format.schema")  # fmt: skip


# Fields that would change the answer but are not implemented: each is a 400 naming it, with the
# value that changes nothing still accepted (clients that send defaults keep working).
REFUSED_CHAT = [
    ("n", 2, 1),
    ("logprobs", True, False),
    ("top_logprobs", 2, None),
    ("audio", {"voice": "alloy", "format": "wav"}, None),
    ("modalities", ["text", "audio"], ["text"]),
    ("prediction", {"type": "content", "content": "x"}, None),
    ("tools", [{"type": "function", "function": {"name": "f"}}], None),
    ("tool_choice", "auto", None),
    ("functions", [{"name": "f"}], None),
    ("function_call", "auto", None),
    ("parallel_tool_calls", True, None),
    ("web_search_options", {}, None),
    ("reasoning_effort", "high", None),
    ("verbosity", "low", None),
]
REFUSED_COMPLETIONS = [
    ("n", 3, 1),
    ("best_of", 2, 1),
    ("echo", True, False),
    ("logprobs", 1, None),
    ("suffix", "end", None),
]


@pytest.mark.parametrize(
    ("path", "field", "bad", "noop"),
    [("/v1/chat/completions", *case) for case in REFUSED_CHAT]
    + [("/v1/completions", *case) for case in REFUSED_COMPLETIONS],
)
def test_unimplemented_fields_are_refused_naming_them(
    node: Node, path: str, field: str, bad: object, noop: object
) -> None:
    base = CHAT if path == "/v1/chat/completions" else {"model": "fake", "prompt": "x"}
    code = "unsupported_parameter" if noop is None else "unsupported_value"
    resp = node.post(path, {**base, field: bad, "max_tokens": 1})
    error = _assert_error(resp, 400, "invalid_request_error", code, field)
    assert f"'{field}'" in error["message"] and "not supported" in error["message"]
    assert node.meter.request_row(resp.headers["x-request-id"]) is None
    assert node.post(path, {**base, field: noop, "max_tokens": 1}).status_code == 200


def test_tuning_only_fields_are_accepted_and_change_nothing(node: Node) -> None:
    from node.api.protocol import IGNORED

    tuning = {
        "store": True,
        "metadata": {"team": "search"},
        "service_tier": "flex",
        "prompt_cache_key": "k1",
        "safety_identifier": "u-1",
    }
    assert set(tuning) == set(IGNORED)
    plain = node.post("/v1/chat/completions", {**CHAT, "max_tokens": 3}).json()
    tuned = node.post("/v1/chat/completions", {**CHAT, "max_tokens": 3, **tuning,
                      "stream_options": {"include_usage": True}}).json()  # fmt: skip
    assert tuned["choices"] == plain["choices"] and tuned["usage"] == plain["usage"]


def test_malformed_json_and_non_object_bodies(node: Node) -> None:
    headers = {"Authorization": f"Bearer {node.secret}", "Content-Type": "application/json"}
    for content in (b'{"model": ', b"[1, 2]", b"", b"\xff\xfe"):
        resp = httpx.post(f"{node.url}/v1/chat/completions", content=content, headers=headers)
        _assert_error(resp, 400, "invalid_request_error", None)


def test_bad_schema_is_400(node: Node) -> None:
    bad = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "frob"}}}
    resp = node.post("/v1/chat/completions", {**CHAT, "response_format": bad})
    _assert_error(resp, 400, "invalid_request_error", None, "response_format.json_schema.schema")


def test_bad_completion_and_embedding_bodies(node: Node) -> None:
    for body, param in [
        ({"model": "fake", "prompt": ["a", "b"]}, "prompt"),
        ({"model": "fake", "prompt": 5}, "prompt"),
        ({"model": "fake", "prompt": ""}, "prompt"),
        ({"model": "fake", "prompt": [""]}, "prompt[0]"),
        ({"model": "fake", "prompt": []}, "prompt"),
    ]:
        err = _assert_error(
            node.post("/v1/completions", body), 400, "invalid_request_error", "invalid_value",
            param,
        )  # fmt: skip
        assert param in err["message"]
    for body, param in [
        ({"model": "fake-embed", "input": []}, "input"),
        ({"model": "fake-embed", "input": ""}, "input"),
        ({"model": "fake-embed", "input": ["x", ""]}, "input[1]"),
        ({"model": "fake-embed", "input": [1, 2]}, "input[0]"),
        ({"model": "fake-embed", "input": "x", "encoding_format": "hex"}, "encoding_format"),
        ({"model": "fake-embed", "input": "x", "dimensions": 2}, "dimensions"),
    ]:
        _assert_error(
            node.post("/v1/embeddings", body), 400, "invalid_request_error", "invalid_value", param
        )


def test_template_failure_is_400(node: Node) -> None:
    body = {**CHAT, "messages": [{"role": "tool", "content": "x", "tool_call_id": "c1"}]}
    _assert_error(node.post("/v1/chat/completions", body), 400, "invalid_request_error", None,
                  "messages")  # fmt: skip


def test_unknown_model_and_wrong_kind_are_404(node: Node) -> None:
    for path, body in [
        ("/v1/chat/completions", {**CHAT, "model": "gpt-9"}),
        ("/v1/chat/completions", {**CHAT, "model": "fake-embed"}),
        ("/v1/completions", {"model": "fake-embed", "prompt": "x"}),
        ("/v1/embeddings", {"model": "fake", "input": "x"}),
    ]:
        _assert_error(node.post(path, body), 404, "invalid_request_error", "model_not_found",
                      "model")  # fmt: skip
    with pytest.raises(openai.NotFoundError):
        node.client().chat.completions.create(**{**CHAT, "model": "gpt-9"})


def test_context_overflow_is_400_with_counts_and_not_metered(node: Node) -> None:
    before = len(node.meter.billing_requests(limit=1000))
    long = " ".join(["word"] * 70)
    resp = node.post(
        "/v1/chat/completions", {**CHAT, "messages": [{"role": "user", "content": long}]}
    )
    error = _assert_error(resp, 400, "invalid_request_error", "context_length_exceeded", "messages")
    assert error["n_ctx"] == 64 and error["n_prompt_tokens"] == 72
    resp = node.post("/v1/completions", {"model": "fake", "prompt": "a b", "max_tokens": 63})
    error = _assert_error(resp, 400, "invalid_request_error", "context_length_exceeded", "prompt")
    resp = node.post("/v1/embeddings", {"model": "fake-embed", "input": ["ok", long]})
    error = _assert_error(resp, 400, "invalid_request_error", "context_length_exceeded", "input")
    assert error["n_ctx"] == 32
    assert len(node.meter.billing_requests(limit=1000)) == before


def test_auth_failures_are_401(node: Node) -> None:
    url = f"{node.url}/v1/chat/completions"
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic abc"}):
        resp = httpx.post(url, json=CHAT, headers=headers)
        _assert_error(resp, 401, "authentication_error", "invalid_api_key")
    resp = httpx.get(f"{node.url}/v1/models", headers={"Authorization": "Bearer nope"})
    _assert_error(resp, 401, "authentication_error", "invalid_api_key")
    with pytest.raises(openai.AuthenticationError):
        node.client("llmn-unknown").models.list()


def test_deleted_and_expired_keys_fail_on_the_next_request(node: Node) -> None:
    key, secret = node.meter.create_key("ADMIN")
    client = node.client(secret)
    assert client.models.list().data  # ADMIN may call /v1 too
    assert node.meter.delete_key(key.id)
    with pytest.raises(openai.AuthenticationError):
        client.models.list()
    _key, short = node.meter.create_key("LLM", expires_in_days=0.1 / 86400)
    time.sleep(0.2)
    with pytest.raises(openai.AuthenticationError):
        node.client(short).models.list()


def test_body_over_the_limit_is_413_by_length_and_by_counting(node: Node) -> None:
    big = json.dumps({**CHAT, "pad": "x" * LIMIT}).encode()
    headers = {"Authorization": f"Bearer {node.secret}", "Content-Type": "application/json"}
    resp = httpx.post(f"{node.url}/v1/chat/completions", content=big, headers=headers)
    _assert_error(resp, 413, "invalid_request_error", "request_too_large")

    def chunks() -> Iterator[bytes]:  # no Content-Length: chunked transfer
        for start in range(0, len(big), 4096):
            yield big[start : start + 4096]

    resp = httpx.post(f"{node.url}/v1/chat/completions", content=chunks(), headers=headers)
    assert "content-length" not in resp.request.headers
    _assert_error(resp, 413, "invalid_request_error", "request_too_large")


def test_queue_full_is_429_with_retry_after_and_metered_as_error(node: Node) -> None:
    node.engine.max_active = 0
    try:
        resp = node.post("/v1/chat/completions", CHAT)
    finally:
        node.engine.max_active = 4
    _assert_error(resp, 429, "rate_limit_error", "queue_full")
    assert resp.headers["retry-after"] == "2"
    row = node.row(resp.headers["x-request-id"])
    assert row["status"] == "error" and row["completion_tokens"] == 0


def test_meter_that_cannot_write_gives_503_and_generates_nothing(node: Node) -> None:
    submitted = len(node.engine.submitted)
    blocker = sqlite3.connect(node.db, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    try:
        resp = node.post("/v1/chat/completions", CHAT)
        emb = node.post("/v1/embeddings", {"model": "fake-embed", "input": "x"})
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    _assert_error(resp, 503, "server_error", "meter_unavailable")
    _assert_error(emb, 503, "server_error", "meter_unavailable")
    assert len(node.engine.submitted) == submitted
    assert node.meter.request_row(resp.headers["x-request-id"]) is None


def test_unknown_routes_and_methods_are_openai_shaped(node: Node) -> None:
    _assert_error(httpx.get(f"{node.url}/v2/nothing"), 404, "invalid_request_error", "unknown_url")
    resp = httpx.get(f"{node.url}/v1/chat/completions")
    _assert_error(resp, 405, "invalid_request_error", "method_not_allowed")


def test_engine_failure_is_500_without_a_trace_and_metered_as_error(node: Node) -> None:
    node.engine.fail_after = 2
    try:
        resp = node.post("/v1/chat/completions", CHAT)
        with httpx.stream(
            "POST", f"{node.url}/v1/chat/completions", json={**CHAT, "stream": True},
            headers={"Authorization": f"Bearer {node.secret}"},
        ) as stream:  # fmt: skip
            events = [line for line in stream.iter_lines() if line.startswith("data: ")]
    finally:
        node.engine.fail_after = None
    error = _assert_error(resp, 500, "server_error", "engine_error")
    assert "fake failure" in error["message"]
    row = node.row(resp.headers["x-request-id"])
    assert (row["status"], row["completion_tokens"]) == ("error", 2)
    assert json.loads(events[-1][6:])["error"]["code"] == "engine_error"


def test_engine_bug_is_a_logged_500_and_the_row_is_finished_as_error(node: Node) -> None:
    node.engine.raise_after = 3
    try:
        resp = node.post("/v1/chat/completions", CHAT)
        with httpx.stream(
            "POST", f"{node.url}/v1/chat/completions", json={**CHAT, "stream": True},
            headers={"Authorization": f"Bearer {node.secret}"},
        ) as stream:  # fmt: skip
            stream_id = stream.headers["x-request-id"]
            events = [line for line in stream.iter_lines() if line.startswith("data: ")]
    finally:
        node.engine.raise_after = None
    _assert_error(resp, 500, "server_error", None)
    assert "fake engine bug" not in resp.text  # no internals leak to clients
    for request_id in (resp.headers["x-request-id"], stream_id):
        row = _wait_final(node, request_id)
        assert (row["status"], row["completion_tokens"]) == ("error", 3)
    assert json.loads(events[-1][6:])["error"]["type"] == "server_error"


# --- disconnects ----------------------------------------------------------------------------


def test_disconnect_mid_stream_cancels_and_meters_partial_tokens(node: Node) -> None:
    node.engine.step_s = 0.02
    try:
        with httpx.stream(
            "POST", f"{node.url}/v1/chat/completions",
            json={**CHAT, "stream": True, "max_tokens": 50},
            headers={"Authorization": f"Bearer {node.secret}"},
        ) as resp:  # fmt: skip
            request_id = resp.headers["x-request-id"]
            read_events_then_hang_up(resp, 5)
        generation = node.engine.generations[-1]
        row = _wait_final(node, request_id)
    finally:
        node.engine.step_s = 0.002
    assert row["status"] == "cancelled"
    assert 4 <= row["completion_tokens"] < 20
    assert row["completion_tokens"] == generation.counts.completion_tokens
    time.sleep(0.1)
    assert generation.counts.completion_tokens == row["completion_tokens"]  # stopped counting


def test_disconnect_while_waiting_for_a_whole_completion_cancels(node: Node) -> None:
    node.engine.step_s = 0.02
    try:
        with pytest.raises(httpx.ReadTimeout):
            node.post("/v1/chat/completions", {**CHAT, "max_tokens": 50}, timeout=0.3)
        generation = node.engine.generations[-1]
        for _ in range(100):
            if generation.counts.completion_tokens and generation._cancelled:
                break
            time.sleep(0.02)
    finally:
        node.engine.step_s = 0.002
    time.sleep(0.2)
    assert generation._cancelled
    assert generation.counts.completion_tokens < 30
    rows = node.meter.billing_requests(limit=5)
    assert any(r["status"] == "cancelled" for r in rows)


def test_streams_checkpoint_the_meter_at_least_every_16_tokens(node: Node) -> None:
    node.engine.step_s = 0.01
    try:
        with httpx.stream(
            "POST", f"{node.url}/v1/completions",
            json={"model": "fake", "prompt": "x", "stream": True, "max_tokens": 60},
            headers={"Authorization": f"Bearer {node.secret}"},
        ) as resp:  # fmt: skip
            request_id = resp.headers["x-request-id"]
            received = 0
            checkpoints = []
            for line in resp.iter_lines():
                if not line.startswith("data: "):
                    continue
                received += 1
                if received in (20, 40):
                    time.sleep(0.05)  # the writer thread commits
                    row = node.row(request_id)
                    checkpoints.append((row["status"], row["completion_tokens"]))
    finally:
        node.engine.step_s = 0.002
    assert checkpoints[0][0] == "running" and checkpoints[0][1] >= 16
    assert checkpoints[1][0] == "running" and checkpoints[1][1] >= 32
    assert _wait_final(node, request_id)["completion_tokens"] == 60


def test_burst_usage_equals_meter_rows_equals_prometheus(node: Node) -> None:
    _key, secret = node.meter.create_key("LLM", comment="burst")
    key_id = _key.id

    async def burst() -> list[tuple[str, dict]]:
        headers = {"Authorization": f"Bearer {secret}"}
        async with httpx.AsyncClient(base_url=node.url, headers=headers, timeout=30) as client:

            async def one(i: int) -> tuple[str, dict]:
                if i % 3 == 0:
                    body = {**CHAT, "max_tokens": 3 + i, "stream": True,
                            "stream_options": {"include_usage": True}}  # fmt: skip
                    async with client.stream("POST", "/v1/chat/completions", json=body) as r:
                        data = [ln async for ln in r.aiter_lines() if ln.startswith("data: ")]
                        return r.headers["x-request-id"], json.loads(data[-2][6:])["usage"]
                if i % 3 == 1:
                    r = await client.post("/v1/completions", json={"model": "fake",
                                          "prompt": "a " * i, "max_tokens": 2 + i})  # fmt: skip
                else:
                    r = await client.post("/v1/embeddings", json={"model": "fake-embed",
                                          "input": ["x y"] * (1 + i % 4)})  # fmt: skip
                assert r.status_code == 200, r.text
                return r.headers["x-request-id"], r.json()["usage"]

            return await asyncio.gather(*(one(i) for i in range(24)))

    node.engine.max_active = 64
    try:
        results = asyncio.run(burst())
    finally:
        node.engine.max_active = 4
    prompt = sum(u["prompt_tokens"] for _, u in results)
    completion = sum(u.get("completion_tokens", 0) for _, u in results)
    rows = [_wait_final(node, rid) for rid, _ in results]
    assert {r["key_id"] for r in rows} == {key_id}
    assert sum(r["prompt_tokens"] for r in rows) == prompt
    assert sum(r["completion_tokens"] for r in rows) == completion
    text = httpx.get(f"{node.url}/metrics").text

    def counter(name: str, model: str) -> float:
        found = re.search(rf'^{name}{{key_id="{key_id}",model="{model}"}} (\S+)$', text, re.M)
        return float(found.group(1)) if found else 0.0

    assert (
        counter("llm_node_prompt_tokens_total", "fake")
        + counter("llm_node_prompt_tokens_total", "fake-embed")
        == prompt
    )
    assert counter("llm_node_completion_tokens_total", "fake") == completion


def _wait_final(node: Node, request_id: str) -> dict:
    for _ in range(300):
        row = node.row(request_id)
        if row["status"] != "running":
            return row
        time.sleep(0.01)
    raise AssertionError(f"row {request_id} still running")


# --- health, metrics, openapi ---------------------------------------------------------------


def _metric(text: str, name: str) -> float:
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, flags=re.MULTILINE)
    assert found, name
    return float(found.group(1))


def test_health_metrics_and_openapi(node: Node) -> None:
    assert httpx.get(f"{node.url}/health").json() == {"status": "ok"}
    decodes = _metric(httpx.get(f"{node.url}/metrics").text, "llamacpp:n_decode_total")
    node.client().chat.completions.create(**CHAT, max_tokens=2)  # labelled series exist
    text = httpx.get(f"{node.url}/metrics").text
    assert _metric(text, "llamacpp:n_decode_total") == decodes + 2  # the fake decodes per token
    for name in (
        "llamacpp:prompt_tokens_total",
        "llamacpp:tokens_predicted_total",
        "llamacpp:prompt_tokens_seconds",
        "llamacpp:predicted_tokens_seconds",
        "llamacpp:requests_processing",
        "llamacpp:requests_deferred",
        "llamacpp:n_decode_total",
        "llm_node_time_to_first_token_seconds_bucket",
        "llm_node_request_duration_seconds_bucket",
    ):
        assert name in text
    assert f'llm_node_completion_tokens_total{{key_id="{node.key_id}",model="fake"}}' in text
    assert node.secret not in text
    doc = httpx.get(f"{node.url}/openapi.json").json()
    assert {"/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/models",
            "/v1/models/{model_id}", "/health", "/metrics"} <= set(doc["paths"])  # fmt: skip
    assert "ChatCompletionRequest" in doc["components"]["schemas"]


def test_openapi_documents_every_route() -> None:
    from node.api.app import ROUTES
    from node.api.openapi import openapi_document

    paths = openapi_document()["paths"]
    for route in ROUTES:
        path = route.path.replace(":path}", "}")
        if path == "/openapi.json":
            continue
        assert path in paths, f"{path} is not in openapi.json"
        assert set(m.lower() for m in route.methods or ()) - {"head"} <= set(paths[path])


def test_loading_node_answers_503(tmp_path: Path) -> None:
    meter = Meter(tmp_path / "m.db")
    _key, secret = meter.create_key("LLM")
    pool = FakePool(FakeEngine("fake"), hold=True)
    metrics = NodeMetrics()
    service = NodeService([], pool, meter, FakeGpu(), metrics)
    try:
        with serve_in_thread(create_app(service, metrics)) as url:
            health = httpx.get(f"{url}/health")
            assert (health.status_code, health.json()) == (503, {"status": "loading"})
            assert health.headers["x-request-id"]
            resp = httpx.post(f"{url}/v1/chat/completions", json=CHAT,
                              headers={"Authorization": f"Bearer {secret}"})  # fmt: skip
            _assert_error(resp, 503, "server_error", "model_loading")
            pool.release()
            _wait_ready(url)
    finally:
        pool.release()
        meter.close()


def _walk(node: object) -> Iterator[dict]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


def test_openapi_states_the_validators_rules() -> None:
    """The document is what the validators enforce: closed objects, JSON Schema keywords only
    (a pydantic bound the schema cannot show would leak as `ge`), refused fields as consts."""
    from node.api.openapi import openapi_document
    from node.api.protocol import IGNORED, REQUEST_MODELS

    schemas = openapi_document()["components"]["schemas"]
    for name in REQUEST_MODELS:
        for sub in _walk(schemas[name]):
            assert not {"ge", "gt", "le", "lt"} & set(sub), (name, sub)
    closed = [n for n, s in schemas.items() if s.get("type") == "object" and "properties" in s]
    request_parts = [n for n in closed if n not in ("Error", "ChatCompletion", "TextCompletion",
                     "EmbeddingList", "Model", "ModelList")]  # fmt: skip
    assert {"ChatCompletionRequest", "UserMessage", "TextPart", "JsonSchema"} <= set(request_parts)
    for name in request_parts:
        assert schemas[name]["additionalProperties"] is False, name
    chat = schemas["ChatCompletionRequest"]["properties"]
    assert chat["tools"]["type"] == "null"
    assert {"const": 1, "type": "integer"} in chat["n"]["anyOf"]
    bias = chat["logit_bias"]["anyOf"][0]
    assert bias["additionalProperties"] is False and list(bias["patternProperties"]) == [
        "^(0|[1-9][0-9]{0,9})$"
    ]
    assert schemas["ToolMessage"]["required"] == ["role", "content", "tool_call_id"]
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    for name in IGNORED:
        assert f"`{name}`" in readme, f"README must list the ignored field {name}"
