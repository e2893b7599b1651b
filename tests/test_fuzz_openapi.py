"""A bounded schemathesis run over the node's own `/openapi.json`, against `llm-node serve` on the
real model: no 5xx, answers match the documented schemas, requests the document allows are
answered 200, requests it forbids are refused with a 4xx, and the server is alive at the end.

Two documents: the node's own, for the negative (schema-violating) cases, and a pinned copy for
the positive ones. The pins only narrow what a single node cannot know from its schema (its
model ids, its vocabulary size, which JSON schemas its grammar converter takes) and keep each
case fast (at most 4 completion tokens, short texts); every pinned case must then be a 200.
Fixed seed, no shrinking: a failure is reported with its case, never chased.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    positive_data_acceptance,
    response_schema_conformance,
    status_code_conformance,
)

from node.meter import Meter
from tests.node_process import CHAT_ID, EMBED_ID, N_EMBD, cli, start_server, stop_server

SEED = 20261202
MAX_TOKENS = 4
# A random character can take 4 tokens (one per UTF-8 byte): the pinned lengths below keep every
# prompt inside N_CTX (embeddings: inside the embedding model's 512).
N_CTX = 4096
# Cases per operation; the generation routes get the most (they reach the engine).
POSITIVE = {"/v1/chat/completions": 150, "/v1/completions": 60, "/v1/embeddings": 30,
            "/v1/responses": 40, "/v1/messages": 40, "/v1/messages/count_tokens": 20}  # fmt: skip
NEGATIVE = {"/v1/chat/completions": 100, "/v1/completions": 50, "/v1/embeddings": 30,
            "/v1/responses": 40, "/v1/messages": 40, "/v1/messages/count_tokens": 20}  # fmt: skip
OTHER = 10  # each GET route, both modes
GOOD_SCHEMAS = [
    {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]},
    {"type": "string", "maxLength": 8},
    {"type": "array", "items": {"type": "boolean"}, "maxItems": 3},
    {"enum": ["red", "green", "blue"]},
]
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
CONFIG = {
    "checks": {"positive_data_acceptance": {"expected-statuses": ["200"]}},
    "output": {"sanitization": {"enabled": False}},  # it hides `max_tokens` ("token")
}


@dataclass
class Node:
    url: str
    db: Path
    secret: str
    process: Any
    doc: dict[str, Any]
    cases: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    tmp = tmp_path_factory.mktemp("fuzz")
    db = tmp / "meter.db"
    key = json.loads(cli(db, "api-keys", "create", "--level", "LLM", "--json"))
    url, process = start_server(tmp, db, parallel=2, n_ctx_per_seq=N_CTX)
    doc = httpx.get(f"{url}/openapi.json").json()
    try:
        yield Node(url, db, key["secret"], process, doc)
    finally:
        stop_server(process)


def _pin_models(doc: dict[str, Any]) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    schemas = doc["components"]["schemas"]
    for name in ("ChatCompletionRequest", "CompletionRequest"):
        schemas[name]["properties"]["model"] = {"const": CHAT_ID}
    schemas["EmbeddingRequest"]["properties"]["model"] = {"const": EMBED_ID}
    for name in ("ResponsesRequest", "MessagesRequest", "CountTokensRequest"):
        schemas[name]["properties"]["model"] = {"const": CHAT_ID}
    for name in ("TokenizeRequest", "DetokenizeRequest"):
        schemas[name]["properties"]["model"] = {"enum": [CHAT_ID, None]}
    return doc


def _alternatives(schema: dict[str, Any]) -> list[dict[str, Any]]:
    """The leaves of nested `anyOf` / `oneOf`."""
    inner = schema.get("oneOf", schema.get("anyOf"))
    if inner is None:
        return [schema]
    return [leaf for alt in inner for leaf in _alternatives(alt)]


def _short(schema: dict[str, Any], n: int, items: int = 4) -> None:
    """Every string alternative of `schema` at most `n` characters, every list `items` long."""
    for alt in _alternatives(schema):
        if alt.get("type") == "string":
            alt["maxLength"] = n
        if alt.get("type") == "array":
            alt["maxItems"] = min(alt.get("maxItems", items), items)
            if alt["items"].get("type") == "string":
                alt["items"]["maxLength"] = n


GOOD_TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "parameters": GOOD_SCHEMAS[0]}},
    {"type": "function", "function": {"name": "ping", "description": "No arguments."}},
]
_NULL = {"type": "null"}


def _pin_agent_fields(schemas: dict[str, Any]) -> None:
    """What one node's schema cannot say about the agent fields: `n` times the prompts within
    its `parallel` (2), token ids within the vocabulary, tools it can make a grammar of, tool
    results answering a call, top_logprobs only with logprobs, template variables it knows."""
    chat = schemas["ChatCompletionRequest"]["properties"]
    chat["n"] = {"anyOf": [{"type": "integer", "minimum": 1, "maximum": 2}, _NULL]}
    chat["tools"] = {"anyOf": [{"type": "array", "items": {"enum": GOOD_TOOLS}, "maxItems": 2,
                                "uniqueItems": True}, _NULL]}  # fmt: skip
    chat["tool_choice"] = {"enum": ["none", "auto", None]}
    chat["top_logprobs"] = _NULL
    chat["chat_template_kwargs"] = {"anyOf": [
        {"type": "object", "properties": {"enable_thinking": {"type": "boolean"}},
         "additionalProperties": False}, _NULL]}  # fmt: skip
    items = chat["messages"]["items"]["oneOf"]
    chat["messages"]["items"]["oneOf"] = [m for m in items if "ToolMessage" not in m["$ref"]]
    schemas["CalledFunction"]["properties"]["arguments"] = {"enum": ["{}", '{"a": 1}']}
    schemas["JsonObjectFormat"]["properties"]["schema"] = {"enum": [*GOOD_SCHEMAS, None]}
    completions = schemas["CompletionRequest"]["properties"]
    completions["n"] = {"anyOf": [{"const": 1}, _NULL]}
    for name, alts in (("prompt", completions["prompt"]),
                        ("input", schemas["EmbeddingRequest"]["properties"]["input"])):  # fmt: skip
        for alt in _alternatives(alts):
            if alt.get("type") != "array":
                continue
            alt["maxItems"] = min(alt.get("maxItems", 2), 2)  # two prompts: two slots
            inner = alt["items"]
            if inner.get("type") == "integer":
                inner["maximum"] = 49151  # SmolLM2's vocabulary
            if inner.get("type") == "array":
                inner["items"]["maximum"] = 49151
                inner["maxItems"] = 50
            if name == "prompt" and inner.get("type") == "integer":
                alt["maxItems"] = 50


def _pin_dialects(schemas: dict[str, Any]) -> None:
    """The Responses, Messages and tokenize requests, narrowed like chat: few short items, at
    most MAX_TOKENS, only tools the grammar takes, no tool results that answer no call."""
    limit = {"type": "integer", "minimum": 1, "maximum": MAX_TOKENS}
    responses = schemas["ResponsesRequest"]["properties"]
    responses["max_output_tokens"] = limit
    schemas["ResponsesRequest"].setdefault("required", []).append("max_output_tokens")
    _short(responses["input"], 60, items=3)
    items = responses["input"]["oneOf"][1]["items"]
    items["oneOf"] = [i for i in items["oneOf"] if "Function" not in i["$ref"]]
    responses["instructions"] = {"anyOf": [{"type": "string", "maxLength": 60}, _NULL]}
    tools = [{"type": "function", **t["function"]} for t in GOOD_TOOLS]
    responses["tools"] = {"anyOf": [{"type": "array", "items": {"enum": tools}, "maxItems": 2,
                                     "uniqueItems": True}, _NULL]}  # fmt: skip
    responses["tool_choice"] = {"enum": ["none", "auto", None]}
    schemas["TextFormatJsonSchema"]["properties"]["schema"] = {"enum": GOOD_SCHEMAS}
    for name in ("MessageItem", "FunctionCallOutputItem"):
        _short(schemas[name]["properties"].get("content", {}), 60, items=3)
    for name in ("InputText", "OutputText", "SummaryText", "ReasoningText", "TextBlock"):
        schemas[name]["properties"]["text"]["maxLength"] = 60
    schemas["ThinkingBlock"]["properties"]["thinking"]["maxLength"] = 60
    anthropic_tools = [{"name": t["function"]["name"], "input_schema": GOOD_SCHEMAS[0]}
                       for t in GOOD_TOOLS]  # fmt: skip
    for name in ("MessagesRequest", "CountTokensRequest"):
        props = schemas[name]["properties"]
        props["messages"]["maxItems"] = 4
        props["tools"] = {"anyOf": [{"type": "array", "items": {"enum": anthropic_tools},
                                     "maxItems": 2, "uniqueItems": True}, _NULL]}  # fmt: skip
        props["tool_choice"] = _NULL
        _short(props["system"], 60, items=2)
    content = schemas["InputMessage"]["properties"]["content"]
    _short(content, 60, items=3)
    blocks = content["oneOf"][1]["items"]
    blocks["oneOf"] = [b for b in blocks["oneOf"] if "Tool" not in b["$ref"]]
    messages = schemas["MessagesRequest"]["properties"]
    messages["max_tokens"] = limit
    _short(messages["stop_sequences"], 20)
    schemas["TokenizeRequest"]["properties"]["content"]["maxLength"] = 200
    detokenize = schemas["DetokenizeRequest"]["properties"]["tokens"]
    detokenize["items"]["maximum"] = 49151
    detokenize["maxItems"] = 50


def pinned(doc: dict[str, Any]) -> dict[str, Any]:
    """The positive document: the node's own, narrowed as the module docstring says."""
    doc = _pin_models(doc)
    schemas = doc["components"]["schemas"]
    for name in ("ChatCompletionRequest", "CompletionRequest"):
        props = schemas[name]["properties"]
        props["max_tokens"] = {"type": "integer", "minimum": 1, "maximum": MAX_TOKENS}
        schemas[name].setdefault("required", []).append("max_tokens")
        props["logit_bias"]["anyOf"][0]["patternProperties"] = {
            "^(0|[1-9][0-9]{0,3})$": {"type": "number", "minimum": -100, "maximum": 100}
        }  # SmolLM2's vocabulary has 49,152 tokens
        props["logit_bias"]["anyOf"][0]["maxProperties"] = 8
        _short(props["stop"], 20)
    chat = schemas["ChatCompletionRequest"]["properties"]
    chat["max_completion_tokens"] = {"type": "integer", "minimum": 1, "maximum": MAX_TOKENS}
    chat["messages"]["maxItems"] = 4
    schemas["JsonSchema"]["properties"]["schema"] = {"enum": GOOD_SCHEMAS}
    for role in ("System", "Developer", "User", "Assistant", "Tool"):
        _short(schemas[f"{role}Message"]["properties"]["content"], 60, items=3)
    schemas["TextPart"]["properties"]["text"]["maxLength"] = 60
    _short(schemas["CompletionRequest"]["properties"]["prompt"], 300)
    embed = schemas["EmbeddingRequest"]["properties"]
    _short(embed["input"], 100)
    embed["dimensions"] = {"anyOf": [{"const": N_EMBD}, {"type": "null"}]}
    _pin_agent_fields(schemas)
    _pin_dialects(schemas)
    one_model = doc["paths"]["/v1/models/{model_id}"]["get"]["parameters"][0]
    one_model["schema"] = {"enum": [CHAT_ID, EMBED_ID]}
    return doc


