"""A bounded soak against `llm-node serve` on the real model: a seeded random mix of chat,
completions and embeddings, streamed and whole, with clients hanging up at random; then long
streams cut by one `kill -9` of the server, and a restart on the same meter.

The meter must agree with what the clients saw: every admitted request has exactly one row;
finished rows equal the usage returned; cancelled rows hold at least the tokens the client
received; interrupted rows carry their prompt tokens (and their checkpointed completion).
Requests are told apart by their `user` label (a client that hung up early never saw its
request id).
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.node_process import CHAT_ID, EMBED_ID, cli, start_server, stop_server

SEED = 9
REQUESTS = 150
WORKERS = 8
LONG_STREAMS = 6  # cut by kill -9; more than the 4 slots, so some wait in the queue
NO_EOS = {"0": -100, "1": -100, "2": -100, "4": -100}  # SmolLM2's end tokens: runs to the limit


@dataclass
class Outcome:
    """What one client saw."""

    user: str
    admitted: bool = False  # got a status line from the node
    status: int | None = None
    usage: dict[str, Any] | None = None  # the usage the node returned, if any
    chunks: int = 0  # content events received (each holds at least one token)
    hung_up: bool = False
    errors: list[str] = field(default_factory=list)


def _body(kind: str, user: str, rng: random.Random) -> tuple[str, dict[str, Any]]:
    limits = {"user": user, "max_tokens": rng.randint(4, 24), "logit_bias": NO_EOS}
    if kind == "chat":
        content = f"Tell me about the number {rng.randint(0, 99)}."
        messages = [{"role": "user", "content": content}]
        return "/v1/chat/completions", {"model": CHAT_ID, "messages": messages, **limits}
    if kind == "completions":
        prompt = f"{rng.randint(0, 9)}, 1, 2,"
        return "/v1/completions", {"model": CHAT_ID, "prompt": prompt, **limits}
    inputs = [f"text {rng.randint(0, 99)}"] * rng.randint(1, 3)
    return "/v1/embeddings", {"model": EMBED_ID, "user": user, "input": inputs}


def _streamed(url: str, headers: dict[str, str], path: str, body: dict, out: Outcome,
              hang_up_after: int | None) -> None:  # fmt: skip
    body = {**body, "stream": True, "stream_options": {"include_usage": True}}
    with httpx.stream("POST", f"{url}{path}", json=body, headers=headers, timeout=120) as resp:
        out.admitted, out.status = True, resp.status_code
        for line in resp.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if event.get("usage"):
                out.usage = event["usage"]
            choices = event.get("choices") or []
            if choices and (choices[0].get("text") or choices[0].get("delta", {}).get("content")):
                out.chunks += 1
                if hang_up_after is not None and out.chunks >= hang_up_after:
                    out.hung_up = True
                    return


def _whole(url: str, headers: dict[str, str], path: str, body: dict, out: Outcome,
           timeout: float | None) -> None:  # fmt: skip
    try:
        resp = httpx.post(f"{url}{path}", json=body, headers=headers, timeout=timeout or 120)
    except httpx.TimeoutException:
        out.hung_up = True  # we never saw a status: admitted or not, we cannot tell
        return
    out.admitted, out.status = True, resp.status_code
    if resp.status_code == 200:
        out.usage = resp.json()["usage"]


def one(url: str, secret: str, i: int) -> Outcome:
    rng = random.Random(SEED * 1000 + i)
    out = Outcome(user=f"soak-{i}")
    kind = rng.choice(["chat", "chat", "completions", "embeddings"])
    path, body = _body(kind, out.user, rng)
    headers = {"Authorization": f"Bearer {secret}"}
    hang_up = rng.random() < 0.3
    try:
        if kind != "embeddings" and rng.random() < 0.6:
            _streamed(url, headers, path, body, out, rng.randint(1, 6) if hang_up else None)
        else:
            _whole(url, headers, path, body, out, rng.uniform(0.05, 0.4) if hang_up else None)
    except httpx.HTTPError as exc:
        out.errors.append(repr(exc))
    return out


def _rows(db: Path) -> dict[str, list[dict[str, Any]]]:
    """Meter rows by `user` label, read from the file itself."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        conn.row_factory = sqlite3.Row
        rows = [dict(r) for r in conn.execute("SELECT * FROM requests")]
    by_user: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_user.setdefault(row["user"], []).append(row)
    return by_user


