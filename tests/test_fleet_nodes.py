"""Two real `llm-node serve` processes on one real PostgreSQL: every row exactly once, also
when PostgreSQL stops in the middle of traffic and when a node is killed with kill -9.

The real model through real llama-cpp-python, few requests, max_tokens 4.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path

import httpx
import openai
import pytest

from tests.fleet_support import PostgresServer, ServeProcess, new_database, query

MODEL = "smollm2-135m"
FINAL = "id, status, prompt_tokens, cached_tokens, completion_tokens, cost_units"


class Fleet:
    def __init__(self, url: str, nodes: list[ServeProcess], secrets: dict[str, str]) -> None:
        self.url, self.nodes, self.secrets = url, nodes, secrets

    def chat(self, node: ServeProcess, text: str, max_tokens: int = 4) -> str:
        """One request through the official client; its request id."""
        client = openai.OpenAI(base_url=f"{node.url}/v1", api_key=self.secrets[node.name])
        raw = client.chat.completions.with_raw_response.create(
            model=MODEL,
            messages=[{"role": "user", "content": text}],
            max_tokens=max_tokens,
            temperature=0,
        )
        return raw.headers["x-request-id"]

    def completion(self, node: ServeProcess, text: str) -> str:
        """One request as raw HTTP; its request id."""
        response = httpx.post(
            f"{node.url}/v1/completions",
            headers={"Authorization": f"Bearer {self.secrets[node.name]}"},
            json={"model": MODEL, "prompt": text, "max_tokens": 4, "temperature": 0},
            timeout=60,
        )
        assert response.status_code == 200, response.text
        return response.headers["x-request-id"]

    def assert_exported_exactly_once(self) -> list[tuple[object, ...]]:
        """Wait until each node's watermark reaches its last row, then compare row by row."""
        for node in self.nodes:
            wait_for(lambda n=node: export_pending(n) == 0, f"{node.name} to catch up")
        local = {
            (node.name, *row)
            for node in self.nodes
            for row in node.local_rows(FINAL + ", seq")
            if row[1] != "running"
        }
        fleet = query(
            self.url, f"SELECT node_id, {FINAL.replace('id,', 'request_id,')}, seq FROM requests"
        )
        assert len(fleet) == len({row[1] for row in fleet}), "a request counted twice"
        assert set(fleet) == local
        return fleet


def export_pending(node: ServeProcess) -> int:
    import sqlite3

    conn = sqlite3.connect(f"file:{node.db}?mode=ro", uri=True)
    try:
        last, exported = conn.execute("SELECT last_seq, exported_seq FROM export_state").fetchone()
    finally:
        conn.close()
    return last - exported


def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def fleet(
    postgres: PostgresServer, tmp_path_factory: pytest.TempPathFactory, default_gguf: Path
) -> Iterator[Fleet]:
    root = tmp_path_factory.mktemp("fleet")
    url = new_database(postgres)
    nodes = [ServeProcess(root, name, url, default_gguf) for name in ("node-a", "node-b")]
    secrets = {}
    for node in nodes:
        created = json.loads(node.cli("api-keys", "create", "--level", "llm", "--json"))
        secrets[node.name] = created["secret"]
        node.cli("prices", "set", MODEL, "cpu", "--prompt", "2.5", "--completion", "10.000001")
    try:
        for node in nodes:
            node.start()
        yield Fleet(url, nodes, secrets)
    finally:
        for node in nodes:
            node.stop()
        for node in nodes:
            print(node.log_path.read_text()[-3000:])


def test_rows_of_both_nodes_reach_postgres_exactly_once(fleet: Fleet) -> None:
    a, b = fleet.nodes
    ids = {fleet.chat(a, "Say hi."), fleet.completion(b, "One, two,"), fleet.chat(b, "Hello")}
    rows = fleet.assert_exported_exactly_once()
    assert ids <= {row[1] for row in rows}
    assert {row[0] for row in rows} == {"node-a", "node-b"}
    assert all(row[6] > 0 for row in rows)  # priced: exact costs travelled
    assert a.health()["fleet_db"] == "up"
    assert a.metric("llm_node_fleet_export_lag_rows") == 0
    assert a.metric("llm_node_fleet_export_last_success_timestamp_seconds") > 0


