"""The other dialects end to end: `llm-node serve` in its own process on the real SmolLM2 GGUF,
the official `openai` SDK on `/v1/responses`, the official `anthropic` SDK on `/v1/messages`,
raw httpx for the error shapes, disconnects, `/tokenize` and `/metrics`. Every answer's usage
is checked against its meter row.

SmolLM2's own template has no tools: the registry gives it the Hermes-style ChatML template of
`tests/templates/hermes-chatml.jinja`, and the tool tests use `required` / `any` so the tiny
model must call (through the grammar). The alias `claude-*` maps Claude model names to it.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import anthropic
import httpx
import openai
import pytest

from node.config import embedded_model_path
from node.meter import Meter
from tests.node_process import cli, launch_server, stop_server

MODEL = "smollm2-tools"
THINK = "smollm2-think"  # its template opens <think> in the prompt: the output is reasoning
CLAUDE = "claude-sonnet-4-5"  # matched by the registry alias "claude-*"
N_CTX_PER_SEQ = 1024
TEMPLATES = Path(__file__).parent / "templates"
TEMPLATE = (TEMPLATES / "hermes-chatml.jinja").read_text()
THINK_TEMPLATE = (TEMPLATES / "think-chatml.jinja").read_text()
SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string", "enum": ["Paris", "London", "Tokyo"]}},
    "required": ["city"],
}
RESPONSES_TOOL = {"type": "function", "name": "get_weather", "description": "The weather in a "
                  "city.", "parameters": SCHEMA}  # fmt: skip
ANTHROPIC_TOOL = {"name": "get_weather", "description": "The weather in a city.",
                  "input_schema": SCHEMA}  # fmt: skip
ASK = "What is the weather in Paris?"
GREEDY = {"temperature": 0}


class Node:
    def __init__(self, url: str, db: Path, secret: str, process: subprocess.Popen[bytes]) -> None:
        self.url, self.db, self.secret, self.process = url, db, secret, process

    def openai(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=self.secret, max_retries=0,
                             timeout=120)  # fmt: skip

    def anthropic(self, **kwargs: str) -> anthropic.Anthropic:
        args = {"api_key": self.secret, **kwargs}
        return anthropic.Anthropic(base_url=self.url, max_retries=0, timeout=120, **args)

    def post(
        self, path: str, body: object, headers: dict[str, str] | None = None
    ) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.secret}"} if headers is None else headers
        return httpx.post(f"{self.url}{path}", json=body, headers=headers, timeout=120)

    def row(self, request_id: str) -> dict:
        with Meter(self.db) as meter:
            for _ in range(500):
                row = meter.request_row(request_id)
                if row is not None and row["status"] != "running":
                    return row
                time.sleep(0.02)
        raise AssertionError(f"no final row {request_id}")

    def rows(self) -> int:
        with Meter(self.db) as meter:
            return len(meter.billing_requests(limit=100_000))

    def metric(self, name: str, labels: str = "") -> float:
        text = httpx.get(f"{self.url}/metrics").text
        found = re.search(rf"^{re.escape(name)}{re.escape(labels)} (\S+)$", text, re.MULTILINE)
        return float(found.group(1)) if found else 0.0


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    tmp = tmp_path_factory.mktemp("dialects")
    db = tmp / "meter.db"
    secret = json.loads(cli(db, "api-keys", "create", "--level", "LLM", "--json"))["secret"]
    cli(db, "prices", "set", MODEL, "testgpu", "--prompt", "19.78", "--completion", "167.66")
    (tmp / "models.toml").write_text(
        f'[[model]]\nid = "{MODEL}"\npath = "{embedded_model_path()}"\n'
        f'n_ctx = {2 * N_CTX_PER_SEQ}\nparallel = 2\nn_threads = 1\nalias = ["claude-*"]\n'
        f"chat_template = '''{TEMPLATE}'''\n\n"
        f'[[model]]\nid = "{THINK}"\npath = "{embedded_model_path()}"\nn_ctx = 512\n'
        f"parallel = 1\nn_threads = 1\nchat_template = '''{THINK_TEMPLATE}'''\n"
    )
    url, process = launch_server(tmp, db, tmp / "models.toml")
    yield Node(url, db, secret, process)
    stop_server(process)


def _priced(row: dict) -> Decimal:
    """The row's cost recomputed from its tokens and the price set above (per 1M tokens)."""
    prompt = Decimal(row["prompt_tokens"]) * Decimal("19.78")
    return (prompt + Decimal(row["completion_tokens"]) * Decimal("167.66")) / 1_000_000


