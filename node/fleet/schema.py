"""The fleet's PostgreSQL tables: ordered, named, idempotent migrations, like the meter's.

Add a new entry at the end to change the schema; never edit one that has shipped. Every node
migrates when it connects; an advisory lock makes concurrent starts apply each step once.
Times are integer microseconds since the epoch (UTC) and money integers of fixed minor units,
exactly as in the local meter, so a row reads the same in both places.
"""

from __future__ import annotations

from typing import Any

MIGRATIONS_TABLE = "llm_node_migrations"
_LOCK = 0x6C6C6D2D6E6F6465  # pg_advisory_xact_lock key: "llm-node"

MIGRATIONS: list[tuple[str, str]] = [
    (
        "f001_nodes_requests",
        """
        CREATE TABLE nodes (
            node_id text PRIMARY KEY,
            first_export timestamptz NOT NULL DEFAULT now(),
            last_export timestamptz NOT NULL DEFAULT now(),
            exported_seq bigint NOT NULL DEFAULT 0     -- the node's watermark, as last told
        );
        CREATE TABLE requests (
            request_id text PRIMARY KEY,               -- unique across nodes (UUID4)
            node_id text NOT NULL,
            seq bigint NOT NULL,                       -- the node's local sequence number
            key_id text NOT NULL,
            org text,
            endpoint text NOT NULL,
            model text NOT NULL,
            quant_type text NOT NULL,
            gpu_type text NOT NULL,
            gpu_name text NOT NULL,
            status text NOT NULL,
            prompt_tokens bigint NOT NULL,
            cached_tokens bigint NOT NULL,
            completion_tokens bigint NOT NULL,
            prompt_price_micro bigint,                 -- NULL: no price applied (cost 0)
            completion_price_micro bigint,
            currency text,
            cost_units bigint NOT NULL,                -- 10^-12 currency
            "user" text,
            started bigint NOT NULL,                   -- µs since the epoch, UTC
            finished bigint,
            exported_at timestamptz NOT NULL DEFAULT now()
        );
        CREATE INDEX requests_started ON requests (started);
        CREATE INDEX requests_node_seq ON requests (node_id, seq);
        CREATE INDEX requests_key ON requests (key_id, started);
        """,
    ),
    (
        "f002_cached_price",
        # The optional price of prompt tokens restored from the prompt cache (meter m006).
        "ALTER TABLE requests ADD COLUMN cached_price_micro bigint;",
    ),
]


def pending(conn: Any) -> list[str]:
    """Migrations not applied yet; reads only (a read-only role may run reports)."""
    with conn.transaction():
        exists = conn.execute("SELECT to_regclass(%s)", (MIGRATIONS_TABLE,)).fetchone()[0]
        done = set()
        if exists is not None:
            done = {name for (name,) in conn.execute(f"SELECT name FROM {MIGRATIONS_TABLE}")}
    return [name for name, _ in MIGRATIONS if name not in done]


def migrate(conn: Any) -> list[str]:
    """Apply pending migrations in one transaction; returns the names applied (often none)."""
    if not pending(conn):
        return []
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK,))
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS {MIGRATIONS_TABLE} ("
            " name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {name for (name,) in conn.execute(f"SELECT name FROM {MIGRATIONS_TABLE}")}
        applied = []
        for name, sql in MIGRATIONS:
            if name in done:
                continue
            conn.execute(sql)
            conn.execute(f"INSERT INTO {MIGRATIONS_TABLE} (name) VALUES (%s)", (name,))
            applied.append(name)
    return applied
