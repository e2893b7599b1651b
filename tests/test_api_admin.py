"""The admin HTTP API and key levels, through httpx against a real uvicorn node and meter."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from node.meter import ApiKey, Meter
from tests.controls_support import ControlNode, assert_error, control_node

ADMIN_ROUTES = [
    ("POST", "/admin/keys"),
    ("GET", "/admin/keys"),
    ("GET", "/admin/keys/key_000000000000"),
    ("PATCH", "/admin/keys/key_000000000000"),
    ("DELETE", "/admin/keys/key_000000000000"),
    ("GET", "/admin/prices"),
    ("PUT", "/admin/prices/fake/fakegpu"),
    ("GET", "/admin/usage"),
    ("GET", "/admin/requests"),
    ("GET", "/admin/orgs"),
    ("GET", "/admin/orgs/acme"),
    ("PUT", "/admin/orgs/acme"),
]


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlNode]:
    with control_node(tmp_path_factory.mktemp("admin") / "m.db") as node:
        yield node


def test_an_llm_key_gets_403_on_every_admin_route(node: ControlNode) -> None:
    for method, path in ADMIN_ROUTES:
        resp = node.call(method, path, node.llm, json={})
        assert_error(resp, 403, "permission_error", "insufficient_permissions")
        assert resp.headers["x-request-id"]
        assert_error(node.call(method, path), 401, "authentication_error", "invalid_api_key")


def test_an_admin_key_works_on_the_model_routes(node: ControlNode) -> None:
    assert node.call("GET", "/v1/models", node.admin).status_code == 200
    resp = node.chat(node.admin, max_tokens=2)
    assert resp.status_code == 200 and resp.json()["choices"][0]["message"]["content"] == "w0 w1"


def test_key_life_cycle(node: ControlNode) -> None:
    resp = node.call(
        "POST",
        "/admin/keys",
        node.admin,
        json={
            "level": "LLM",
            "comment": "team",
            "org": "acme",
            "rpm": 100,
            "tpm": 5000,
            "budget": {"amount": "12.50", "period": "month"},
        },
    )
    assert resp.status_code == 201, resp.text
    created = resp.json()
    secret, key_id = created["secret"], created["id"]
    assert secret.startswith("llmn_") and key_id.startswith("key_")
    assert (created["rpm"], created["tpm"], created["max_parallel"]) == (100, 5000, None)
    assert created["budget"]["amount"] == "12.5" and created["budget"]["remaining"] == "12.5"
    # The new key works at once and carries its limits' headers.
    models = node.call("GET", "/v1/models", secret)
    assert models.status_code == 200
    assert models.headers["x-ratelimit-limit-requests"] == "100"
    listed = node.call("GET", "/admin/keys", node.admin).json()["data"]
    assert key_id in {k["id"] for k in listed}
    assert all("secret" not in k and "secret_sha256" not in k for k in listed)
    changed = node.call(
        "PATCH",
        f"/admin/keys/{key_id}",
        node.admin,
        json={"rpm": None, "max_parallel": 2, "comment": "renamed", "expires_in_days": 1},
    ).json()
    assert (changed["rpm"], changed["tpm"], changed["max_parallel"]) == (None, 5000, 2)
    assert changed["comment"] == "renamed" and changed["org"] == "acme"
    assert changed["budget"]["amount"] == "12.5" and changed["expires"] is not None
    assert node.call("GET", f"/admin/keys/{key_id}", node.admin).json() == changed
    cleared = node.call("PATCH", f"/admin/keys/{key_id}", node.admin, json={"budget": None})
    assert cleared.json()["budget"] is None
    deleted = node.call("DELETE", f"/admin/keys/{key_id}", node.admin)
    assert deleted.json() == {"id": key_id, "deleted": True}
    # A deleted key fails on its very next request.
    assert_error(
        node.call("GET", "/v1/models", secret), 401, "authentication_error", "invalid_api_key"
    )
    for method in ("GET", "PATCH", "DELETE"):
        resp = node.call(method, f"/admin/keys/{key_id}", node.admin, json={})
        assert_error(resp, 404, "invalid_request_error", "key_not_found")


@pytest.mark.parametrize(
    ("method", "path", "body", "param"),
    [
        ("POST", "/admin/keys", {"level": "ROOT"}, "level"),
        ("POST", "/admin/keys", {}, "level"),
        ("POST", "/admin/keys", {"level": "LLM", "rpm": 0}, "rpm"),
        ("POST", "/admin/keys", {"level": "LLM", "tpm": "10"}, "tpm"),
        ("POST", "/admin/keys", {"level": "LLM", "colour": "red"}, "colour"),
        ("POST", "/admin/keys", {"level": "LLM", "expires_in_days": -1}, "expires_in_days"),
        (
            "POST",
            "/admin/keys",
            {"level": "LLM", "budget": {"amount": "1.0000001", "period": "day"}},
            "budget.amount",
        ),
        (
            "POST",
            "/admin/keys",
            {"level": "LLM", "budget": {"amount": "1", "period": "year"}},
            "budget.period",
        ),
        ("PATCH", "/admin/keys/key_x", {"max_parallel": 1.5}, "max_parallel"),
        ("PUT", "/admin/prices/fake/fakegpu", {"prompt": "1.1234567", "completion": "1"}, "prompt"),
        ("PUT", "/admin/prices/fake/fakegpu", {"prompt": 1.5, "completion": "1"}, "prompt"),
        (
            "PUT",
            "/admin/prices/fake/fakegpu",
            {"prompt": "1", "completion": "1", "currency": "zł"},
            "currency",
        ),
        ("PUT", "/admin/orgs/acme", {"budget": {"amount": "-1", "period": "day"}}, "budget.amount"),
        ("GET", "/admin/usage?by=colour", None, "by"),
        ("GET", "/admin/usage?since=yesterday", None, "since"),
        ("GET", "/admin/usage?sort=cost", None, "sort"),
        ("GET", "/admin/requests?limit=0", None, "limit"),
        ("GET", "/admin/requests?status=done", None, "status"),
    ],
)
def test_bad_input_is_a_400_naming_the_param(
    node: ControlNode, method: str, path: str, body: object, param: str
) -> None:
    resp = node.call(method, path, node.admin, json=body)
    error = assert_error(resp, 400, "invalid_request_error", resp.json()["error"]["code"])
    assert error["param"] == param, error


def test_prices_usage_requests_and_orgs(node: ControlNode) -> None:
    resp = node.call(
        "PUT",
        "/admin/prices/fake/fakegpu",
        node.admin,
        json={"prompt": "19.78", "completion": "167.66"},
    )
    assert resp.status_code == 200 and resp.json()["prompt_per_1m"] == "19.78"
    prices = node.call("GET", "/admin/prices", node.admin).json()["data"]
    assert [(p["model"], p["completion_per_1m"]) for p in prices] == [("fake", "167.66")]
    org = node.call(
        "PUT", "/admin/orgs/acme", node.admin, json={"budget": {"amount": "5", "period": "week"}}
    ).json()
    assert org["org"] == "acme" and org["budget"]["amount"] == "5"
    key = node.call("POST", "/admin/keys", node.admin, json={"level": "LLM", "org": "acme"})
    secret, key_id = key.json()["secret"], key.json()["id"]
    chat = node.chat(secret, max_tokens=16)
    assert chat.status_code == 200
    # 3 prompt tokens and 16 completion tokens at the seed's prices: 59.34 + 2682.56 per 1M.
    assert chat.json()["usage"]["cost"] == "0.0027419"
    usage = node.call("GET", f"/admin/usage?key={key_id}", node.admin).json()
    assert usage["total"]["cost"] == "0.0027419" and usage["currency"] == "PLN"
    by_org = node.call("GET", "/admin/usage?by=org&org=acme", node.admin).json()
    assert by_org["rows"][0]["budget"]["spent"] == "0.0027419"
    assert by_org["rows"][0]["budget"]["remaining"] == "4.9972581"
    rows = node.call("GET", f"/admin/requests?key={key_id}&limit=5", node.admin).json()
    assert [(r["id"], r["status"], r["cost"]) for r in rows] == [
        (chat.headers["x-request-id"], "ok", "0.0027419")
    ]
    orgs = node.call("GET", "/admin/orgs", node.admin).json()["data"]
    assert {k: orgs[0][k] for k in ("org", "keys")} == {"org": "acme", "keys": 1}
    cleared = node.call("PUT", "/admin/orgs/acme", node.admin, json={"budget": None}).json()
    assert cleared["budget"] is None


def test_openapi_documents_the_admin_api(node: ControlNode) -> None:
    doc = httpx.get(f"{node.url}/openapi.json").json()
    for method, path in ADMIN_ROUTES:
        template = (
            path.replace("key_000000000000", "{key_id}")
            .replace("fake/fakegpu", "{model}/{gpu_type}")
            .replace("orgs/acme", "orgs/{org}")
        )
        assert method.lower() in doc["paths"][template], (method, template)
    assert "NewKey" in doc["components"]["schemas"]


class SlowMeter(Meter):
    """A real meter whose key lookups for one secret wait until released: a busy read path."""

    def __init__(self, *args: object, **kw: object) -> None:
        super().__init__(*args, **kw)  # type: ignore[arg-type]
        self.slow_secret: str | None = None
        self.entered = threading.Event()
        self.release = threading.Event()

    def verify_key(self, secret: str) -> ApiKey | None:
        if secret == self.slow_secret:
            self.entered.set()
            self.release.wait(30)
        return super().verify_key(secret)


def test_auth_runs_off_the_event_loop(tmp_path: Path) -> None:
    meter = SlowMeter(tmp_path / "m.db")
    with control_node(tmp_path / "m.db", meter=meter) as node:
        meter.slow_secret = node.llm
        result: list[int] = []
        slow = threading.Thread(
            target=lambda: result.append(node.call("GET", "/v1/models", node.llm).status_code)
        )
        slow.start()
        assert meter.entered.wait(30)
        began = time.perf_counter()
        # While that lookup is stuck, the loop still serves other keys and open routes.
        assert node.call("GET", "/health").status_code == 200
        assert node.chat(node.admin, max_tokens=2).status_code == 200
        assert time.perf_counter() - began < 5
        assert result == []
        meter.release.set()
        slow.join(30)
        assert result == [200]