def _long_streams(url: str, secret: str) -> tuple[list[Outcome], int]:
    """Long streams, read in part; returns once the first ones passed two checkpoints (the
    rest are prefilling or queued), for the caller to kill the node. Also returns the prompt
    size, learned from a finished twin request."""
    headers = {"Authorization": f"Bearer {secret}"}
    body = {"model": CHAT_ID, "prompt": "Count: 1, 2, 3,", "max_tokens": 400,
            "logit_bias": NO_EOS, "temperature": 0}  # fmt: skip
    twin = httpx.post(f"{url}/v1/completions", json={**body, "max_tokens": 1}, headers=headers,
                      timeout=60).json()  # fmt: skip
    outcomes = [Outcome(user=f"long-{i}") for i in range(LONG_STREAMS)]
    changed = threading.Condition()

    def ready() -> bool:  # every stream admitted (its row open), one past two checkpoints
        return all(o.admitted for o in outcomes) and max(o.chunks for o in outcomes) >= 40

    def read(out: Outcome) -> None:
        try:
            with httpx.stream("POST", f"{url}/v1/completions", headers=headers, timeout=60,
                              json={**body, "user": out.user, "stream": True}) as resp:  # fmt: skip
                with changed:
                    out.admitted, out.status = True, resp.status_code
                    changed.notify_all()
                for line in resp.iter_lines():
                    if line.startswith("data: {"):
                        with changed:
                            out.chunks += 1
                            changed.notify_all()
        except httpx.HTTPError as exc:  # the kill ends every stream
            out.errors.append(repr(exc))

    threads = [threading.Thread(target=read, args=(o,), daemon=True) for o in outcomes]
    for t in threads:
        t.start()
    with changed:
        assert changed.wait_for(ready, 60), [(o.admitted, o.chunks) for o in outcomes]
    return outcomes, twin["usage"]["prompt_tokens"]


@pytest.fixture
def node(tmp_path: Path) -> tuple[Path, Path, str]:
    db = tmp_path / "meter.db"
    key = json.loads(cli(db, "api-keys", "create", "--level", "LLM", "--json"))
    return tmp_path, db, key["secret"]


def test_soak_with_disconnects_and_a_kill_keeps_the_meter_exact(
    node: tuple[Path, Path, str],
) -> None:
    tmp, db, secret = node
    began = time.monotonic()
    url, process = start_server(tmp, db)
    try:
        with ThreadPoolExecutor(WORKERS) as pool:
            outcomes = list(pool.map(lambda i: one(url, secret, i), range(REQUESTS)))
        long, prompt_tokens = _long_streams(url, secret)
        os.kill(process.pid, signal.SIGKILL)
        process.wait(10)
    finally:
        stop_server(process)
    url, process = start_server(tmp, db)  # recovery: running rows become interrupted
    try:
        after = one(url, secret, REQUESTS)  # the restarted node serves
    finally:
        stop_server(process)
    rows = _rows(db)
    print(f"\nsoak: {REQUESTS + LONG_STREAMS + 2} requests, {sum(len(r) for r in rows.values())} "
          f"rows in {time.monotonic() - began:.0f} s")  # fmt: skip

    assert not [o for o in outcomes if o.errors], [o.errors for o in outcomes if o.errors]
    assert {r["status"] for rs in rows.values() for r in rs} <= {
        "ok", "cancelled", "interrupted"}, "a row is still running, or failed"  # fmt: skip
    for out in [*outcomes, after]:
        mine = rows.get(out.user, [])
        assert len(mine) <= 1, f"{out.user}: {len(mine)} rows"
        if out.admitted:
            assert out.status == 200 and len(mine) == 1, (out, mine)
        if not mine:
            continue
        row = mine[0]
        if row["status"] == "ok" and out.usage is not None:
            assert (row["prompt_tokens"], row["completion_tokens"], row["cached_tokens"]) == (
                out.usage["prompt_tokens"],
                out.usage.get("completion_tokens", 0),
                out.usage.get("prompt_tokens_details", {}).get("cached_tokens", 0),
            ), (out, row)
        elif row["status"] == "cancelled":
            assert out.hung_up, (out, row)
            assert row["completion_tokens"] >= out.chunks, (out, row)
        assert row["status"] != "interrupted", (out, row)  # these all ended before the kill
    assert after.status == 200 and rows[after.user][0]["status"] == "ok"
    hung = [o for o in outcomes if o.hung_up]
    assert len(hung) >= REQUESTS // 10, "too few disconnects to test anything"
    assert any(rows[o.user][0]["status"] == "cancelled" for o in hung if o.user in rows)

    interrupted = [rows[o.user][0] for o in long if o.user in rows]
    assert len(interrupted) == LONG_STREAMS  # all were admitted before the kill
    for out, row in zip(long, interrupted, strict=True):
        assert row["status"] == "interrupted", row
        assert row["prompt_tokens"] == prompt_tokens, row  # known at admission
        if out.chunks >= 40:  # past two checkpoints when the node died
            assert row["completion_tokens"] >= 16, (out, row)
