"""A real uvicorn node on the fake engine with a real meter, for the operator-control tests."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from node.api.app import create_app
from node.api.metrics import NodeMetrics
from node.meter import Meter
from node.meter.limits import RateLimiter
from node.service import NodeService
from tests.api_fixtures import serve_in_thread
from tests.fakes import FakeEmbedder, FakeEngine, FakeGpu, FakePool


@dataclass
class ControlNode:
    url: str
    meter: Meter
    engine: FakeEngine
    admin: str  # secret of an ADMIN key
    llm: str  # secret of an LLM key

    def call(
        self, method: str, path: str, secret: str | None = None, **kw: object
    ) -> httpx.Response:
        headers = {} if secret is None else {"Authorization": f"Bearer {secret}"}
        kw.setdefault("timeout", 30)
        return httpx.request(method, f"{self.url}{path}", headers=headers, **kw)  # type: ignore[arg-type]

    def chat(self, secret: str, **body: object) -> httpx.Response:
        payload = {"model": "fake", "messages": [{"role": "user", "content": "hi"}], **body}
        return self.call("POST", "/v1/chat/completions", secret, json=payload)


@contextmanager
def control_node(
    db: Path, *, meter: Meter | None = None, limiter: RateLimiter | None = None
) -> Iterator[ControlNode]:
    meter = meter or Meter(db, busy_timeout_s=1.0)
    _admin_key, admin = meter.create_key("ADMIN", comment="operator")
    _llm_key, llm = meter.create_key("LLM", comment="client")
    engine = FakeEngine("fake", max_active=64)
    metrics = NodeMetrics()
    pool = FakePool(engine, FakeEmbedder())
    service = NodeService([], pool, meter, FakeGpu(), metrics, limiter=limiter)
    try:
        with serve_in_thread(create_app(service, metrics)) as url:
            for _ in range(500):
                if httpx.get(f"{url}/health").status_code == 200:
                    break
                time.sleep(0.01)
            yield ControlNode(url, meter, engine, admin, llm)
    finally:
        meter.close()


def assert_error(resp: httpx.Response, status: int, type_: str, code: str | None) -> dict:
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert {"message", "type", "param", "code"} <= set(error)
    assert (error["type"], error["code"]) == (type_, code)
    return error
