"""What a dialect costs: tokens/s of N concurrent streaming clients against llm-node for the same
conversation sent as chat completions, as a Responses API request and as an Anthropic Messages
request. All three render the same prompt and decode greedily, so they generate the same tokens;
only the renderer (and its SSE events) differs. Workloads alternate within each round; the table
gives each one's median ratio to chat in the same round.

    .venv/bin/python bench/dialects_bench.py [--clients 8] [--rounds 3] [--max-tokens 64]

Expected: each dialect >= 0.95x chat (the renderers add per-token work on the event loop only).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from http_bench import serve_metered_node, threads_field

MODEL_ID = "smollm2-135m"
PROMPT = "Count from 1 to 1000, separated by commas."


def _chat(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    return "/v1/chat/completions", {
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": args.max_tokens,
        "stream_options": {"include_usage": True},
    }


def _responses(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    return "/v1/responses", {"input": PROMPT, "max_output_tokens": args.max_tokens}


def _messages(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    return "/v1/messages", {
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": args.max_tokens,
    }


WORKLOADS = {"chat": _chat, "responses": _responses, "messages": _messages}


def _tokens(event: dict[str, Any]) -> int | None:
    """Completion tokens reported by a dialect's final event (None for other events)."""
    if event.get("usage") and "completion_tokens" in event["usage"]:
        return event["usage"]["completion_tokens"]  # chat's usage chunk
    if event.get("type") in ("response.completed", "response.incomplete"):
        return event["response"]["usage"]["output_tokens"]
    if event.get("type") == "message_delta":
        return event["usage"]["output_tokens"]
    return None


@contextmanager
def start_node(args: argparse.Namespace) -> Iterator[tuple[str, str]]:
    fields = f"n_ctx = {args.n_ctx}\nparallel = {args.clients}\n" + threads_field(args.threads)
    with serve_metered_node("dialects-bench", fields) as target:
        yield target.url, target.api_key


async def one(client: httpx.AsyncClient, url: str, name: str, args: argparse.Namespace) -> int:
    path, body = WORKLOADS[name](args)
    body = {"model": MODEL_ID, "temperature": 0, "stream": True, **body}
    tokens = 0
    async with client.stream("POST", f"{url}{path}", json=body) as resp:
        if resp.status_code != 200:
            raise RuntimeError(f"HTTP {resp.status_code}: {await resp.aread()!r}")
        async for line in resp.aiter_lines():
            if line.startswith("data: {"):
                found = _tokens(json.loads(line[6:]))
                tokens = found if found is not None else tokens
    return tokens


async def level(url: str, secret: str, name: str, args: argparse.Namespace) -> float:
    """Aggregate completion tokens/s of `--clients` clients, `--requests` requests each."""
    headers = {"Authorization": f"Bearer {secret}"}
    limits = httpx.Limits(max_connections=args.clients + 4)
    async with httpx.AsyncClient(timeout=600, headers=headers, limits=limits) as client:
        await one(client, url, name, args)  # warm-up, not counted
        began = time.perf_counter()
        counts = await asyncio.gather(
            *(one(client, url, name, args) for _ in range(args.clients * args.requests))
        )
        return sum(counts) / (time.perf_counter() - began)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=2, help="per client per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--n-ctx", type=int, default=8 * 1024)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    rates: dict[str, list[float]] = {name: [] for name in WORKLOADS}
    ratios: dict[str, list[float]] = {name: [] for name in WORKLOADS}
    with start_node(args) as (url, secret):
        for r in range(args.rounds):
            names = list(WORKLOADS) if r % 2 == 0 else list(reversed(WORKLOADS))
            got = {name: asyncio.run(level(url, secret, name, args)) for name in names}
            for name, rate in got.items():
                rates[name].append(rate)
                ratios[name].append(rate / got["chat"])
            print(f"round {r + 1}: " + ", ".join(f"{n} {v:.1f}" for n, v in got.items()),
                  file=sys.stderr)  # fmt: skip
    print(f"\n{args.clients} clients, {args.max_tokens} tokens per request, {args.rounds} rounds")
    print("| dialect | best tok/s | median ratio to chat |")
    print("|---|---|---|")
    for name in WORKLOADS:
        print(f"| {name} | {max(rates[name]):.1f} | {statistics.median(ratios[name]):.2f}x |")


if __name__ == "__main__":
    main()
