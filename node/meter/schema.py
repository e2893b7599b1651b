"""The meter's tables: ordered, named, idempotent migrations (sqlite-utils `Migrations`).

Add a new function at the end to change the schema; never edit one that has shipped.
Times are integer microseconds since the epoch (UTC); money is integers of fixed minor units
(see `money.py`).
"""

from __future__ import annotations

from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

migrations = Migrations("llm-node-meter")

# The export sequence (m005): a final row gets the next number in the transaction that makes it
# final. Kept here, outside the migration, because `restore_seq_triggers` needs them too.
_SEQ_BODY = """
    WHEN NEW.status != 'running' AND NEW.seq IS NULL
    BEGIN
        UPDATE export_state SET last_seq = last_seq + 1;
        UPDATE requests SET seq = (SELECT last_seq FROM export_state) WHERE id = NEW.id;
    END"""
SEQ_TRIGGERS = {
    "requests_seq_final": (
        f"CREATE TRIGGER requests_seq_final AFTER UPDATE OF status ON requests{_SEQ_BODY}"
    ),
    "requests_seq_new": f"CREATE TRIGGER requests_seq_new AFTER INSERT ON requests{_SEQ_BODY}",
}


def restore_seq_triggers(db: Database) -> list[str]:
    """Recreate export triggers a later table rebuild dropped (inside the migration's write
    transaction); the names recreated, normally none."""
    if "export_state" not in db.table_names():
        return []
    present = {
        row[0]
        for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall()
    }
    missing = [name for name in SEQ_TRIGGERS if name not in present]
    for name in missing:
        db.execute(SEQ_TRIGGERS[name])
    return missing


@migrations()
def m001_api_keys(db: Database) -> None:
    db.execute(
        """
        CREATE TABLE api_keys (
            id TEXT PRIMARY KEY,
            secret_sha256 TEXT NOT NULL UNIQUE,   -- hex SHA-256 of the secret; never the secret
            level TEXT NOT NULL CHECK (level IN ('LLM', 'ADMIN')),
            comment TEXT,
            org TEXT,
            created INTEGER NOT NULL,
            expires INTEGER,
            last_used INTEGER
        ) STRICT
        """
    )


@migrations()
def m002_prices(db: Database) -> None:
    # One row per validity period; the open period has valid_until NULL.
    db.execute(
        """
        CREATE TABLE prices (
            id INTEGER PRIMARY KEY,
            model TEXT NOT NULL,
            gpu_type TEXT NOT NULL COLLATE NOCASE,
            prompt_micro INTEGER NOT NULL CHECK (prompt_micro >= 0),
            completion_micro INTEGER NOT NULL CHECK (completion_micro >= 0),
            currency TEXT NOT NULL,
            valid_from INTEGER NOT NULL,
            valid_until INTEGER
        ) STRICT
        """
    )
    db.execute(
        "CREATE UNIQUE INDEX prices_open ON prices (model, gpu_type) WHERE valid_until IS NULL"
    )
    db.execute("CREATE INDEX prices_history ON prices (model, gpu_type, valid_from)")


@migrations()
def m003_requests(db: Database) -> None:
    db.execute(
        """
        CREATE TABLE requests (
            id TEXT PRIMARY KEY,
            key_id TEXT NOT NULL,
            org TEXT,
            endpoint TEXT NOT NULL,
            model TEXT NOT NULL,
            quant_type TEXT NOT NULL,
            gpu_type TEXT NOT NULL,
            gpu_name TEXT NOT NULL,
            prompt_tokens INTEGER NOT NULL DEFAULT 0,
            cached_tokens INTEGER NOT NULL DEFAULT 0,
            completion_tokens INTEGER NOT NULL DEFAULT 0,
            started INTEGER NOT NULL,
            checkpointed INTEGER,                 -- time of the last checkpoint
            finished INTEGER,
            prompt_price_micro INTEGER,           -- NULL: no price applied (cost 0)
            completion_price_micro INTEGER,
            currency TEXT,
            cost_units INTEGER NOT NULL DEFAULT 0, -- 10^-12 currency
            user TEXT,
            status TEXT NOT NULL CHECK (
                status IN ('running', 'ok', 'cancelled', 'error', 'interrupted'))
        ) STRICT
        """
    )
    db.execute("CREATE INDEX requests_started ON requests (started)")
    db.execute("CREATE INDEX requests_key ON requests (key_id, started)")
    db.execute("CREATE INDEX requests_running ON requests (status) WHERE status = 'running'")