def _valid_city(arguments: str | dict) -> str:
    args = json.loads(arguments) if isinstance(arguments, str) else arguments
    assert set(args) == {"city"} and args["city"] in SCHEMA["properties"]["city"]["enum"], args
    return args["city"]


# -- Responses API (openai SDK) ------------------------------------------------------------------


def test_responses_create_usage_is_the_meter_row(node: Node) -> None:
    raw = node.openai().responses.with_raw_response.create(
        model=MODEL, input="Name three colours.", instructions="Answer briefly.",
        max_output_tokens=24, metadata={"team": "a"}, user="alice", store=False, **GREEDY,
    )  # fmt: skip
    response = raw.parse()
    assert response.id.startswith("resp_") and response.object == "response"
    assert response.status in ("completed", "incomplete")
    if response.status == "incomplete":
        assert response.incomplete_details.reason == "max_output_tokens"
    [message] = response.output
    assert message.type == "message" and message.content[0].type == "output_text"
    assert response.output_text == message.content[0].text != ""
    assert response.metadata == {"team": "a"}
    row = node.row(raw.headers["x-request-id"])
    usage = response.usage
    assert (row["endpoint"], row["user"], row["status"]) == ("responses", "alice", "ok")
    assert usage.input_tokens == row["prompt_tokens"] > 0
    assert usage.input_tokens_details.cached_tokens == row["cached_tokens"]
    assert usage.output_tokens == row["completion_tokens"] <= 24
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    assert usage.output_tokens_details.reasoning_tokens == 0
    assert Decimal(usage.model_extra["cost"]) == Decimal(row["cost"]) == _priced(row)


def test_responses_stream_events_agree_with_the_whole_response(node: Node) -> None:
    kwargs = dict(model=MODEL, input="Say hi.", max_output_tokens=200, **GREEDY)
    whole = node.openai().responses.create(**kwargs)
    with node.openai().responses.stream(**kwargs) as stream:
        events = list(stream)
        final = stream.get_final_response()
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.completed"
    for kind in ("response.output_item.added", "response.content_part.added",
                 "response.output_text.done", "response.content_part.done",
                 "response.output_item.done"):  # fmt: skip
        assert kind in kinds
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == final.output_text == whole.output_text != ""
    assert final.status == whole.status == "completed"
    row = node.row(final.id.removeprefix("resp_"))
    assert (final.usage.input_tokens, final.usage.output_tokens) == (
        row["prompt_tokens"], row["completion_tokens"])  # fmt: skip


def test_responses_function_call_round_trip(node: Node) -> None:
    client = node.openai()
    kwargs = dict(model=MODEL, tools=[RESPONSES_TOOL], parallel_tool_calls=False,
                  max_output_tokens=80, **GREEDY)  # fmt: skip
    first = client.responses.create(input=ASK, tool_choice="required", **kwargs)
    [call] = [item for item in first.output if item.type == "function_call"]
    assert call.name == "get_weather" and call.call_id and call.status == "completed"
    city = _valid_city(call.arguments)
    with client.responses.stream(input=ASK, tool_choice="required", **kwargs) as stream:
        streamed = [e for e in stream if e.type == "response.function_call_arguments.delta"]
        final = stream.get_final_response()
    assert "".join(e.delta for e in streamed) == call.arguments
    assert [i.arguments for i in final.output if i.type == "function_call"] == [call.arguments]
    history = [{"role": "user", "content": ASK}, *first.output,
               {"type": "function_call_output", "call_id": call.call_id,
                "output": json.dumps({"city": city, "sky": "sunny", "celsius": 21})}]  # fmt: skip
    raw = client.responses.with_raw_response.create(input=history, tool_choice="none", **kwargs)
    answer = raw.parse()
    assert answer.output and all(item.type == "message" for item in answer.output)
    assert answer.usage.input_tokens == node.row(raw.headers["x-request-id"])["prompt_tokens"]
    alone = client.responses.create(
        input=ASK, tool_choice="none", **{**kwargs, "max_output_tokens": 1}
    )
    assert answer.usage.input_tokens > alone.usage.input_tokens + 10  # the call and result are in


