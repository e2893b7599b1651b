"""Agents' features end to end: `llm-node serve` in its own process on the real SmolLM2 GGUF,
the official `openai` SDK. SmolLM2's own template has no tools, so the registry gives the model a
Hermes-style ChatML template (`tests/templates/hermes-chatml.jinja`): `tool_choice` "required"
and a named function make the tiny model emit calls through a grammar. A second template opens
`<think>` in the prompt, so the output is reasoning.

Also: logprobs (chat and completions, streamed and not), `n` > 1 with the prompt billed once,
token-array prompts and embedding inputs, `json_object` with a schema, and the 400s of bad input.
"""

from __future__ import annotations

import json
import math
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from node.config import embedded_model_path
from node.meter import Meter
from tests.node_process import cli, launch_server, stop_server

CHAT = "smollm2-tools"
THINK = "smollm2-think"
EMBED = "smollm2-embed"
TEMPLATES = Path(__file__).parent / "templates"
TEMPLATE = (TEMPLATES / "hermes-chatml.jinja").read_text()
THINK_TEMPLATE = (TEMPLATES / "think-chatml.jinja").read_text()  # opens <think> in the prompt
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "enum": ["Paris", "London", "Tokyo"]},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "The local time in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "enum": ["Paris", "London", "Tokyo"]}},
            "required": ["city"],
        },
    },
}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


class Node:
    def __init__(self, url: str, db: Path, secret: str, process: subprocess.Popen[bytes]) -> None:
        self.url, self.db, self.secret, self.process = url, db, secret, process

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=self.secret, max_retries=0,
                             timeout=120)  # fmt: skip

    def post(self, path: str, body: dict) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.secret}"}
        return httpx.post(f"{self.url}{path}", json=body, headers=headers, timeout=120)

    def row(self, request_id: str) -> dict:
        with Meter(self.db) as meter:
            for _ in range(200):
                row = meter.request_row(request_id)
                if row is not None and row["status"] != "running":
                    return row
                time.sleep(0.02)
        raise AssertionError(f"no final row {request_id}")


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    tmp = tmp_path_factory.mktemp("agents")
    db = tmp / "meter.db"
    secret = json.loads(cli(db, "api-keys", "create", "--level", "LLM", "--json"))["secret"]
    gguf = embedded_model_path()
    (tmp / "models.toml").write_text(
        # exact batching: n choices must each sample what the same request alone would
        f'[[model]]\nid = "{CHAT}"\npath = "{gguf}"\nn_ctx = 4096\nparallel = 4\n'
        f"n_threads = 1\nbatching = 'exact'\nchat_template = '''{TEMPLATE}'''\n\n"
        f'[[model]]\nid = "{THINK}"\npath = "{gguf}"\nn_ctx = 1024\nparallel = 1\n'
        f"n_threads = 1\nchat_template = '''{THINK_TEMPLATE}'''\n\n"
        f'[[model]]\nid = "{THINK}-raw"\npath = "{gguf}"\nn_ctx = 512\nparallel = 1\n'
        f"n_threads = 1\nreasoning_format = 'none'\nchat_template = '''{THINK_TEMPLATE}'''\n\n"
        f'[[model]]\nid = "{EMBED}"\npath = "{gguf}"\nn_ctx = 512\nparallel = 1\n'
        f"embeddings = true\nn_threads = 1\n"
    )
    url, process = launch_server(tmp, db, tmp / "models.toml")
    yield Node(url, db, secret, process)
    stop_server(process)


def _valid_call(name: str, arguments: str) -> dict:
    """The arguments parse and match the tool's schema (enums, required keys, nothing else)."""
    tool = {"get_weather": WEATHER, "get_time": TIME}[name]["function"]
    args = json.loads(arguments)
    props = tool["parameters"]["properties"]
    assert set(args) <= set(props) and set(tool["parameters"]["required"]) <= set(args), args
    for key, value in args.items():
        assert value in props[key]["enum"], (key, value)
    return args


