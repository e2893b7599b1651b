"""What agents' features cost: tokens/s of N concurrent streaming chat clients against llm-node,
for the same requests plain, with 4 tools and `tool_choice: auto`, with `logprobs: false` said
explicitly, and with `top_logprobs: 5`. Workloads alternate within each round; the table gives
each workload's median ratio to the plain requests of the same round.

    .venv/bin/python bench/agents_bench.py [--clients 8] [--rounds 3] [--max-tokens 64]

Targets (issue 10) at 8 clients: tools (auto) >= 0.9x, logprobs off >= 0.98x, top_logprobs 5
>= 0.8x. The model gets a Hermes-style ChatML template with tool support (the tests' one), so
the tools reach the prompt and a call the model starts is parsed and constrained by the lazy
grammar. End-of-generation tokens are banned so every request generates `--max-tokens` tokens
(a started call ends the request early: its grammar only allows the end).
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

ROOT = Path(__file__).resolve().parent.parent
MODEL_ID = "smollm2-135m"
TEMPLATE = (ROOT / "tests" / "templates" / "hermes-chatml.jinja").read_text()
PROMPT = "Write a long story about a lighthouse keeper and a storm."
NO_EOG = {"0": -100, "2": -100, "4": -100}  # SmolLM2's end-of-generation tokens


def _tool(name: str, description: str, props: dict[str, Any]) -> dict[str, Any]:
    schema = {"type": "object", "properties": props, "required": list(props)}
    function = {"name": name, "description": description, "parameters": schema}
    return {"type": "function", "function": function}


TOOLS = [
    _tool("get_weather", "The current weather in a city.", {"city": {"type": "string"}}),
    _tool("get_time", "The local time in a city.", {"city": {"type": "string"}}),
    _tool("search", "Search the web.", {"query": {"type": "string"}}),
    _tool("add", "Add two numbers.", {"a": {"type": "number"}, "b": {"type": "number"}}),
]


def _tools_system_text() -> str:
    """The system message the template writes for TOOLS: sent as plain text, it gives the
    same prompt without the tools machinery (parser, lazy grammar)."""
    from node.engine.chat_template import ChatTemplate
    from node.engine.interface import ChatMessage, Tool

    tools = [Tool(t["function"]["name"], t["function"]["description"], t["function"]["parameters"])
             for t in TOOLS]  # fmt: skip
    prompt = ChatTemplate(TEMPLATE, "", "<|im_end|>").render(
        [ChatMessage("user", "x")], tools=tools
    )
    return prompt.removeprefix("<|im_start|>system\n").split("<|im_end|>", 1)[0]


SAME_PROMPT = [{"role": "system", "content": _tools_system_text()},
               {"role": "user", "content": PROMPT}]  # fmt: skip
WORKLOADS: dict[str, dict[str, Any]] = {
    "plain": {},
    "tools' prompt, no tools": {"messages": SAME_PROMPT},
    "tools auto": {"tools": TOOLS, "tool_choice": "auto"},
    "logprobs off": {"logprobs": False},
    "top_logprobs 5": {"logprobs": True, "top_logprobs": 5},
}


@contextmanager
def start_node(args: argparse.Namespace) -> Iterator[tuple[str, str]]:
    fields = (
        f"n_ctx = {args.n_ctx}\nparallel = {args.clients}\nchat_template = '''{TEMPLATE}'''\n"
        + threads_field(args.threads)
    )
    with serve_metered_node("agents-bench", fields) as target:
        yield target.url, target.api_key


async def one(client: httpx.AsyncClient, url: str, extra: dict[str, Any], seed: int,
              args: argparse.Namespace) -> int:  # fmt: skip
    body = {
        "model": MODEL_ID,
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": args.max_tokens,
        "temperature": 0.7,
        "seed": seed,
        "stream": True,
        "stream_options": {"include_usage": True},
        "logit_bias": NO_EOG,
        **extra,
    }
    tokens = 0
    async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as resp:
        if resp.status_code != 200:
            raise RuntimeError(f"HTTP {resp.status_code}: {await resp.aread()!r}")
        async for line in resp.aiter_lines():
            if line.startswith("data: {"):
                event = json.loads(line[6:])
                if event.get("usage"):
                    tokens = event["usage"]["completion_tokens"]
    return tokens


async def level(url: str, secret: str, extra: dict[str, Any], args: argparse.Namespace) -> float:
    """Aggregate completion tokens/s of `--clients` clients, `--requests` requests each."""
    headers = {"Authorization": f"Bearer {secret}"}
    limits = httpx.Limits(max_connections=args.clients + 4)
    async with httpx.AsyncClient(timeout=600, headers=headers, limits=limits) as client:
        await one(client, url, extra, 0, args)  # warm-up, not counted
        began = time.perf_counter()
        counts = await asyncio.gather(
            *(one(client, url, extra, c * 97 + r, args)
              for c in range(args.clients) for r in range(args.requests))
        )  # fmt: skip
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
            got = {name: asyncio.run(level(url, secret, WORKLOADS[name], args)) for name in names}
            for name, rate in got.items():
                rates[name].append(rate)
                base = "tools' prompt, no tools" if name == "tools auto" else "plain"
                ratios[name].append(rate / got[base])
            print(f"round {r + 1}: " + ", ".join(f"{n} {v:.1f}" for n, v in got.items()),
                  file=sys.stderr)  # fmt: skip
    print(f"\n{args.clients} clients, {args.max_tokens} tokens per request, {args.rounds} rounds")
    print("| workload | best tok/s | median ratio (tools: to the same prompt without tools) |")
    print("|---|---|---|")
    for name in WORKLOADS:
        print(f"| {name} | {max(rates[name]):.1f} | {statistics.median(ratios[name]):.2f}x |")


if __name__ == "__main__":
    main()
