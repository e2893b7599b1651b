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
    (
        "f003_config",
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
            cached_micro bigint CHECK (cached_micro >= 0),  -- NULL: at the prompt price
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
    (
        "f004_budgets",
        # Fleet-wide budgets. `budget_spend`: per scope (key or org), name and UTC day
        # (1 + days since the epoch), the settled cost of exported rows and the maximum cost
        # reserved by admitted requests not exported yet. `budget_reserve` checks and holds a
        # request's maximum cost in one call, under a row lock on the key (and org) row, so
        # nodes admitting together never overrun a budget. The export of a row (the trigger
        # on `requests`) releases its reservation and settles its real cost, exactly once:
        # a row the conflict clause drops is not in the transition table.
        """
        CREATE TABLE budget_spend (
            scope text NOT NULL CHECK (scope IN ('key', 'org')),
            name text NOT NULL,
            day integer NOT NULL,
            settled bigint NOT NULL DEFAULT 0,          -- 10^-12 currency
            reserved bigint NOT NULL DEFAULT 0,
            PRIMARY KEY (scope, name, day)
        );
        CREATE TABLE budget_reservations (
            request_id text PRIMARY KEY,
            node_id text NOT NULL,
            key_id text NOT NULL,
            org text,
            day integer NOT NULL,
            units bigint NOT NULL,
            created timestamptz NOT NULL DEFAULT now()
        );
        INSERT INTO budget_spend (scope, name, day, settled)
            SELECT 'key', key_id, (started / 86400000000 + 1)::int, sum(cost_units)
            FROM requests GROUP BY 1, 2, 3
            UNION ALL
            SELECT 'org', org, (started / 86400000000 + 1)::int, sum(cost_units)
            FROM requests WHERE org IS NOT NULL GROUP BY 1, 2, 3;

        CREATE FUNCTION requests_settle() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            WITH released AS (
                DELETE FROM budget_reservations r USING new_rows n
                WHERE r.request_id = n.request_id
                RETURNING r.key_id, r.org, r.day, r.units
            ), moves (scope, name, day, settled, reserved) AS (
                SELECT 'key', key_id, day, 0::bigint, -units FROM released
                UNION ALL
                SELECT 'org', org, day, 0::bigint, -units FROM released WHERE org IS NOT NULL
                UNION ALL
                SELECT 'key', key_id, (started / 86400000000 + 1)::int, cost_units, 0::bigint
                FROM new_rows
                UNION ALL
                SELECT 'org', org, (started / 86400000000 + 1)::int, cost_units, 0::bigint
                FROM new_rows WHERE org IS NOT NULL
            )
            INSERT INTO budget_spend AS s (scope, name, day, settled, reserved)
            SELECT scope, name, day, sum(settled), sum(reserved) FROM moves
            GROUP BY 1, 2, 3 ORDER BY 1, 2, 3           -- one lock order everywhere
            ON CONFLICT (scope, name, day) DO UPDATE
            SET settled = s.settled + excluded.settled, reserved = s.reserved + excluded.reserved;
            RETURN NULL;
        END $$;
        CREATE TRIGGER requests_settle AFTER INSERT ON requests
            REFERENCING NEW TABLE AS new_rows
            FOR EACH STATEMENT EXECUTE FUNCTION requests_settle();

        CREATE FUNCTION budget_reserve(
            p_request text, p_node text, p_key text, p_org text, p_now bigint, p_units bigint,
            OUT refused_scope text, OUT refused_name text, OUT budget_micro bigint,
            OUT budget_period text, OUT settled bigint, OUT key_left bigint, OUT org_left bigint,
            OUT checked integer                         -- budgets found and checked
        ) LANGUAGE plpgsql AS $$
        DECLARE
            v_day integer := (p_now / 86400000000 + 1)::int;
            v_at timestamp := to_timestamp(p_now / 1000000.0) AT TIME ZONE 'UTC';
            v_scope text;
            v_name text;
            v_micro bigint;
            v_period text;
            v_since integer;
            v_settled bigint;
            v_reserved bigint;
            v_left bigint;
        BEGIN
            checked := 0;
            IF EXISTS (SELECT 1 FROM budget_reservations WHERE request_id = p_request) THEN
                checked := 1;
                RETURN;                                 -- asked twice: held once
            END IF;
            FOR v_scope, v_name IN
                SELECT * FROM (VALUES ('key', p_key), ('org', p_org)) AS s (scope, name)
                WHERE name IS NOT NULL
            LOOP
                IF v_scope = 'key' THEN
                    SELECT k.budget_micro, k.budget_period INTO v_micro, v_period
                    FROM api_keys k WHERE k.id = v_name FOR UPDATE;
                ELSE
                    SELECT o.budget_micro, o.budget_period INTO v_micro, v_period
                    FROM orgs o WHERE o.name = v_name FOR UPDATE;
                END IF;
                CONTINUE WHEN v_micro IS NULL OR v_period IS NULL;
                checked := checked + 1;
                v_since := CASE WHEN v_period = 'total' THEN 0 ELSE
                    (extract(epoch FROM date_trunc(v_period, v_at))::bigint / 86400 + 1)::int END;
                SELECT coalesce(sum(b.settled), 0), coalesce(sum(b.reserved), 0)
                INTO v_settled, v_reserved
                FROM budget_spend b
                WHERE b.scope = v_scope AND b.name = v_name AND b.day >= v_since;
                v_left := v_micro * 1000000 - v_settled - v_reserved;
                IF p_units > v_left THEN
                    refused_scope := v_scope;
                    refused_name := v_name;
                    budget_micro := v_micro;
                    budget_period := v_period;
                    settled := v_settled;
                    key_left := NULL;
                    org_left := NULL;
                    RETURN;
                END IF;
                IF v_scope = 'key' THEN key_left := v_left - p_units;
                ELSE org_left := v_left - p_units; END IF;
            END LOOP;
            IF checked = 0 THEN
                RETURN;                                 -- no budget here: nothing to hold
            END IF;
            INSERT INTO budget_reservations (request_id, node_id, key_id, org, day, units)
            VALUES (p_request, p_node, p_key, p_org, v_day, p_units);
            INSERT INTO budget_spend AS b (scope, name, day, reserved)
            SELECT * FROM (VALUES ('key', p_key, v_day, p_units), ('org', p_org, v_day, p_units))
                AS m (scope, name, day, units)
            WHERE name IS NOT NULL ORDER BY 1, 2
            ON CONFLICT (scope, name, day) DO UPDATE SET reserved = b.reserved + excluded.reserved;
        END $$;

        CREATE FUNCTION budget_release(p_request text) RETURNS void LANGUAGE plpgsql AS $$
        BEGIN
            WITH released AS (
                DELETE FROM budget_reservations WHERE request_id = p_request
                RETURNING key_id, org, day, units
            ), moves (scope, name, day, units) AS (
                SELECT 'key', key_id, day, units FROM released
                UNION ALL SELECT 'org', org, day, units FROM released WHERE org IS NOT NULL
            )
            UPDATE budget_spend b SET reserved = b.reserved - m.units FROM moves m
            WHERE b.scope = m.scope AND b.name = m.name AND b.day = m.day;
        END $$;
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