# -- tools ---------------------------------------------------------------------------------------


def test_required_tool_call_parses_validates_and_finishes_with_tool_calls(node: Node) -> None:
    raw = node.client().chat.completions.with_raw_response.create(
        model=CHAT, messages=ASK, tools=[WEATHER, TIME], tool_choice="required",
        parallel_tool_calls=False, temperature=0, max_tokens=80,
    )  # fmt: skip
    completion = raw.parse()
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    [call] = choice.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_")
    _valid_call(call.function.name, call.function.arguments)
    row = node.row(raw.headers["x-request-id"])
    assert row["completion_tokens"] == completion.usage.completion_tokens > 0


def test_named_tool_choice_calls_that_function(node: Node) -> None:
    completion = node.client().chat.completions.create(
        model=CHAT, messages=ASK, tools=[WEATHER, TIME], temperature=0, max_tokens=80,
        tool_choice={"type": "function", "function": {"name": "get_time"}},
    )  # fmt: skip
    calls = completion.choices[0].message.tool_calls
    assert calls and all(c.function.name == "get_time" for c in calls)
    for call in calls:
        _valid_call(call.function.name, call.function.arguments)
    assert completion.choices[0].finish_reason == "tool_calls"


def test_streamed_tool_call_deltas_concatenate_to_the_non_streamed_calls(node: Node) -> None:
    kwargs = dict(model=CHAT, messages=ASK, tools=[WEATHER, TIME], tool_choice="required",
                  temperature=0, max_tokens=120, seed=7)  # fmt: skip
    whole = node.client().chat.completions.create(**kwargs)
    calls: dict[int, dict] = {}
    reasons = []
    for chunk in node.client().chat.completions.create(stream=True, **kwargs):
        for choice in chunk.choices:
            reasons.append(choice.finish_reason)
            for delta in choice.delta.tool_calls or ():
                call = calls.setdefault(delta.index, {"id": None, "name": "", "arguments": ""})
                if delta.id:
                    assert call["id"] is None  # id, type and name come once, first
                    call["id"], call["name"] = delta.id, delta.function.name
                    assert delta.type == "function"
                call["arguments"] += delta.function.arguments or ""
    expected = whole.choices[0].message.tool_calls
    assert [calls[i]["name"] for i in sorted(calls)] == [c.function.name for c in expected]
    assert [calls[i]["arguments"] for i in sorted(calls)] == [
        c.function.arguments for c in expected
    ]
    assert reasons[-1] == whole.choices[0].finish_reason == "tool_calls"


def test_full_agent_round_trip_through_the_sdk(node: Node) -> None:
    client = node.client()
    first = client.chat.completions.create(
        model=CHAT, messages=ASK, tools=[WEATHER], tool_choice="required",
        parallel_tool_calls=False, temperature=0, max_tokens=80,
    )  # fmt: skip
    call = first.choices[0].message.tool_calls[0]
    history = [
        *ASK,
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": "18 degrees and sunny"},
    ]
    final = client.chat.completions.create(
        model=CHAT, messages=history, tools=[WEATHER], tool_choice="none", temperature=0,
        max_tokens=40,
    )  # fmt: skip
    choice = final.choices[0]
    assert choice.message.tool_calls is None and choice.message.content
    assert choice.finish_reason in ("stop", "length")
    # The call and its result reached the prompt: they cost tokens beyond the question's.
    base = client.chat.completions.create(
        model=CHAT, messages=ASK, tools=[WEATHER], tool_choice="none", max_tokens=1
    )
    assert final.usage.prompt_tokens > base.usage.prompt_tokens + 20