def test_responses_reasoning_is_a_reasoning_item_with_its_tokens(node: Node) -> None:
    kwargs = dict(model=THINK, input="Why is the sky blue?", max_output_tokens=12, **GREEDY)
    raw = node.openai().responses.with_raw_response.create(**kwargs)
    response = raw.parse()
    assert response.output[0].type == "reasoning"
    reasoning = response.output[0].content[0].text
    assert reasoning and response.output[0].content[0].type == "reasoning_text"
    usage = response.usage
    assert 0 < usage.output_tokens_details.reasoning_tokens <= usage.output_tokens
    assert usage.output_tokens == node.row(raw.headers["x-request-id"])["completion_tokens"]
    with node.openai().responses.stream(**kwargs) as stream:
        deltas = [e.delta for e in stream if e.type == "response.reasoning_text.delta"]
    assert "".join(deltas) == reasoning


def test_responses_json_schema_text_format(node: Node) -> None:
    schema = {"type": "object", "properties": {"colour": {"type": "string", "maxLength": 12}},
              "required": ["colour"], "additionalProperties": False}  # fmt: skip
    response = node.openai().responses.create(
        model=MODEL, input="Name a colour as JSON.", max_output_tokens=40, **GREEDY,
        text={"format": {"type": "json_schema", "name": "colour", "schema": schema}},
    )  # fmt: skip
    value = json.loads(response.output_text)
    assert set(value) == {"colour"} and isinstance(value["colour"], str)
    assert response.text.format.type == "json_schema"


def test_responses_refuses_state_it_does_not_keep(node: Node) -> None:
    for field, value in (("store", True), ("previous_response_id", "resp_1")):
        resp = node.post("/v1/responses", {"model": MODEL, "input": "hi", field: value})
        assert resp.status_code == 400, resp.text
        error = resp.json()["error"]
        assert error["param"] == field and "stateless" in error["message"]


# -- Anthropic Messages (anthropic SDK) ----------------------------------------------------------


def test_messages_create_with_x_api_key_usage_is_the_meter_row(node: Node) -> None:
    raw = node.anthropic().messages.with_raw_response.create(
        model=CLAUDE, max_tokens=24, system="Answer briefly.",
        messages=[{"role": "user", "content": "Name three colours."}],
        metadata={"user_id": "bob"}, extra_body=GREEDY,
    )  # fmt: skip
    message = raw.parse()
    assert message.type == "message" and message.role == "assistant" and message.model == MODEL
    assert message.stop_reason in ("end_turn", "max_tokens")
    assert [b.type for b in message.content] == ["text"] and message.content[0].text
    row = node.row(raw.headers["x-request-id"])
    assert (row["endpoint"], row["user"], row["status"]) == ("messages", "bob", "ok")
    usage = message.usage
    assert usage.input_tokens + usage.cache_read_input_tokens == row["prompt_tokens"]
    assert usage.cache_read_input_tokens == row["cached_tokens"]
    assert usage.output_tokens == row["completion_tokens"] <= 24
    assert Decimal(usage.model_extra["cost"]) == Decimal(row["cost"]) == _priced(row)


def test_messages_stream_agrees_with_create_and_the_meter(node: Node) -> None:
    kwargs = dict(model=MODEL, max_tokens=200, extra_body=GREEDY,
                  messages=[{"role": "user", "content": "Say hi."}])  # fmt: skip
    whole = node.anthropic().messages.create(**kwargs)
    with node.anthropic().messages.stream(**kwargs) as stream:
        events = list(stream)
        final = stream.get_final_message()
    kinds = [e.type for e in events]
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert {"content_block_start", "content_block_delta", "content_block_stop",
            "message_delta"} <= set(kinds)  # fmt: skip
    text = "".join(e.delta.text for e in events if e.type == "content_block_delta")
    assert text == final.content[0].text == whole.content[0].text != ""
    assert final.stop_reason == whole.stop_reason == "end_turn"
    row = node.row(final.id.removeprefix("msg_"))
    assert final.usage.output_tokens == row["completion_tokens"]
    assert final.usage.input_tokens + final.usage.cache_read_input_tokens == row["prompt_tokens"]


def test_count_tokens_is_the_prompt_a_message_is_billed_for_and_unmetered(node: Node) -> None:
    client = node.anthropic()
    convo = dict(model=CLAUDE, system="Be brief.", tools=[ANTHROPIC_TOOL],
                 messages=[{"role": "user", "content": ASK}])  # fmt: skip
    before = node.rows()
    counted = client.messages.count_tokens(**convo).input_tokens
    assert node.rows() == before  # free: no meter row
    raw = client.messages.with_raw_response.create(max_tokens=2, extra_body=GREEDY, **convo)
    assert counted == node.row(raw.headers["x-request-id"])["prompt_tokens"] > 0


