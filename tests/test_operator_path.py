"""The README's operator path, run for real without Docker: the image's command in the image's
layout (working directory with `models -> /models`, meter under LLM_NODE_DB), its HEALTHCHECK,
then keys, prices, a metered request and billing through the `llm-node` CLI beside the server.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from test_dockerfile import FINAL, ROOT, exec_form, run_healthcheck, values

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def image_env(data: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLM_NODE_")}
    env["LLM_NODE_DB"] = str(data / "llm-node.db")  # the image's ENV, under a temporary /data
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"  # the image puts its venv first
    return env


class Node:
    def __init__(self, app: Path, env: dict[str, str], port: int) -> None:
        self.app, self.env, self.port = app, env, port
        self.url = f"http://127.0.0.1:{port}"

    def cli(self, *args: str) -> str:
        """`docker exec NAME llm-node ARGS`: same working directory and environment."""
        done = subprocess.run(
            ["llm-node", *args],
            cwd=self.app,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, f"llm-node {' '.join(args)}: {done.stderr}"
        return done.stdout


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    root = tmp_path_factory.mktemp("image")
    volume, data, app = root / "models", root / "data", root / "app"
    for folder in (volume, data, app):
        folder.mkdir()
    shutil.copy(ROOT / "models" / "models.toml", volume / "models.toml")  # what the image ships
    (app / "models").symlink_to(volume)
    port = free_port()
    command = exec_form(values(FINAL, "ENTRYPOINT")[-1]) + exec_form(values(FINAL, "CMD")[-1])
    command[command.index("--port") + 1] = str(port)
    env = image_env(data)
    log = (root / "serve.log").open("w")
    server = subprocess.Popen(command, cwd=app, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 180
        while run_healthcheck(port) != 0:
            assert server.poll() is None, (root / "serve.log").read_text()
            assert time.monotonic() < deadline, "the node did not become healthy in 180 s"
            time.sleep(0.5)
        yield Node(app, env, port)
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


def test_image_command_serves_the_embedded_default_and_goes_healthy(node: Node) -> None:
    health = httpx.get(f"{node.url}/health", timeout=10)
    assert health.status_code == 200
    assert health.json() == {"status": "ok"}
    assert httpx.get(f"{node.url}/v1/models", timeout=10).status_code == 401


def test_operator_path_meters_a_priced_request(node: Node) -> None:
    created = json.loads(
        node.cli("api-keys", "create", "--level", "LLM", "--comment", "ops", "--json")
    )
    auth = {"Authorization": f"Bearer {created['secret']}"}
    cards = httpx.get(f"{node.url}/v1/models", headers=auth, timeout=10).json()["data"]
    assert {card["id"] for card in cards} == {"smollm2-135m", "smollm2-135m-embed"}
    gpu_type = cards[0]["gpu_type"]
    node.cli(
        "prices", "set", "smollm2-135m", gpu_type, "--prompt", "19.78", "--completion", "167.66"
    )

    reply = httpx.post(
        f"{node.url}/v1/chat/completions",
        headers=auth,
        json={
            "model": "smollm2-135m",
            "messages": [{"role": "user", "content": "Name three colours."}],
            "max_tokens": 8,
            "temperature": 0,
            "user": "alice",
        },
        timeout=120,
    )
    assert reply.status_code == 200, reply.text
    usage = reply.json()["usage"]
    expected = (
        usage["prompt_tokens"] * Decimal("19.78") + usage["completion_tokens"] * Decimal("167.66")
    ) / 1_000_000
    assert Decimal(usage["cost"]) == expected
    assert usage["currency"] == "PLN"

    rows = json.loads(node.cli("billing", "requests", "--key", created["id"], "--json"))
    assert [row["id"] for row in rows] == [reply.headers["x-request-id"]]
    assert rows[0]["status"] == "ok"
    assert rows[0]["gpu_type"] == gpu_type
    assert Decimal(rows[0]["cost"]) == expected
    assert rows[0]["completion_tokens"] == usage["completion_tokens"]

    status = json.loads(node.cli("billing", "status", "--key", created["id"], "--json"))
    assert status["total"]["requests"] == 1
    assert Decimal(status["total"]["cost"]) == expected

    node.cli("api-keys", "delete", created["id"])
    again = httpx.get(f"{node.url}/v1/models", headers=auth, timeout=10)
    assert again.status_code == 401
    assert again.json()["error"]["code"] == "invalid_api_key"
