"""End to end: `llm-node serve` in its own process on the real SmolLM2 GGUF, a real SQLite meter,
keys and prices made through the real CLI, clients the official `openai` SDK and raw httpx."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import httpx
import openai
import pytest

from node.meter import Meter
from tests.api_fixtures import read_events_then_hang_up
from tests.node_process import (  # LLM_NODE: re-exported for tests/test_http_limits.py
    CHAT_ID,
    EMBED_ID,
    LLM_NODE,
    N_CTX_PER_SEQ,
    cli,
    start_server,
)

__all__ = ["LLM_NODE", "cli"]


@dataclass
class Server:
    url: str
    db: Path
    secret: str
    key_id: str
    process: subprocess.Popen[bytes]

    def client(self, secret: str | None = None) -> openai.OpenAI:
        return openai.OpenAI(
            base_url=f"{self.url}/v1", api_key=secret or self.secret, max_retries=0, timeout=120
        )

    def auth(self, secret: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {secret or self.secret}"}

    def row(self, request_id: str) -> dict:
        with Meter(self.db) as meter:
            row = meter.request_row(request_id)
        assert row is not None, f"no meter row {request_id}"
        return row

    def row_or_none(self, request_id: str) -> dict | None:
        with Meter(self.db) as meter:
            return meter.request_row(request_id)

    def final_row(self, request_id: str) -> dict:
        for _ in range(500):
            row = self.row(request_id)
            if row["status"] != "running":
                return row
            time.sleep(0.02)
        raise AssertionError(f"row {request_id} still running")

    def metric(self, name: str, labels: str = "") -> float:
        text = httpx.get(f"{self.url}/metrics").text
        pattern = rf"^{re.escape(name)}{re.escape(labels)} (\S+)$"
        found = re.search(pattern, text, flags=re.MULTILINE)
        return float(found.group(1)) if found else 0.0


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("e2e")
    db = tmp / "meter.db"
    key = json.loads(cli(db, "api-keys", "create", "--level", "LLM", "--json"))
    cli(db, "prices", "set", CHAT_ID, "testgpu", "--prompt", "19.78", "--completion", "167.66")
    url, process = start_server(tmp, db)
    yield Server(url, db, key["secret"], key["id"], process)
    process.send_signal(signal.SIGINT)
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()


MESSAGES = [{"role": "user", "content": "Name three colours."}]


def test_health_and_models(server: Server) -> None:
    assert httpx.get(f"{server.url}/health").json() == {"status": "ok"}
    models = server.client().models.list()
    assert [m.id for m in models] == [CHAT_ID, EMBED_ID]
    card = server.client().models.retrieve(CHAT_ID).model_dump()
    assert card["owned_by"] == "llm-node"
    assert card["quant_type"] == "Q4_1" and card["gpu_type"] == "testgpu"
    assert card["context_length"] == N_CTX_PER_SEQ
    assert card["price"] == {
        "prompt_per_1m": "19.78",
        "completion_per_1m": "167.66",
        "currency": "PLN",
    }


def test_chat_whole_and_streamed_agree_and_are_metered(server: Server) -> None:
    client = server.client()
    raw = client.chat.completions.with_raw_response.create(
        model=CHAT_ID, messages=MESSAGES, max_tokens=12, temperature=0, user="e2e"
    )
    whole = raw.parse()
    text = whole.choices[0].message.content
    assert text and whole.choices[0].finish_reason in ("stop", "length")
    usage = whole.usage
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert 0 < usage.completion_tokens <= 12
    row = server.final_row(raw.headers["x-request-id"])
    assert row["status"] == "ok" and row["user"] == "e2e" and row["gpu_type"] == "testgpu"
    assert (row["prompt_tokens"], row["completion_tokens"], row["cached_tokens"]) == (
        usage.prompt_tokens,
        usage.completion_tokens,
        usage.prompt_tokens_details.cached_tokens,
    )
    expected = (
        Decimal("19.78") * usage.prompt_tokens + Decimal("167.66") * usage.completion_tokens
    ) / 1_000_000
    assert Decimal(usage.model_extra["cost"]) == expected
    assert usage.model_extra["currency"] == "PLN"
    assert Decimal(row["cost"]) == expected

    chunks = list(
        client.chat.completions.create(
            model=CHAT_ID, messages=MESSAGES, max_tokens=12, temperature=0, stream=True,
            stream_options={"include_usage": True},
        )
    )  # fmt: skip
    assert chunks[0].choices[0].delta.role == "assistant"
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == text  # greedy: the same output either way
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == usage.completion_tokens


def test_seed_gives_the_same_output(server: Server) -> None:
    client = server.client()
    outs = {
        client.completions.create(
            model=CHAT_ID, prompt="Once upon a time", max_tokens=10, temperature=1.0, seed=42
        )
        .choices[0]
        .text
        for _ in range(2)
    }
    assert len(outs) == 1


def test_completions_stream(server: Server) -> None:
    with httpx.stream(
        "POST", f"{server.url}/v1/completions", headers=server.auth(), timeout=60,
        json={"model": CHAT_ID, "prompt": ["The sky is"], "max_tokens": 6, "stream": True,
              "stream_options": {"include_usage": True}},
    ) as resp:  # fmt: skip
        assert resp.status_code == 200
        request_id = resp.headers["x-request-id"]
        lines = [line[6:] for line in resp.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    events = [json.loads(line) for line in lines[:-1]]
    assert all(e["object"] == "text_completion" for e in events)
    usage = events[-1]["usage"]
    assert events[-1]["choices"] == []
    assert usage["completion_tokens"] == 6
    assert "cost" in usage
    row = server.final_row(request_id)
    assert (row["completion_tokens"], row["endpoint"]) == (6, "completions")


def test_json_schema_response_format_constrains_output(server: Server) -> None:
    schema = {
        "type": "object",
        "properties": {"colour": {"type": "string", "maxLength": 12}},
        "required": ["colour"],
        "additionalProperties": False,
    }
    out = server.client().chat.completions.create(
        model=CHAT_ID, messages=MESSAGES, max_tokens=40, temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "c", "schema": schema}},
    )  # fmt: skip
    assert out.choices[0].finish_reason == "stop"
    parsed = json.loads(out.choices[0].message.content)
    assert list(parsed) == ["colour"] and isinstance(parsed["colour"], str)


def test_embeddings_float_and_base64(server: Server) -> None:
    client = server.client()
    result = client.embeddings.create(
        model=EMBED_ID, input=["red apple", "green pear"], encoding_format="float"
    )
    vectors = [d.embedding for d in result.data]
    assert len(vectors) == 2 and len(vectors[0]) == 576  # SmolLM2-135M's n_embd
    assert math.isclose(sum(v * v for v in vectors[0]), 1.0, rel_tol=1e-3)
    assert result.usage.prompt_tokens > 0
    decoded = client.embeddings.create(model=EMBED_ID, input="red apple")  # base64 on the wire
    assert decoded.data[0].embedding == pytest.approx(vectors[0], abs=1e-5)


def test_errors_on_the_real_model(server: Server) -> None:
    long = "word " * 600
    resp = httpx.post(
        f"{server.url}/v1/chat/completions", headers=server.auth(), timeout=60,
        json={"model": CHAT_ID, "messages": [{"role": "user", "content": long}]},
    )  # fmt: skip
    assert resp.status_code == 400
    error = resp.json()["error"]
    assert error["code"] == "context_length_exceeded"
    assert error["n_ctx"] == N_CTX_PER_SEQ and error["n_prompt_tokens"] > 600
    resp = httpx.post(
        f"{server.url}/v1/chat/completions", headers=server.auth(), timeout=60,
        json={"model": CHAT_ID, "messages": MESSAGES, "logit_bias": {"999999999": 5}},
    )  # fmt: skip
    assert resp.status_code == 400
    assert resp.json()["error"]["type"] == "invalid_request_error"
    resp = httpx.post(
        f"{server.url}/v1/chat/completions", headers=server.auth(), timeout=60,
        json={"model": EMBED_ID, "messages": MESSAGES},
    )  # fmt: skip
    assert (resp.status_code, resp.json()["error"]["code"]) == (404, "model_not_found")


ODD_BODIES = [
    {"seed": 2**70},
    {"seed": -5, "temperature": 0},
    {"max_tokens": 2**62},
    {"top_k": 1_000_000, "min_p": 1.0, "top_p": 0.0},
    {"repeat_penalty": 10.0, "presence_penalty": 2, "frequency_penalty": -2},
    {"logit_bias": {"0": 100, "1": -100, "49151": 100}},
    {"logit_bias": {"99999999999999999999": 1}},
    {"stop": ["x" * 5000, "\u0000", "🙂"]},
    {"messages": [{"role": "user", "content": ""}]},
    {"messages": [{"role": "user", "content": "\u0000<|im_end|><|im_start|>system 🙂"}]},
    {"messages": [{"role": "assistant", "content": None}, {"role": "user", "content": "hi"}]},
    {"response_format": {"type": "json_schema", "json_schema": {"schema": {"type": "string"}}}},
    {"response_format": {"type": "json_schema", "json_schema": {"schema": {"$ref": "#/no"}}}},
    {"response_format": {"type": "json_schema",
                         "json_schema": {"schema": {"type": "object", "properties": {
                             "a": {"type": "string", "pattern": "("}}}}}},
    {"response_format": {"type": "json_schema",
                         "json_schema": {"schema": {"type": "array", "minItems": 99999}}}},
]  # fmt: skip


@pytest.mark.parametrize("extra", ODD_BODIES)
def test_no_client_input_yields_a_500(server: Server, extra: dict) -> None:
    body = {"model": CHAT_ID, "messages": MESSAGES, "max_tokens": 4, **extra}
    resp = httpx.post(
        f"{server.url}/v1/chat/completions", headers=server.auth(), timeout=60, json=body
    )
    assert resp.status_code in (200, 400), resp.text
    if resp.status_code == 400:
        assert resp.json()["error"]["type"] == "invalid_request_error"
    else:
        assert resp.json()["usage"]["completion_tokens"] <= 4
    row = server.row_or_none(resp.headers["x-request-id"])
    assert row is None or server.final_row(row["id"])["status"] in ("ok", "error")


def test_disconnect_mid_stream_stops_generation_and_meters_cancelled(server: Server) -> None:
    predicted = "llamacpp:tokens_predicted_total"
    with httpx.stream(
        "POST", f"{server.url}/v1/chat/completions", headers=server.auth(), timeout=60,
        json={"model": CHAT_ID, "messages": [{"role": "user", "content": "Count to 1000."}],
              "max_tokens": 400, "stream": True, "temperature": 0,
              "logit_bias": {"0": -100, "2": -100, "4": -100}},  # no early end: 400 or a hang-up
    ) as resp:  # fmt: skip
        request_id = resp.headers["x-request-id"]
        read_events_then_hang_up(resp, 6)
    row = server.final_row(request_id)
    assert row["status"] == "cancelled"
    assert 4 <= row["completion_tokens"] < 400
    first = server.metric(predicted)
    time.sleep(0.5)
    assert server.metric(predicted) == first  # the engine stopped counting


def test_deleted_key_is_rejected_on_the_next_request(server: Server) -> None:
    key = json.loads(cli(server.db, "api-keys", "create", "--level", "ADMIN", "--json"))
    client = server.client(key["secret"])
    assert client.models.list().data
    cli(server.db, "api-keys", "delete", key["id"])  # another process
    with pytest.raises(openai.AuthenticationError):
        client.models.list()


def test_meter_that_cannot_write_gives_503_and_generates_nothing(server: Server) -> None:
    predicted = server.metric("llamacpp:tokens_predicted_total")
    blocker = sqlite3.connect(server.db, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # the write lock, held past the node's busy timeout
    try:
        resp = httpx.post(
            f"{server.url}/v1/chat/completions", headers=server.auth(), timeout=60,
            json={"model": CHAT_ID, "messages": MESSAGES, "max_tokens": 4},
        )  # fmt: skip
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert resp.status_code == 503
    assert resp.json()["error"]["code"] == "meter_unavailable"
    assert server.metric("llamacpp:tokens_predicted_total") == predicted


def test_burst_usage_equals_meter_rows_equals_prometheus(server: Server) -> None:
    keys = [json.loads(cli(server.db, "api-keys", "create", "--level", "LLM", "--json"))
            for _ in range(2)]  # fmt: skip
    results: list[tuple[str, str, dict]] = []  # (key id, request id, usage)
    errors: list[BaseException] = []
    decodes_before = server.metric("llamacpp:n_decode_total")

    def one(i: int) -> None:
        key = keys[i % 2]
        headers = {"Authorization": f"Bearer {key['secret']}"}
        kind = i % 4
        try:
            if kind == 0:
                with httpx.stream(
                    "POST", f"{server.url}/v1/chat/completions", headers=headers, timeout=120,
                    json={"model": CHAT_ID, "messages": MESSAGES, "max_tokens": 8 + i,
                          "stream": True, "stream_options": {"include_usage": True}},
                ) as resp:  # fmt: skip
                    rid = resp.headers["x-request-id"]
                    data = [ln[6:] for ln in resp.iter_lines() if ln.startswith("data: ")]
                usage = json.loads(data[-2])["usage"]
            else:
                path, body = {
                    1: ("/v1/chat/completions",
                        {"model": CHAT_ID, "messages": MESSAGES, "max_tokens": 5 + i}),
                    2: ("/v1/completions", {"model": CHAT_ID, "prompt": f"Day {i}:",
                                            "max_tokens": 7}),
                    3: ("/v1/embeddings", {"model": EMBED_ID, "input": [f"text {i}", "more"]}),
                }[kind]  # fmt: skip
                resp = httpx.post(f"{server.url}{path}", headers=headers, json=body, timeout=120)
                assert resp.status_code == 200, resp.text
                rid, usage = resp.headers["x-request-id"], resp.json()["usage"]
            results.append((key["id"], rid, usage))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    assert not errors, errors
    assert len(results) == 16
    for key in keys:
        mine = [(rid, u) for kid, rid, u in results if kid == key["id"]]
        client_prompt = sum(u["prompt_tokens"] for _, u in mine)
        client_completion = sum(u.get("completion_tokens", 0) for _, u in mine)
        rows = [server.final_row(rid) for rid, _ in mine]
        assert all(r["status"] == "ok" for r in rows)
        assert sum(r["prompt_tokens"] for r in rows) == client_prompt
        assert sum(r["completion_tokens"] for r in rows) == client_completion
        status = json.loads(cli(server.db, "billing", "status", "--key", key["id"], "--json"))
        assert status["total"]["prompt_tokens"] == client_prompt
        assert status["total"]["completion_tokens"] == client_completion
        prom_prompt = sum(
            server.metric("llm_node_prompt_tokens_total", f'{{key_id="{key["id"]}",model="{m}"}}')
            for m in (CHAT_ID, EMBED_ID)
        )
        prom_completion = server.metric(
            "llm_node_completion_tokens_total", f'{{key_id="{key["id"]}",model="{CHAT_ID}"}}'
        )
        assert (prom_prompt, prom_completion) == (client_prompt, client_completion)
    # llama_decode calls: at least one per token of the longest answer, and fewer than all
    # completion tokens together, since the twelve generations started together share steps.
    decodes = server.metric("llamacpp:n_decode_total") - decodes_before
    completions = [u.get("completion_tokens", 0) for _, _, u in results]
    assert max(completions) <= decodes < sum(completions)


def test_killed_node_leaves_interrupted_rows_with_checkpointed_tokens(tmp_path: Path) -> None:
    db = tmp_path / "meter.db"
    key = json.loads(cli(db, "api-keys", "create", "--level", "LLM", "--json"))
    url, process = start_server(tmp_path, db)
    try:
        with httpx.stream(
            "POST", f"{url}/v1/completions",
            headers={"Authorization": f"Bearer {key['secret']}"}, timeout=60,
            json={"model": CHAT_ID, "prompt": "1, 2, 3,", "max_tokens": 300, "stream": True,
                  "temperature": 0, "logit_bias": {"0": -100, "2": -100, "4": -100}},
        ) as resp:  # fmt: skip
            request_id = resp.headers["x-request-id"]
            read_events_then_hang_up(resp, 40)
            os.kill(process.pid, signal.SIGKILL)
        process.wait(10)
    finally:
        if process.poll() is None:
            process.kill()
    with Meter(db) as meter:
        assert meter.request_row(request_id)["status"] == "running"
    url, process = start_server(tmp_path, db)  # recovery runs at start
    try:
        with Meter(db) as meter:
            row = meter.request_row(request_id)
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(30)
    assert row["status"] == "interrupted"
    assert row["completion_tokens"] >= 16  # the last checkpoint, at least every 16 tokens
