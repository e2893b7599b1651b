"""HTTP benchmark: N concurrent streaming chat clients against llm-node and peers, same run.

For each target and each concurrency level: aggregate completion tokens/s, time to first token
(p50/p99) and, for processes this script started, their resident memory. Ratios are against
the peers measured in the same run, never against stored numbers.

    .venv/bin/python bench/http_bench.py                       # starts llm-node (auth + meter on)
    .venv/bin/python bench/http_bench.py --llama-cpp-python    # + llama-cpp-python's server
    .venv/bin/python bench/http_bench.py --llama-server /opt/peer/llama-server
    .venv/bin/python bench/http_bench.py --peer name=http://host:port   # any OpenAI server

Targets (SPEC issue 4) at 8 clients: >= 5x llama-cpp-python's server, >= 0.9x `llama-server
-np 8`. Every target serves the same GGUF; end-of-generation tokens are banned through
`logit_bias` so each request generates exactly `--max-tokens` tokens everywhere, and every
request spells out its sampler settings (`--sampling`) so that every server does the same work.
Rounds run the targets in alternating order; besides each target's best round, the table gives
the median of llm-node's per-round ratio, which a box whose speed drifts disturbs less.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
MODEL_ID = "smollm2-135m"
PROMPT = "Write a long story about a lighthouse keeper and a storm."
# What each request asks of the sampler besides temperature 0.7. "full": the whole vocabulary,
# as an OpenAI client gets by default, spelled out so that every server does the same work.
# "server-defaults": nothing more, so each server applies its own defaults (llama-server and
# llama-cpp-python: top-k 40, top-p 0.95, min-p 0.05; llm-node: OpenAI's, the whole vocabulary).
SAMPLING: dict[str, dict[str, float]] = {
    "full": {"top_k": 0, "top_p": 1.0, "min_p": 0.0},
    "server-defaults": {},
}


@dataclass
class Target:
    name: str
    url: str
    api_key: str = "none"
    pid: int | None = None


@dataclass
class Result:
    target: str
    clients: int
    tokens: int
    seconds: float
    ttft: list[float] = field(default_factory=list)
    rss_mib: float | None = None
    failures: int = 0

    @property
    def tok_s(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0

    def pct(self, q: float) -> float:
        if not self.ttft:
            return float("nan")
        ordered = sorted(self.ttft)
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rss_mib(pid: int | None) -> float | None:
    if pid is None:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def wait_ready(url: str, path: str, process: subprocess.Popen[bytes], timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"server for {url} exited with {process.returncode}")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(url + path, timeout=2).status_code == 200:
                return
        time.sleep(0.2)
    raise SystemExit(f"server at {url} not ready after {timeout}s")


@contextlib.contextmanager
def started(cmd: list[str], log_name: str) -> Iterator[subprocess.Popen[bytes]]:
    log = open(Path(tempfile.gettempdir()) / log_name, "wb")  # noqa: SIM115
    process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    try:
        yield process
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def gguf_path() -> str:
    from node.config import embedded_model_path

    return str(embedded_model_path())


def threads_field(threads: int | None) -> str:
    """The registry's `n_threads` line, or nothing for the node's default."""
    return f"n_threads = {threads}\n" if threads else ""


@contextlib.contextmanager
def serve_metered_node(bench: str, fields: str, serve_args: Sequence[str] = ()) -> Iterator[Target]:
    """`llm-node serve` with auth and meter on (a fresh meter database and LLM key) on a
    registry of the default model; `fields`: that [[model]] table's lines after id and path."""
    tmp = Path(tempfile.mkdtemp(prefix=f"{bench}-"))
    db = tmp / "meter.db"
    llm_node = str(Path(sys.executable).with_name("llm-node"))
    out = subprocess.run(
        [llm_node, "api-keys", "create", "--level", "LLM", "--json", "--db", str(db)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    secret = json.loads(out.stdout)["secret"]
    registry = tmp / "models.toml"
    registry.write_text(f'[[model]]\nid = "{MODEL_ID}"\npath = "{gguf_path()}"\n{fields}')
    port = free_port()
    cmd = [llm_node, "serve", "--port", str(port), "--db", str(db), "--models", str(registry),
           *serve_args]  # fmt: skip
    with started(cmd, f"{bench}-node.log") as process:
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, "/health", process)
        yield Target("llm-node", url, secret, process.pid)


@contextlib.contextmanager
def start_node(args: argparse.Namespace) -> Iterator[Target]:
    fields = f"n_ctx = {args.n_ctx}\nparallel = {args.parallel}\n" + threads_field(args.threads)
    with serve_metered_node("http-bench", fields) as target:
        yield target


@contextlib.contextmanager
def start_llama_cpp_python(args: argparse.Namespace) -> Iterator[Target]:
    port = free_port()
    # `--llama-cpp-python-venv`: a Python whose llama-cpp-python has the [server] extra, kept
    # apart so fastapi's pins never touch the node's environment.
    python = getattr(args, "llama_cpp_python_python", None) or sys.executable
    cmd = [
        python, "-m", "llama_cpp.server", "--model", gguf_path(),
        "--model_alias", MODEL_ID, "--n_ctx", str(args.n_ctx // args.parallel),
        "--port", str(port), "--host", "127.0.0.1",
        "--interrupt_requests", "False",  # queue concurrent requests instead of aborting them
    ]  # fmt: skip
    if args.threads:
        cmd += ["--n_threads", str(args.threads), "--n_threads_batch", str(args.threads)]
    with started(cmd, "http-bench-llama-cpp-python.log") as process:
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, "/v1/models", process)
        yield Target("llama-cpp-python", url, "none", process.pid)


@contextlib.contextmanager
def start_llama_server(binary: str, args: argparse.Namespace) -> Iterator[Target]:
    port = free_port()
    cmd = [
        binary, "-m", gguf_path(), "-np", str(args.parallel), "-c", str(args.n_ctx),
        "--port", str(port), "--host", "127.0.0.1", "--alias", MODEL_ID,
    ]  # fmt: skip
    if args.threads:
        cmd += ["-t", str(args.threads), "-tb", str(args.threads)]
    with started(cmd, "http-bench-llama-server.log") as process:
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, "/health", process)
        yield Target("llama-server", url, "none", process.pid)


