"""Several choices, several prompts and logprobs in OpenAI's shapes: a real uvicorn server and
meter, the fake engine of `tests/fakes.py` (its logprobs: every token 1/2, then `x`, `y`, `z`).
The same features on the real model: `test_api_agents_e2e.py`."""

from __future__ import annotations

import json
import math
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
from tests.fakes import FakeEmbedder, FakeEngine, FakeGpu, FakePool


@dataclass
class Node:
    url: str
    secret: str
    meter: Meter

    def post(self, path: str, body: dict) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.secret}"}
        return httpx.post(f"{self.url}{path}", json=body, headers=headers, timeout=30)

    def events(self, path: str, body: dict) -> list[dict]:
        resp = self.post(path, {**body, "stream": True})
        assert resp.status_code == 200, resp.text
        lines = [line[6:] for line in resp.text.splitlines() if line.startswith("data: ")]
        assert lines[-1] == "[DONE]"
        return [json.loads(line) for line in lines[:-1]]


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    meter = Meter(tmp_path_factory.mktemp("choices") / "meter.db")
    _key, secret = meter.create_key("LLM", comment="tests")
    metrics = NodeMetrics()
    service = NodeService([], FakePool(FakeEngine("fake"), FakeEmbedder()), meter, FakeGpu(),
                          metrics)  # fmt: skip
    with serve_in_thread(create_app(service, metrics)) as url:
        for _ in range(500):
            if httpx.get(f"{url}/health").status_code == 200:
                break
            time.sleep(0.01)
        yield Node(url, secret, meter)
    meter.close()


CHAT = {"model": "fake", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 3}


def test_two_chat_choices_stream_interleaved_and_equal_the_whole_answer(node: Node) -> None:
    whole = node.post("/v1/chat/completions", {**CHAT, "n": 2}).json()
    assert [c["index"] for c in whole["choices"]] == [0, 1]
    assert whole["usage"]["prompt_tokens"] == 3  # "<user> hello <assistant>", billed once
    assert whole["usage"]["completion_tokens"] == 6
    text: dict[int, str] = {0: "", 1: ""}
    roles, reasons = [], {}
    for event in node.events("/v1/chat/completions", {**CHAT, "n": 2}):
        for choice in event["choices"]:
            delta = choice["delta"]
            if "role" in delta:
                roles.append(choice["index"])
            text[choice["index"]] += delta.get("content", "")
            if choice["finish_reason"]:
                reasons[choice["index"]] = choice["finish_reason"]
    assert sorted(roles) == [0, 1] and reasons == {0: "length", 1: "length"}
    assert [text[0], text[1]] == [c["message"]["content"] for c in whole["choices"]]


def test_chat_logprobs_whole_and_streamed(node: Node) -> None:
    body = {**CHAT, "logprobs": True, "top_logprobs": 2}
    content = node.post("/v1/chat/completions", body).json()["choices"][0]["logprobs"]["content"]
    assert [t["token"] for t in content] == ["w0", " w1", " w2"]
    for token in content:
        assert token["logprob"] == pytest.approx(math.log(0.5))
        assert token["bytes"] == list(token["token"].encode())
        assert [t["token"] for t in token["top_logprobs"]] == [token["token"], "x"]
    streamed = [
        token
        for event in node.events("/v1/chat/completions", body)
        for choice in event["choices"]
        for token in (choice["logprobs"] or {}).get("content") or []
    ]
    assert streamed == content
    plain = node.post("/v1/chat/completions", CHAT).json()["choices"][0]
    assert plain["logprobs"] is None  # not asked for


def test_completions_several_prompts_and_n(node: Node) -> None:
    body = {"model": "fake", "prompt": ["one", "two words"], "max_tokens": 2}
    resp = node.post("/v1/completions", body)
    answer = resp.json()
    assert [c["index"] for c in answer["choices"]] == [0, 1]
    assert answer["usage"]["prompt_tokens"] == 3  # 1 + 2: each prompt billed
    row = node.meter.request_row(resp.headers["x-request-id"])
    assert row is not None and (row["prompt_tokens"], row["completion_tokens"]) == (3, 4)
    ids = node.post("/v1/completions", {"model": "fake", "prompt": [[3, 5, 7]], "n": 2,
                                        "max_tokens": 2}).json()  # fmt: skip
    assert ids["usage"]["prompt_tokens"] == 3 and len(ids["choices"]) == 2


def test_completions_logprobs_lists_and_offsets(node: Node) -> None:
    body = {"model": "fake", "prompt": "x", "max_tokens": 3, "logprobs": 1}
    choice = node.post("/v1/completions", body).json()["choices"][0]
    lp = choice["logprobs"]
    assert lp["tokens"] == ["w0", " w1", " w2"] and "".join(lp["tokens"]) == choice["text"]
    assert lp["text_offset"] == [0, 2, 5]
    assert lp["top_logprobs"] == [{t: pytest.approx(math.log(0.5))} for t in lp["tokens"]]
    chunks = [
        c["logprobs"]
        for event in node.events("/v1/completions", body)
        for c in event["choices"]
        if c["logprobs"]
    ]
    assert [t for c in chunks for t in c["tokens"]] == lp["tokens"]
    assert [o for c in chunks for o in c["text_offset"]] == lp["text_offset"]


def test_embeddings_take_token_ids(node: Node) -> None:
    answer = node.post("/v1/embeddings", {"model": "fake-embed", "input": [[1, 2], [3]]}).json()
    assert [d["index"] for d in answer["data"]] == [0, 1]
    assert answer["usage"]["prompt_tokens"] == 3