@migrations()
def m004_controls(db: Database) -> None:
    """Limits and budgets of keys and orgs; reservations and `rejected` rows in requests.

    The requests table is rebuilt from its own stored SQL (so columns another migration added
    survive) to let its status CHECK accept `rejected`; SQLite cannot alter a CHECK in place.
    """
    for column in ("rpm", "tpm", "max_parallel", "budget_micro"):
        db.execute(f"ALTER TABLE api_keys ADD COLUMN {column} INTEGER")
    db.execute("ALTER TABLE api_keys ADD COLUMN budget_period TEXT")
    db.execute(
        """
        CREATE TABLE orgs (
            name TEXT PRIMARY KEY,
            budget_micro INTEGER,                 -- 10^-6 currency; NULL: no budget
            budget_period TEXT
        ) STRICT
        """
    )
    (sql,) = db.execute("SELECT sql FROM sqlite_master WHERE name = 'requests'").fetchone()
    old_check = "'error', 'interrupted')"
    if old_check not in sql:
        raise RuntimeError("unexpected requests table definition; cannot add 'rejected'")
    sql = sql.replace(old_check, "'error', 'interrupted', 'rejected')", 1)
    sql = sql.replace("CREATE TABLE requests", "CREATE TABLE requests_new", 1)
    indexes = [
        row[0]
        for row in db.execute(
            "SELECT sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'requests'"
            " AND sql IS NOT NULL"
        ).fetchall()
    ]
    db.execute(sql)
    db.execute("INSERT INTO requests_new SELECT * FROM requests")
    db.execute("DROP TABLE requests")
    db.execute("ALTER TABLE requests_new RENAME TO requests")
    for index_sql in indexes:
        db.execute(index_sql)
    # The maximum cost held for a running request by budgets; 0 once it is finished.
    db.execute("ALTER TABLE requests ADD COLUMN reserved_units INTEGER NOT NULL DEFAULT 0")
    db.execute("CREATE INDEX requests_org ON requests (org, started)")
    # Running totals of the keys and orgs with a budget (see `spend.py`), in cost units.
    db.execute(
        """
        CREATE TABLE budget_spend (
            scope TEXT NOT NULL CHECK (scope IN ('key', 'org')),
            name TEXT NOT NULL,
            day INTEGER NOT NULL,                 -- 1 + days since the epoch; 0: all time
            settled INTEGER NOT NULL,             -- cost of finished rows
            reserved INTEGER NOT NULL,            -- maximum cost held by running rows
            PRIMARY KEY (scope, name, day)
        ) STRICT, WITHOUT ROWID
        """
    )


@migrations()
def m005_export_seq(db: Database) -> None:
    """Fleet export: a monotonic `seq` on every final row, the export watermark, the node id.

    Triggers give the sequence number in the very transaction that makes a row final (finish,
    recovery of an interrupted row, a row inserted final), so no code path can forget it and a
    reader that sees seq N also sees every seq below N (SQLite has one writer). A counter, not
    max(seq), so pruning rows never hands out a number twice. Rows final before this migration
    are numbered now, oldest first: a node joining a fleet exports its history. A migration that
    rebuilds `requests` drops its triggers; `restore_seq_triggers` puts them back after every
    migration run.
    """
    db.execute(
        """
        CREATE TABLE export_state (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            node_id TEXT NOT NULL,
            last_seq INTEGER NOT NULL,            -- the last seq given to a final row
            exported_seq INTEGER NOT NULL,        -- watermark: rows up to it are in PostgreSQL
            exported_at INTEGER                   -- when the watermark last moved
        ) STRICT
        """
    )
    db.execute("ALTER TABLE requests ADD COLUMN seq INTEGER")
    db.execute(
        "INSERT INTO export_state (id, node_id, last_seq, exported_seq)"
        " VALUES (1, 'node-' || lower(hex(randomblob(6))), 0, 0)"
    )
    db.execute(
        "UPDATE requests SET seq = ranked.n FROM (SELECT id, row_number() OVER"
        " (ORDER BY finished, id) AS n FROM requests WHERE status != 'running') AS ranked"
        " WHERE requests.id = ranked.id"
    )
    db.execute("UPDATE export_state SET last_seq = (SELECT coalesce(max(seq), 0) FROM requests)")
    db.execute("CREATE UNIQUE INDEX requests_seq ON requests (seq) WHERE seq IS NOT NULL")
    for sql in SEQ_TRIGGERS.values():
        db.execute(sql)


@migrations()
def m006_cached_prompt_prices(db: Database) -> None:
    """An optional price for prompt tokens restored from the prompt cache, in the price list and
    copied onto each request row like the other prices (NULL: cached tokens at the prompt price).
    """
    db.execute("ALTER TABLE prices ADD COLUMN cached_micro INTEGER")
    db.execute("ALTER TABLE requests ADD COLUMN cached_price_micro INTEGER")


@migrations()
def m007_fleet_sync(db: Database) -> None:
    """Fleet mode: how far this node's copy of the fleet's keys, orgs and prices has come.

    `version`: the fleet's change counter the local tables reflect; `synced_at`: when the
    fleet database last confirmed them (µs), which bounds how stale a known key may be.
    """
    db.execute(
        """
        CREATE TABLE fleet_sync (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            version INTEGER NOT NULL,
            synced_at INTEGER
        ) STRICT
        """
    )
    db.execute("INSERT INTO fleet_sync (id, version) VALUES (1, 0)")