async def one_request(
    client: httpx.AsyncClient, target: Target, args: argparse.Namespace, seed: int
) -> tuple[int, float | None]:
    """(completion tokens, seconds to first token) of one streamed chat completion."""
    body = {
        "model": MODEL_ID,
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": args.max_tokens,
        "temperature": 0.7,
        **SAMPLING[args.sampling],
        "seed": seed,
        "stream": True,
        "stream_options": {"include_usage": True},
        "logit_bias": {str(t): -100 for t in args.ban_tokens},
    }
    headers = {"Authorization": f"Bearer {target.api_key}"}
    began = time.perf_counter()
    first: float | None = None
    deltas = 0
    usage_tokens: int | None = None
    async with client.stream(
        "POST", f"{target.url}/v1/chat/completions", json=body, headers=headers
    ) as resp:
        if resp.status_code != 200:
            raise RuntimeError(f"{target.name}: HTTP {resp.status_code}: {await resp.aread()!r}")
        async for line in resp.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if event.get("usage"):
                usage_tokens = event["usage"]["completion_tokens"]
            for choice in event.get("choices") or []:
                if (choice.get("delta") or {}).get("content"):
                    deltas += 1
                    if first is None:
                        first = time.perf_counter() - began
    # Peers without include_usage: one streamed delta per token.
    return (usage_tokens if usage_tokens is not None else deltas), first


async def run_level(target: Target, clients: int, args: argparse.Namespace) -> Result:
    result = Result(target.name, clients, 0, 0.0)
    limits = httpx.Limits(max_connections=clients + 4)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        await one_request(client, target, args, seed=0)  # warm-up (not counted)

        async def worker(index: int) -> None:
            for r in range(args.requests_per_client):
                try:
                    try:
                        tokens, ttft = await one_request(client, target, args, seed=index * 97 + r)
                    except httpx.RemoteProtocolError:
                        # The server closed an idle keep-alive connection as httpx reused it
                        # (llama-server does): nothing was sent back, so ask again once.
                        tokens, ttft = await one_request(client, target, args, seed=index * 97 + r)
                except Exception as exc:
                    result.failures += 1
                    print(f"  {target.name}: {exc}", file=sys.stderr)
                    continue
                result.tokens += tokens
                if ttft is not None:
                    result.ttft.append(ttft)

        began = time.perf_counter()
        await asyncio.gather(*(worker(i) for i in range(clients)))
        result.seconds = time.perf_counter() - began
    result.rss_mib = rss_mib(target.pid)
    return result