def test_messages_tool_use_and_tool_result_round_trip(node: Node) -> None:
    # `Authorization: Bearer` instead of x-api-key: Claude Code's ANTHROPIC_AUTH_TOKEN
    client = anthropic.Anthropic(base_url=node.url, auth_token=node.secret, max_retries=0,
                                 timeout=120)  # fmt: skip
    ask = [{"role": "user", "content": ASK}]
    kwargs = dict(model=MODEL, max_tokens=80, tools=[ANTHROPIC_TOOL], extra_body=GREEDY,
                  tool_choice={"type": "any", "disable_parallel_tool_use": True})  # fmt: skip
    first = client.messages.create(messages=ask, **kwargs)
    assert first.stop_reason == "tool_use"
    [use] = [b for b in first.content if b.type == "tool_use"]
    city = _valid_city(use.input)
    with client.messages.stream(messages=ask, **kwargs) as stream:
        events = list(stream)
        final = stream.get_final_message()
    partial = "".join(e.delta.partial_json for e in events if e.type == "content_block_delta"
                      and e.delta.type == "input_json_delta")  # fmt: skip
    assert json.loads(partial) == use.input
    assert [b.input for b in final.content if b.type == "tool_use"] == [use.input]
    history = [*ask, {"role": "assistant", "content": first.content},
               {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id,
                                             "content": f"{city}: sunny, 21 C"}]}]  # fmt: skip
    kwargs["tool_choice"] = {"type": "none"}
    answer = client.messages.create(messages=history, **kwargs)
    assert answer.stop_reason in ("end_turn", "max_tokens")
    assert all(b.type == "text" for b in answer.content)


def test_thinking_blocks_stream_like_the_whole_message(node: Node) -> None:
    kwargs = dict(model=THINK, max_tokens=12, extra_body=GREEDY,
                  thinking={"type": "enabled", "budget_tokens": 1024},
                  messages=[{"role": "user", "content": "Why is the sky blue?"}])  # fmt: skip
    message = node.anthropic().messages.create(**kwargs)
    assert message.content[0].type == "thinking" and message.content[0].thinking
    assert message.stop_reason == "max_tokens"
    with node.anthropic().messages.stream(**kwargs) as stream:
        events = list(stream)
    thinking = [e.delta.thinking for e in events if e.type == "content_block_delta"
                and e.delta.type == "thinking_delta"]  # fmt: skip
    assert "".join(thinking) == message.content[0].thinking


def test_stop_sequence_is_reported(node: Node) -> None:
    message = node.anthropic().messages.create(
        model=MODEL, max_tokens=60, stop_sequences=["e"], extra_body=GREEDY,
        messages=[{"role": "user", "content": "Say hello there."}],
    )  # fmt: skip
    assert (message.stop_reason, message.stop_sequence) == ("stop_sequence", "e")
    assert "e" not in "".join(b.text for b in message.content)


# -- errors in each dialect's shape ------------------------------------------------------------

LONG = "word " * (N_CTX_PER_SEQ + 50)
RESPONSES_CASES = {
    "unknown model": ({"model": "nope", "input": "hi"}, 404, "invalid_request_error"),
    "over-long prompt": ({"model": MODEL, "input": LONG}, 400, "invalid_request_error"),
    "bad body": (
        {"model": MODEL, "input": "hi", "max_output_tokens": "x"},
        400,
        "invalid_request_error",
    ),
}
MESSAGES_CASES = {
    "unknown model": (
        {"model": "nope", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]},
        404,
        "not_found_error",
    ),
    "over-long prompt": (
        {"model": MODEL, "max_tokens": 4, "messages": [{"role": "user", "content": LONG}]},
        400,
        "invalid_request_error",
    ),
    "bad body": (
        {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]},
        400,
        "invalid_request_error",
    ),
}


@pytest.mark.parametrize("case", RESPONSES_CASES)
def test_responses_errors_are_openai_shaped(node: Node, case: str) -> None:
    body, status, kind = RESPONSES_CASES[case]
    resp = node.post("/v1/responses", body)
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert error["type"] == kind and error["message"]
    assert resp.headers["x-request-id"]
    if case == "over-long prompt":
        assert (error["code"], error["param"]) == ("context_length_exceeded", "input")
    if case == "bad body":
        assert error["param"] == "max_output_tokens"


@pytest.mark.parametrize("case", MESSAGES_CASES)
def test_messages_errors_are_anthropic_shaped(node: Node, case: str) -> None:
    body, status, kind = MESSAGES_CASES[case]
    resp = node.post("/v1/messages", body, {"x-api-key": node.secret})
    assert resp.status_code == status, resp.text
    assert resp.json()["type"] == "error" and resp.json()["error"]["type"] == kind
    assert "max_tokens" in resp.json()["error"]["message"] or case != "bad body"
    assert resp.headers["x-request-id"]


