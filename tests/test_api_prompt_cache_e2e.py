"""End to end: `llm-node serve` with one slot and the host-memory prompt cache. A prompt whose
slot another request took comes back from host memory: `cached_tokens` in usage, in the meter
row and in /metrics are the restored tokens, exactly."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.node_process import CHAT_ID, cli, start_server, stop_server

STORY = (
    "Here is a story about a lighthouse keeper named Ada who lived alone on a rocky island far "
    "out at sea. Every night she climbed the spiral stairs, trimmed the wick and polished the "
    "great lens. "
) * 3
BREAD = (
    "A recipe for bread: mix flour, water, salt and yeast, knead the dough for ten minutes, let "
    "it rise in a warm place, shape it into a loaf and bake it in a hot oven. "
) * 3


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, Path]]:
    tmp = tmp_path_factory.mktemp("prompt-cache")
    db = tmp / "meter.db"
    secret = json.loads(cli(db, "api-keys", "create", "--level", "LLM", "--json"))["secret"]
    url, process = start_server(
        tmp,
        db,
        parallel=1,
        extra=("--prompt-cache-mib", "64"),  # default batching: mixed
    )
    yield url, secret, db
    stop_server(process)


def chat(url: str, secret: str, content: str) -> tuple[dict, str]:
    resp = httpx.post(
        f"{url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {secret}"},
        json={"model": CHAT_ID, "messages": [{"role": "user", "content": content}],
              "max_tokens": 8, "temperature": 0},
        timeout=120,
    )  # fmt: skip
    assert resp.status_code == 200, resp.text
    return resp.json(), resp.headers["x-request-id"]


def metric(url: str, name: str) -> float:
    text = httpx.get(f"{url}/metrics").text
    found = re.search(rf'^{re.escape(name)}{{model="{CHAT_ID}"}} (\S+)$', text, re.MULTILINE)
    assert found, f"{name} missing from /metrics"
    return float(found.group(1))


def test_restored_prompt_tokens_are_cached_tokens_in_usage_meter_and_metrics(node) -> None:
    from node.meter import Meter

    url, secret, db = node
    first, _ = chat(url, secret, STORY + "Who is Ada?")
    chat(url, secret, BREAD + "What is baked?")  # takes the only slot: the story goes to host RAM
    assert metric(url, "llm_node_prompt_cache_hits_total") == 0
    again, request_id = chat(url, secret, STORY + "Who is Ada?")

    prompt = again["usage"]["prompt_tokens"]
    cached = again["usage"]["prompt_tokens_details"]["cached_tokens"]
    assert prompt == first["usage"]["prompt_tokens"]
    assert cached == prompt - 1  # all but the last prompt token, restored
    with Meter(db) as meter:
        row = meter.request_row(request_id)
    assert row is not None and row["cached_tokens"] == cached
    assert metric(url, "llm_node_prompt_cache_hits_total") == 1
    assert metric(url, "llm_node_prompt_cache_tokens_restored_total") == cached
    assert 0 < metric(url, "llm_node_prompt_cache_bytes") <= 64 * 1024 * 1024
    assert metric(url, "llm_node_prompt_cache_budget_bytes") == 64 * 1024 * 1024