def print_table(results: list[Result], rounds: dict[tuple[str, int], list[Result]]) -> None:
    """Best round of each target, and the median over rounds of llm-node's tok/s divided by
    the target's in the same round (robust to a box whose speed drifts between rounds)."""
    best = {(r.target, r.clients): r.tok_s for r in results}
    header = (
        f"{'target':<18} {'clients':>7} {'tok/s':>9} {'TTFT p50':>9} {'TTFT p99':>9} "
        f"{'RSS MiB':>8} {'fail':>4} {'llm-node / this':>15} {'median/round':>12}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        node_best = best.get(("llm-node", r.clients), 0.0)
        ratio = node_best / r.tok_s if r.tok_s else float("nan")
        paired = zip(rounds[("llm-node", r.clients)], rounds[(r.target, r.clients)], strict=True)
        per_round = [n.tok_s / t.tok_s for n, t in paired if t.tok_s]
        median = statistics.median(per_round) if per_round else float("nan")
        rss = f"{r.rss_mib:.0f}" if r.rss_mib is not None else "-"
        print(
            f"{r.target:<18} {r.clients:>7} {r.tok_s:>9.1f} {r.pct(0.5) * 1000:>7.0f}ms "
            f"{r.pct(0.99) * 1000:>7.0f}ms {rss:>8} {r.failures:>4} {ratio:>14.2f}x "
            f"{median:>11.2f}x"
        )


async def bench_target(target: Target, args: argparse.Namespace) -> list[Result]:
    results = []
    for clients in args.clients:
        result = await run_level(target, clients, args)
        print(
            f"  {target.name:<18} {clients:>3} clients: {result.tok_s:8.1f} tok/s",
            file=sys.stderr,
        )
        results.append(result)
    return results


def best_of(rounds: list[Result]) -> Result:
    """The least disturbed round (highest tok/s): the box may be shared with other work."""
    return max(rounds, key=lambda r: r.tok_s)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--node-url", help="a running llm-node (default: start one)")
    parser.add_argument("--node-key", default=os.environ.get("LLM_NODE_KEY", "none"))
    parser.add_argument("--node-pid", type=int, help="pid of a running llm-node, for its RSS")
    parser.add_argument("--peer", action="append", default=[], help="NAME=URL of a peer server")
    parser.add_argument("--peer-key", default="none", help="API key sent to every --peer")
    parser.add_argument("--llama-cpp-python", action="store_true", help="start it as a peer")
    default_server = "/opt/peer/llama-server"
    parser.add_argument(
        "--llama-server",
        default=default_server if Path(default_server).exists() else None,
        help="llama.cpp's llama-server binary to start as a peer (default: %(default)s)",
    )
    parser.add_argument("--clients", type=lambda s: [int(x) for x in s.split(",")],
                        default=[1, 8, 16])  # fmt: skip
    parser.add_argument("--requests-per-client", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--n-ctx", type=int, default=8192)
    parser.add_argument("--parallel", type=int, default=8)
    parser.add_argument(
        "--threads", type=int, default=None,
        help="decode threads for every server started here (default: each server's own)",
    )  # fmt: skip
    parser.add_argument(
        "--rounds", type=int, default=3,
        help="rounds, targets in alternating order; the table keeps each target's best round "
        "and the median of the per-round ratios",
    )  # fmt: skip
    parser.add_argument("--sampling", choices=sorted(SAMPLING), default="full",
                        help="sampler settings sent with each request (see SAMPLING)")  # fmt: skip
    parser.add_argument(
        "--ban-tokens", type=lambda s: [int(x) for x in s.split(",") if x], default=[0, 2, 4],
        help="token ids banned through logit_bias (SmolLM2: <|endoftext|>, <|im_end|>, <reponame>)",
    )  # fmt: skip
    args = parser.parse_args()

    # One server alive at a time, so none competes with another for the CPU.
    factories: list[tuple[str, Callable[[], contextlib.AbstractContextManager[Target]]]] = []
    if args.node_url:
        node = Target("llm-node", args.node_url, args.node_key, args.node_pid)
        factories.append(("llm-node", lambda: contextlib.nullcontext(node)))
    else:
        factories.append(("llm-node", lambda: start_node(args)))
    for spec in args.peer:
        name, _, url = spec.partition("=")
        peer = Target(name, url, args.peer_key)
        factories.append((name, lambda peer=peer: contextlib.nullcontext(peer)))
    if args.llama_server:
        factories.append(("llama-server", lambda: start_llama_server(args.llama_server, args)))
    if args.llama_cpp_python:
        factories.append(("llama-cpp-python", lambda: start_llama_cpp_python(args)))
    print(
        f"{len(factories)} target(s), {args.rounds} round(s); {args.requests_per_client} "
        f"request(s) per client of {args.max_tokens} tokens; clients {args.clients}; "
        f"sampling {args.sampling}",
        file=sys.stderr,
    )
    by_key: dict[tuple[str, int], list[Result]] = {}
    for round_ in range(args.rounds):
        for _name, factory in factories if round_ % 2 == 0 else factories[::-1]:
            with factory() as target:
                for result in asyncio.run(bench_target(target, args)):
                    by_key.setdefault((result.target, result.clients), []).append(result)
    order = {name: i for i, (name, _) in enumerate(factories)}
    results = sorted(
        (best_of(rounds) for rounds in by_key.values()),
        key=lambda r: (r.clients, order.get(r.target, 99)),
    )
    print_table(results, by_key)


if __name__ == "__main__":
    main()