def test_auto_without_a_call_is_plain_text(node: Node) -> None:
    completion = node.client().chat.completions.create(
        model=CHAT, messages=[{"role": "user", "content": "Say hi."}], tools=[WEATHER],
        tool_choice="auto", temperature=0, max_tokens=24,
    )  # fmt: skip
    choice = completion.choices[0]
    if choice.message.tool_calls:  # the model may call; then the call must be valid
        for call in choice.message.tool_calls:
            _valid_call(call.function.name, call.function.arguments)
        assert choice.finish_reason in ("tool_calls", "length")
    else:
        assert choice.message.content and choice.finish_reason in ("stop", "length")


def test_a_think_template_splits_reasoning_and_counts_its_tokens(node: Node) -> None:
    kwargs = dict(model=THINK, messages=[{"role": "user", "content": "Hi!"}], temperature=0,
                  max_tokens=16)  # fmt: skip
    whole = node.client().chat.completions.create(**kwargs)
    message = whole.choices[0].message
    reasoning = message.model_extra["reasoning_content"]
    assert reasoning and not message.content  # no </think> from this tiny model: all reasoning
    assert whole.usage.completion_tokens_details.reasoning_tokens == whole.usage.completion_tokens
    streamed = "".join(
        (choice.delta.model_extra or {}).get("reasoning_content") or ""
        for chunk in node.client().chat.completions.create(stream=True, **kwargs)
        for choice in chunk.choices
    )
    assert streamed == reasoning
    raw = node.post("/v1/chat/completions", {**kwargs, "reasoning_format": "none"}).json()
    raw_message = raw["choices"][0]["message"]
    assert raw_message["content"].strip() == reasoning.strip()  # kept, verbatim, in the content
    assert "reasoning_content" not in raw_message
    # The registry's reasoning_format = "none" does the same for every request of its model.
    by_registry = node.client().chat.completions.create(**{**kwargs, "model": f"{THINK}-raw"})
    assert by_registry.choices[0].message.content.strip() == reasoning.strip()


# -- logprobs, n, inputs ----------------------------------------------------------------------


def test_chat_logprobs_greedy_top_one_sorted_and_streamed_equal(node: Node) -> None:
    kwargs = dict(model=CHAT, messages=[{"role": "user", "content": "Name a colour."}],
                  temperature=0, max_tokens=10, logprobs=True, top_logprobs=3)  # fmt: skip
    whole = node.client().chat.completions.create(**kwargs)
    content = whole.choices[0].logprobs.content
    assert len(content) == whole.usage.completion_tokens
    assert "".join(t.token for t in content) == whole.choices[0].message.content
    for token in content:
        tops = [t.logprob for t in token.top_logprobs]
        assert len(tops) == 3 and tops == sorted(tops, reverse=True)
        assert token.top_logprobs[0].token == token.token and tops[0] == token.logprob
        assert math.exp(token.logprob) <= 1.0 and bytes(token.bytes).decode() == token.token
    streamed = []
    for chunk in node.client().chat.completions.create(stream=True, **kwargs):
        for choice in chunk.choices:
            if choice.logprobs and choice.logprobs.content:
                streamed += choice.logprobs.content
    assert [(t.token, t.logprob) for t in streamed] == [(t.token, t.logprob) for t in content]


def test_completions_logprobs_n(node: Node) -> None:
    body = {"model": CHAT, "prompt": "The sky is", "max_tokens": 6, "temperature": 0,
            "logprobs": 2}  # fmt: skip
    choice = node.post("/v1/completions", body).json()["choices"][0]
    lp = choice["logprobs"]
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == 6
    assert "".join(lp["tokens"]) == choice["text"]
    assert lp["text_offset"][0] == 0
    for token, value, top in zip(lp["tokens"], lp["token_logprobs"], lp["top_logprobs"],
                                 strict=True):  # fmt: skip
        assert len(top) <= 2 and max(top.values()) == value and top[token] == value