def test_bad_keys_in_each_dialect(node: Node) -> None:
    with pytest.raises(anthropic.AuthenticationError) as caught:
        node.anthropic(api_key="llmn_wrong").messages.create(
            model=MODEL, max_tokens=4, messages=[{"role": "user", "content": "hi"}]
        )
    assert caught.value.body["error"]["type"] == "authentication_error"
    with pytest.raises(anthropic.AuthenticationError):
        node.anthropic(api_key="llmn_wrong").messages.count_tokens(
            model=MODEL, messages=[{"role": "user", "content": "hi"}]
        )
    bad = openai.OpenAI(base_url=f"{node.url}/v1", api_key="llmn_wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as raised:
        bad.responses.create(model=MODEL, input="hi")
    assert raised.value.response.json()["error"]["type"] == "authentication_error"  # as chat
    for path in ("/tokenize", "/detokenize"):
        assert node.post(path, {"content": "hi", "tokens": [1]}, {}).status_code == 401


# -- disconnects ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/responses", {"model": MODEL, "input": "Count to 1000.", "max_output_tokens": 400,
                           "stream": True}),
        ("/v1/messages", {"model": MODEL, "max_tokens": 400, "stream": True,
                          "messages": [{"role": "user", "content": "Count to 1000."}]}),
    ],
)  # fmt: skip
def test_disconnect_mid_stream_meters_cancelled(node: Node, path: str, body: dict) -> None:
    body = {**body, "temperature": 0}
    headers = {"Authorization": f"Bearer {node.secret}"}
    with httpx.stream("POST", f"{node.url}{path}", json=body, headers=headers,
                      timeout=60) as resp:  # fmt: skip
        request_id = resp.headers["x-request-id"]
        deltas = 0
        for line in resp.iter_lines():
            deltas += line.startswith("data: ") and "delta" in line
            if deltas >= 6:
                break
    row = node.row(request_id)
    assert row["status"] == "cancelled"
    assert 4 <= row["completion_tokens"] < 400


# -- tokenize ------------------------------------------------------------------------------------


def test_tokenize_then_detokenize_round_trips(node: Node) -> None:
    text = "Hello, wörld! <|im_start|> 12345 😀"
    tokens = node.post("/tokenize", {"content": text}).json()["tokens"]
    assert tokens and all(isinstance(t, int) for t in tokens)
    assert node.post("/detokenize", {"tokens": tokens}).json() == {"content": text}
    pieces = node.post("/tokenize", {"content": text, "with_pieces": True}).json()["tokens"]
    assert [p["id"] for p in pieces] == tokens
    joined = b"".join(p["piece"].encode() if isinstance(p["piece"], str) else bytes(p["piece"])
                      for p in pieces)  # fmt: skip
    assert joined.decode() == text
    bad = node.post("/detokenize", {"tokens": [10**7]})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "tokens"


# -- metrics -------------------------------------------------------------------------------------


def test_metrics_count_processed_prompt_tokens_and_every_dialect(node: Node) -> None:
    processed = node.metric("llamacpp:prompt_tokens_total")
    cached = node.metric("llamacpp:prompt_tokens_cached_total")
    body = {"model": MODEL, "input": "The same prompt twice, please.", "max_output_tokens": 2}
    rows = [node.row(node.post("/v1/responses", body).headers["x-request-id"]) for _ in range(2)]
    assert rows[1]["cached_tokens"] > 0  # the second one reused the first one's prefix
    fresh = sum(r["prompt_tokens"] - r["cached_tokens"] for r in rows)
    assert node.metric("llamacpp:prompt_tokens_total") - processed == fresh
    assert node.metric("llamacpp:prompt_tokens_cached_total") - cached == sum(
        r["cached_tokens"] for r in rows
    )
    message = {"model": MODEL, "max_tokens": 2, "messages": [{"role": "user", "content": "Hi"}]}
    assert node.post("/v1/messages", message).status_code == 200
    for endpoint in ("responses", "messages"):
        labels = f'{{endpoint="{endpoint}",model="{MODEL}"}}'
        assert node.metric("llm_node_endpoint_prompt_tokens_total", labels) > 0, endpoint
    assert node.metric("llamacpp:n_tokens_max") >= rows[0]["prompt_tokens"]
    assert node.metric("llamacpp:n_busy_slots_per_decode") >= 1
    assert 0 < node.metric("llamacpp:kv_cache_usage_ratio") <= 1
