"""A budget shared by two real `llm-node serve` processes on one real PostgreSQL: under
concurrent load on both nodes the key's spending never passes its budget, and the fleet's
totals equal the rows to the last cost unit. With PostgreSQL stopped, the default policy
(`refuse`) refuses budgeted requests with 503 while unbudgeted keys are served on.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from tests.fleet_support import PostgresServer, ServeProcess, new_database, query
from tests.test_fleet_nodes import export_pending, wait_for

MODEL = "smollm2-135m"
MAX_TOKENS = 4
# Prompt tokens cost nothing, so every request's maximum cost is exactly 4 completion tokens:
# 4 x 1000 / 1M = 0.004. The budget holds 5 of them; 2 nodes x 4 clients ask for 40.
BUDGET = Decimal("0.02")
UNITS = 10**12  # cost units per currency unit


class Fleet:
    def __init__(self, url: str, nodes: list[ServeProcess], budgeted: str, free: str) -> None:
        self.url, self.nodes, self.budgeted, self.free = url, nodes, budgeted, free

    def chat(self, node: ServeProcess, secret: str, text: str) -> httpx.Response:
        return httpx.post(
            f"{node.url}/v1/chat/completions",
            headers={"Authorization": f"Bearer {secret}"},
            json={
                "model": MODEL,
                "messages": [{"role": "user", "content": text}],
                "max_tokens": MAX_TOKENS,
                "temperature": 0,
            },
            timeout=120,
        )


@pytest.fixture(scope="module")
def fleet(
    postgres: PostgresServer, tmp_path_factory: pytest.TempPathFactory, default_gguf: Path
) -> Iterator[Fleet]:
    root = tmp_path_factory.mktemp("fleet-budgets")
    url = new_database(postgres)
    nodes = [ServeProcess(root, name, url, default_gguf) for name in ("node-a", "node-b")]
    a = nodes[0]
    a.cli("prices", "set", MODEL, "cpu", "--prompt", "0", "--completion", "1000",
          "--fleet-db", url)  # fmt: skip
    budgeted = json.loads(
        a.cli("api-keys", "create", "--level", "llm", "--org", "shared", "--budget",
              str(BUDGET), "--budget-period", "day", "--fleet-db", url, "--json")
    )  # fmt: skip
    free = json.loads(a.cli("api-keys", "create", "--level", "llm", "--fleet-db", url, "--json"))
    try:
        for node in nodes:
            node.start()
        yield Fleet(url, nodes, budgeted["secret"], free["secret"])
    finally:
        for node in nodes:
            node.stop()
        for node in nodes:
            print(node.log_path.read_text()[-3000:])


def test_a_budget_shared_by_both_nodes_under_load_is_never_overrun(fleet: Fleet) -> None:
    statuses: Counter[int] = Counter()
    lock = threading.Lock()

    def client(node: ServeProcess, n: int) -> None:
        for i in range(5):
            status = fleet.chat(node, fleet.budgeted, f"Client {n} asks {i}: say a word.")
            with lock:
                statuses[status.status_code] += 1

    threads = [
        threading.Thread(target=client, args=(node, n)) for node in fleet.nodes for n in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    assert set(statuses) <= {200, 429}, statuses
    assert statuses[200] >= 1 and statuses[429] >= 1, statuses  # the budget did bite
    for node in fleet.nodes:
        wait_for(lambda n=node: export_pending(n) == 0, f"{node.name} to catch up")
    ((key_id,),) = query(fleet.url, "SELECT id FROM api_keys WHERE org = 'shared'")
    ((spent, served),) = query(
        fleet.url,
        "SELECT coalesce(sum(cost_units), 0), count(*) FILTER (WHERE status = 'ok')"
        " FROM requests WHERE key_id = %s",
        (key_id,),
    )
    assert served == statuses[200]
    assert 0 < spent <= BUDGET * UNITS  # never overrun, across both nodes together
    # Exact totals: the local meters, the exported rows and the budget's settled sum agree,
    # and nothing is left reserved once every row is exported.
    local = sum(row[0] for node in fleet.nodes for row in node.local_rows("cost_units") if row[0])
    assert local == spent
    ((settled, reserved),) = query(
        fleet.url,
        "SELECT sum(settled), sum(reserved) FROM budget_spend WHERE scope = 'key' AND name = %s",
        (key_id,),
    )
    assert (settled, reserved) == (spent, 0)
    assert query(fleet.url, "SELECT count(*) FROM budget_reservations") == [(0,)]
    listed = json.loads(fleet.nodes[1].cli("api-keys", "list", "--fleet-db", fleet.url, "--json"))
    (row,) = [r for r in listed if r["id"] == key_id]
    assert Decimal(row["budget"]["spent"]) == Decimal(spent) / UNITS
    assert Decimal(row["budget"]["remaining"]) == BUDGET - Decimal(spent) / UNITS


def test_postgres_down_refuses_budgeted_requests_and_serves_the_rest(
    fleet: Fleet, postgres: PostgresServer
) -> None:
    a = fleet.nodes[0]
    postgres.stop()
    try:
        refused = fleet.chat(a, fleet.budgeted, "Anyone there?")
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"]["code"] == "fleet_db_unavailable"
        assert fleet.chat(a, fleet.free, "Anyone there?").status_code == 200
    finally:
        postgres.start()