def _fuzz(
    node: Node,
    operation: Any,
    mode: GenerationMode,
    examples: int,
    checks: list[Any],
    failures: list[str],
) -> None:
    label = f"{mode.value} {operation.label}"
    headers = {"Authorization": f"Bearer {node.secret}"}

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=examples,
        derandomize=True,  # with database=None: the same cases every run
        database=None,
        deadline=None,
        phases=[Phase.generate],  # no shrinking: report, never chase
        suppress_health_check=list(HealthCheck),
    )
    def one(case: Any) -> None:
        node.cases[label] = node.cases.get(label, 0) + 1
        body = case.body
        limits = {"max_tokens", "max_completion_tokens"}
        generates = operation.path in ("/v1/chat/completions", "/v1/completions")
        responses = operation.path == "/v1/responses" and isinstance(body, dict)
        if responses and body.get("max_output_tokens") is None:
            body["max_output_tokens"] = MAX_TOKENS  # as below: a null limit is never the flaw
        if generates and isinstance(body, dict) and all(body.get(k) is None for k in limits):
            # A negative case whose flaw lies elsewhere (or one that turned out valid) must not
            # generate a whole context: an absent or null limit (both valid) cannot be the
            # flaw, so setting it keeps the case what it was.
            body["max_tokens"] = MAX_TOKENS
        if isinstance(body, dict):
            for key in (*limits, "max_output_tokens"):
                value = body.get(key)
                if isinstance(value, int | float) and value > MAX_TOKENS and value % 1 == 0:
                    # A large whole number is a valid limit (the node takes 2534.0 as 2534): as
                    # above, it is never the flaw, and generating thousands of tokens per case
                    # would only time the case out.
                    body[key] = MAX_TOKENS
        try:
            case.call_and_validate(base_url=node.url, headers=headers, checks=checks, timeout=60)
        except (Exception, BaseExceptionGroup) as exc:  # collected: hypothesis goes on
            reason = " | ".join(line.strip() for line in str(exc).splitlines() if line.strip())
            failures.append(f"{label} {json.dumps(case.body, default=str)[:400]}: {reason[:400]}")

    one()


