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
        "f002_config",
        # Keys, orgs and prices of the whole fleet. Every change gets the next `version` from
        # one sequence, under one transaction-wide advisory lock taken by the trigger itself,
        # so versions commit in the order they are handed out (whoever writes: a node, the
        # CLI, psql) and a reader that has seen version N has seen every change up to N.
        # A deleted key stays as a tombstone (`deleted`), so nodes that poll learn of it.
        """
        CREATE SEQUENCE config_version;
        CREATE TABLE api_keys (
            id text PRIMARY KEY,
            secret_sha256 text NOT NULL UNIQUE,         -- hex SHA-256; never the secret
            level text NOT NULL CHECK (level IN ('LLM', 'ADMIN')),
            comment text,
            org text,
            created bigint NOT NULL,
            expires bigint,
            rpm bigint,
            tpm bigint,
            max_parallel bigint,
            budget_micro bigint,
            budget_period text,
            deleted boolean NOT NULL DEFAULT false,
            version bigint NOT NULL
        );
        CREATE TABLE orgs (
            name text PRIMARY KEY,
            budget_micro bigint,
            budget_period text,
            version bigint NOT NULL
        );
        CREATE TABLE prices (
            id bigserial PRIMARY KEY,
            model text NOT NULL,
            gpu_type text NOT NULL,
            prompt_micro bigint NOT NULL CHECK (prompt_micro >= 0),
            completion_micro bigint NOT NULL CHECK (completion_micro >= 0),
            currency text NOT NULL,
            valid_from bigint NOT NULL,
            valid_until bigint,
            version bigint NOT NULL
        );
        CREATE UNIQUE INDEX prices_open ON prices (model, lower(gpu_type))
            WHERE valid_until IS NULL;
        CREATE INDEX api_keys_version ON api_keys (version);
        CREATE INDEX orgs_version ON orgs (version);
        CREATE INDEX prices_version ON prices (version);
        CREATE FUNCTION config_changed() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_advisory_xact_lock(7236891287);
            NEW.version := nextval('config_version');
            PERFORM pg_notify('llm_node_config', NEW.version::text);
            RETURN NEW;
        END $$;
        CREATE TRIGGER api_keys_version BEFORE INSERT OR UPDATE ON api_keys
            FOR EACH ROW EXECUTE FUNCTION config_changed();
        CREATE TRIGGER orgs_version BEFORE INSERT OR UPDATE ON orgs
            FOR EACH ROW EXECUTE FUNCTION config_changed();
        CREATE TRIGGER prices_version BEFORE INSERT OR UPDATE ON prices
            FOR EACH ROW EXECUTE FUNCTION config_changed();
        """,
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