def test_postgres_stopped_mid_traffic_then_caught_up_exactly_once(
    fleet: Fleet, postgres: PostgresServer
) -> None:
    a, b = fleet.nodes
    fleet.chat(a, "Before the outage.")
    postgres.stop()
    try:
        during = [fleet.chat(a, "During the outage."), fleet.completion(b, "Still serving")]
        wait_for(lambda: a.health()["fleet_db"] == "down", "node-a to notice the outage")
        wait_for(lambda: b.health()["fleet_db"] == "down", "node-b to notice the outage")
        health = b.health()  # still 200 (checked there), and the body says why rows wait
        assert health["status"] == "ok" and health["fleet_export_lag_rows"] >= 1
        assert a.metric("llm_node_fleet_export_lag_rows") >= 1
        assert a.metric("llm_node_fleet_db_up") == 0
        assert a.metric("llm_node_fleet_export_failures_total") >= 1
        assert export_pending(a) >= 1 and export_pending(b) >= 1
    finally:
        postgres.start()
    rows = fleet.assert_exported_exactly_once()
    assert set(during) <= {row[1] for row in rows}
    wait_for(lambda: a.health()["fleet_db"] == "up", "node-a to reconnect")


def test_node_killed_during_export_restarts_without_duplicate_or_missing_row(
    fleet: Fleet,
) -> None:
    a, _ = fleet.nodes
    long_prompt = "Count the words: " + "apple " * 1500  # a prefill long enough to kill in
    outcome: list[BaseException | str] = []

    def doomed() -> None:
        try:
            outcome.append(fleet.chat(a, long_prompt))
        except BaseException as exc:  # the connection dies with the node
            outcome.append(exc)

    finished = [fleet.chat(a, "Quick one."), fleet.chat(a, "Another.")]
    thread = threading.Thread(target=doomed)
    thread.start()
    wait_for(
        lambda: any(row[1] == "running" for row in a.local_rows(FINAL)),
        "the long request's row to open",
    )
    a.kill()
    thread.join(60)
    assert outcome and not isinstance(outcome[0], str), "the request finished before the kill"
    (running,) = [row[0] for row in a.local_rows(FINAL) if row[1] == "running"]
    a.start()  # recovery makes the row interrupted, with its prompt tokens, and numbers it
    rows = fleet.assert_exported_exactly_once()
    by_id = {row[1]: row for row in rows}
    assert by_id[running][2] == "interrupted"
    assert by_id[running][3] > 1500  # its prompt tokens are billed
    assert set(finished) <= set(by_id)


def test_fleet_billing_totals_equal_the_sum_of_both_nodes(fleet: Fleet) -> None:
    a, b = fleet.nodes
    fleet.chat(b, "One more for the bill.")
    fleet.assert_exported_exactly_once()
    local = {n.name: json.loads(n.cli("billing", "status", "--json"))["total"] for n in (a, b)}
    total = json.loads(a.cli("billing", "status", "--fleet-db", fleet.url, "--json"))["total"]
    for field in ("requests", "prompt_tokens", "cached_tokens", "completion_tokens"):
        assert total[field] == local["node-a"][field] + local["node-b"][field]
    assert Decimal(total["cost"]) == Decimal(local["node-a"]["cost"]) + Decimal(
        local["node-b"]["cost"]
    )
    by_node = json.loads(
        b.cli("billing", "status", "--fleet-db", fleet.url, "--by", "node", "--json")
    )
    assert {row["node_id"]: row for row in by_node["rows"]} == {
        name: {"node_id": name, **sums} for name, sums in local.items()
    }
    listed = json.loads(
        a.cli("billing", "requests", "--fleet-db", fleet.url, "--limit", "1000", "--json")
    )
    assert len(listed) == total["requests"]
    assert {row["node_id"] for row in listed} == {"node-a", "node-b"}
    table = a.cli("billing", "status", "--fleet-db", fleet.url, "--by", "node")
    assert "node-a" in table and "node-b" in table and "TOTAL" in table