def _run(
    node: Node,
    doc: dict[str, Any],
    mode: GenerationMode,
    budget: dict[str, int],
    failures: list[str],
) -> None:
    config = SchemathesisConfig.from_dict(CONFIG)
    schema = schemathesis.openapi.from_dict(doc, config=config)
    checks = [*CHECKS, positive_data_acceptance if mode.is_positive else negative_data_rejection]
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.path.startswith("/admin"):
            # The admin API takes an ADMIN key and ids that exist (random ones are 404s);
            # tests/test_api_admin.py covers it, this run's key is an LLM key.
            continue
        if not mode.is_positive and not [*operation.body, *operation.path_parameters]:
            continue  # nothing to get wrong: there is no negative case
        began = time.monotonic()
        _fuzz(node, operation, mode, budget.get(operation.path, OTHER), checks, failures)
        node.seconds[f"{mode.value} {operation.label}"] = round(time.monotonic() - began, 1)


def test_schema_driven_fuzzing_finds_no_mismatch_and_no_crash(node: Node) -> None:
    began = time.monotonic()
    failures: list[str] = []
    _run(node, pinned(node.doc), GenerationMode.POSITIVE, POSITIVE, failures)
    _run(node, _pin_models(node.doc), GenerationMode.NEGATIVE, NEGATIVE, failures)
    elapsed = time.monotonic() - began
    total = sum(node.cases.values())
    print(f"\nschemathesis: {total} cases in {elapsed:.0f} s: {node.cases} {node.seconds}")
    assert node.process.poll() is None, "the server died"
    assert httpx.get(f"{node.url}/health").status_code == 200
    assert not failures, f"{len(failures)} of {total} cases failed:\n" + "\n".join(failures[:60])
    with Meter(node.db) as meter:
        rows = meter.billing_requests(limit=100_000)
    assert rows, "no case reached the engine"
    assert not [r for r in rows if r["status"] == "running"]