def test_n_choices_with_a_seed_bill_the_prompt_once(node: Node) -> None:
    raw = node.client().chat.completions.with_raw_response.create(
        model=CHAT, messages=[{"role": "user", "content": "Tell me a story."}], n=4, seed=11,
        temperature=1.0, max_tokens=12,
    )  # fmt: skip
    completion = raw.parse()
    assert sorted(c.index for c in completion.choices) == [0, 1, 2, 3]
    single = node.client().chat.completions.create(
        model=CHAT, messages=[{"role": "user", "content": "Tell me a story."}], seed=11,
        temperature=1.0, max_tokens=12,
    )  # fmt: skip
    assert completion.usage.prompt_tokens == single.usage.prompt_tokens  # billed once
    assert completion.choices[0].message.content == single.choices[0].message.content
    assert len({c.message.content for c in completion.choices}) > 1  # seeds differ per choice
    row = node.row(raw.headers["x-request-id"])
    assert row["prompt_tokens"] == single.usage.prompt_tokens
    assert row["completion_tokens"] == completion.usage.completion_tokens
    assert completion.usage.completion_tokens == 4 * 12 or all(
        c.finish_reason == "stop" for c in completion.choices if c.finish_reason != "length"
    )


def test_token_array_prompts_and_embedding_inputs(node: Node) -> None:
    text = node.post("/v1/completions", {"model": CHAT, "prompt": "The sky is", "max_tokens": 5,
                                         "temperature": 0}).json()  # fmt: skip
    ids = httpx.post(  # the same prompt as token ids: same tokens in, same text out
        f"{node.url}/v1/completions",
        json={"model": CHAT, "prompt": [[504, 6376, 314]], "max_tokens": 5, "temperature": 0},
        headers={"Authorization": f"Bearer {node.secret}"}, timeout=120,
    ).json()  # fmt: skip
    assert ids["usage"]["prompt_tokens"] == text["usage"]["prompt_tokens"] == 3
    assert ids["choices"][0]["text"] == text["choices"][0]["text"] != ""
    client = node.client()
    by_ids = client.embeddings.create(model=EMBED, input=[[504, 6376, 314], [504]])
    by_text = client.embeddings.create(model=EMBED, input="The sky is")
    assert len(by_ids.data) == 2 and by_ids.usage.prompt_tokens == 4
    assert by_ids.data[0].embedding == pytest.approx(by_text.data[0].embedding)
    one = client.embeddings.create(model=EMBED, input=[504, 6376, 314])  # one token list
    assert len(one.data) == 1 and one.data[0].embedding == pytest.approx(by_text.data[0].embedding)


def test_json_object_with_a_schema_is_constrained_to_it(node: Node) -> None:
    schema = {"type": "object", "properties": {"colour": {"type": "string",
              "enum": ["red", "green"]}}, "required": ["colour"]}  # fmt: skip
    completion = node.client().chat.completions.create(
        model=CHAT, messages=[{"role": "user", "content": "Pick a colour as JSON."}],
        response_format={"type": "json_object", "schema": schema},  # type: ignore[typeddict-unknown-key]
        temperature=0, max_tokens=40,
    )  # fmt: skip
    assert json.loads(completion.choices[0].message.content)["colour"] in ("red", "green")


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
         "tool_choice"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters":
          {"type": "no-such-type"}}}], "tool_choice": "required"}, "tools"),
        ({"messages": [*ASK, {"role": "tool", "tool_call_id": "call_x", "content": "1"}]},
         "messages[1].tool_call_id"),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"n": 5}, "n"),
    ],
)  # fmt: skip
def test_bad_agent_input_is_400_naming_the_param(node: Node, body: dict, param: str) -> None:
    resp = node.post("/v1/chat/completions", {"model": CHAT, "messages": ASK, **body})
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param


def test_token_ids_outside_the_vocabulary_are_400(node: Node) -> None:
    for path, body, param in [
        ("/v1/completions", {"model": CHAT, "prompt": [1, 10**6]}, "prompt"),
        ("/v1/embeddings", {"model": EMBED, "input": [[1, 10**6]]}, "input"),
    ]:
        resp = node.post(path, body)
        assert resp.status_code == 400 and resp.json()["error"]["param"] == param, resp.text
