"""The meter file deleted or replaced under a serving node: a real uvicorn server, a real
meter, the fake engine. Every request is 503 `meter_unavailable` and the engine gets nothing."""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from node.api.app import create_app
from node.api.metrics import NodeMetrics
from node.meter import Meter
from node.service import NodeService
from tests.api_fixtures import serve_in_thread
from tests.fakes import FakeEmbedder, FakeEngine, FakeGpu, FakePool

CHAT = {"model": "fake", "messages": [{"role": "user", "content": "a b c"}], "max_tokens": 4}
EMBED = {"model": "fake-embed", "input": "a b"}


@dataclass
class Served:
    url: str
    secret: str
    db: Path
    engine: FakeEngine
    embedder: FakeEmbedder

    def post(self, path: str, body: object) -> httpx.Response:
        return httpx.post(
            f"{self.url}{path}",
            json=body,
            headers={"Authorization": f"Bearer {self.secret}"},
            timeout=30,
        )


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    db = tmp_path / "meter.db"
    meter = Meter(db, busy_timeout_s=0.3)
    _key, secret = meter.create_key("LLM")
    engine, embedder = FakeEngine("fake"), FakeEmbedder()
    metrics = NodeMetrics()
    service = NodeService([], FakePool(engine, embedder), meter, FakeGpu(), metrics)
    try:
        with serve_in_thread(create_app(service, metrics)) as url:
            deadline = time.monotonic() + 10
            while httpx.get(f"{url}/health").status_code != 200:
                assert time.monotonic() < deadline, "node never became ready"
                time.sleep(0.01)
            yield Served(url, secret, db, engine, embedder)
    finally:
        meter.close()


def _row(db: Path, request_id: str) -> tuple[str, int, int]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return conn.execute(
            "SELECT status, prompt_tokens, completion_tokens FROM requests WHERE id = ?",
            (request_id,),
        ).fetchone()
    finally:
        conn.close()


def test_the_row_carries_the_prompt_from_admission_before_any_checkpoint(served: Served) -> None:
    served.engine.step_s = 0.3  # room to look at the row between the first tokens
    body = {**CHAT, "stream": True, "max_tokens": 3, "stream_options": {"include_usage": True}}
    with httpx.stream(
        "POST",
        f"{served.url}/v1/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {served.secret}"},
        timeout=30,
    ) as resp:
        assert resp.status_code == 200
        lines = resp.iter_lines()
        first = next(line for line in lines if line.startswith("data: "))
        assert '"role"' in first or '"content"' in first
        running = _row(served.db, resp.headers["x-request-id"])
        rest = [line for line in lines if line.startswith("data: {")]
    usage = json.loads(rest[-1][len("data: ") :])["usage"]
    assert running == ("running", usage["prompt_tokens"], 0)
    assert usage["prompt_tokens"] > 0
    final = _row(served.db, resp.headers["x-request-id"])
    assert final == ("ok", usage["prompt_tokens"], usage["completion_tokens"])


def test_the_cached_count_reaches_the_row_with_the_first_token(served: Served) -> None:
    served.engine.step_s = 0.3  # the 3 tokens are far apart: the row is read between them
    served.engine.cached_tokens = 2
    body = {**CHAT, "stream": True, "max_tokens": 3}
    with httpx.stream(
        "POST",
        f"{served.url}/v1/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {served.secret}"},
        timeout=30,
    ) as resp:
        assert resp.status_code == 200
        lines = resp.iter_lines()
        next(line for line in lines if '"content"' in line)  # the first token
        request_id = resp.headers["x-request-id"]
        deadline = time.monotonic() + 5
        while _cached(served.db, request_id) != ("running", 2):
            assert time.monotonic() < deadline, _cached(served.db, request_id)
            time.sleep(0.01)  # polling another process's view of the file
        list(lines)
    assert _cached(served.db, request_id) == ("ok", 2)


def _cached(db: Path, request_id: str) -> tuple[str, int]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return conn.execute(
            "SELECT status, cached_tokens FROM requests WHERE id = ?", (request_id,)
        ).fetchone()
    finally:
        conn.close()


def test_embeddings_open_with_their_prompt_count(served: Served) -> None:
    resp = served.post("/v1/embeddings", {"model": "fake-embed", "input": ["a b", "c d e"]})
    assert resp.status_code == 200, resp.text
    assert _row(served.db, resp.headers["x-request-id"]) == ("ok", 5, 0)


def _delete(db: Path) -> None:
    db.unlink()


def _replace_with_a_copy(db: Path) -> None:
    """A consistent copy of the live file (the same keys) moved over it, as a restore would."""
    copy = db.with_name("restored.db")
    source, target = sqlite3.connect(db), sqlite3.connect(copy)
    try:
        source.backup(target)
    finally:
        source.close()
        target.close()
    os.replace(copy, db)


@pytest.mark.parametrize("swap", [_delete, _replace_with_a_copy], ids=["deleted", "replaced"])
def test_a_meter_file_gone_while_serving_gives_503_and_generates_nothing(
    served: Served, swap: Callable[[Path], None]
) -> None:
    first = served.post("/v1/chat/completions", CHAT)
    assert first.status_code == 200, first.text
    assert served.post("/v1/embeddings", EMBED).status_code == 200
    submitted, embedded = len(served.engine.submitted), served.embedder.decode_calls
    replaced = swap is _replace_with_a_copy

    swap(served.db)
    identity = served.db.stat().st_ino if replaced else None
    for path, body in (
        ("/v1/chat/completions", CHAT),
        ("/v1/chat/completions", {**CHAT, "stream": True}),
        ("/v1/completions", {"model": "fake", "prompt": "a b", "max_tokens": 3}),
        ("/v1/embeddings", EMBED),
    ):
        resp = served.post(path, body)
        assert resp.status_code == 503, (path, resp.status_code, resp.text)
        error = resp.json()["error"]
        assert (error["type"], error["code"]) == ("server_error", "meter_unavailable")
        assert set(error) == {"message", "type", "param", "code"}
    assert len(served.engine.submitted) == submitted
    assert served.embedder.decode_calls == embedded
    if replaced:  # the copy holds the rows of before, none of after, and stayed untouched
        assert served.db.stat().st_ino == identity
        conn = sqlite3.connect(f"file:{served.db}?mode=ro", uri=True)
        try:
            rows = conn.execute("SELECT endpoint FROM requests ORDER BY started").fetchall()
        finally:
            conn.close()
        assert [r[0] for r in rows] == ["chat.completions", "embeddings"]
    else:
        assert not served.db.exists()
