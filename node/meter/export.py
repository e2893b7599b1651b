"""The local side of the fleet export: final rows by sequence number, the watermark, node id.

Every final row has a `seq` (see schema `m005_export_seq`); the exporter reads rows past the
watermark and, once PostgreSQL committed them, moves the watermark. No psycopg here.
"""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass
from typing import Any

NODE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")

# The exported columns, in the order `rows_after` returns them.
COLUMNS = (
    "seq",
    "id",
    "key_id",
    "org",
    "endpoint",
    "model",
    "quant_type",
    "gpu_type",
    "gpu_name",
    "status",
    "prompt_tokens",
    "cached_tokens",
    "completion_tokens",
    "prompt_price_micro",
    "completion_price_micro",
    "cached_price_micro",
    "currency",
    "cost_units",
    "user",
    "started",
    "finished",
)


@dataclass(frozen=True)
class ExportState:
    node_id: str
    last_seq: int  # the newest final row
    exported_seq: int  # the watermark: every row up to it is in PostgreSQL
    exported_at: int | None  # µs; when the watermark last moved

    @property
    def pending(self) -> int:
        return self.last_seq - self.exported_seq


class NodeIdConflict(ValueError):
    """A different node id was asked for after rows were exported under the stored one."""


def check_node_id(node_id: str) -> str:
    if not NODE_ID.match(node_id):
        raise ValueError(
            f"node id {node_id!r} must be 1-64 letters, digits, '.', '_' or '-',"
            " starting with a letter or digit"
        )
    return node_id


def state(conn: sqlite3.Connection) -> ExportState:
    node_id, last_seq, exported_seq, exported_at = conn.execute(
        "SELECT node_id, last_seq, exported_seq, exported_at FROM export_state WHERE id = 1"
    ).fetchone()
    return ExportState(node_id, last_seq, exported_seq, exported_at)


def rows_after(conn: sqlite3.Connection, seq: int, limit: int) -> list[tuple[Any, ...]]:
    """Final rows with a sequence number above `seq`, in sequence order."""
    return conn.execute(
        f"SELECT {', '.join(COLUMNS)} FROM requests WHERE seq > ? ORDER BY seq LIMIT ?",
        (seq, limit),
    ).fetchall()


def finished_of(conn: sqlite3.Connection, seq: int) -> int | None:
    """The `finished` time of the first row after `seq` (the oldest one waiting)."""
    row = conn.execute(
        "SELECT finished FROM requests WHERE seq > ? ORDER BY seq LIMIT 1", (seq,)
    ).fetchone()
    return None if row is None else row[0]


def acknowledge(conn: sqlite3.Connection, seq: int, *, now_us: int) -> None:
    """PostgreSQL holds every row up to `seq`; the watermark never moves back."""
    conn.execute(
        "UPDATE export_state SET exported_seq = ?, exported_at = ? WHERE id = 1"
        " AND exported_seq < ? AND ? <= last_seq",
        (seq, now_us, seq, seq),
    )


def claim_node_id(conn: sqlite3.Connection, wanted: str | None) -> str:
    """The node's id: the stored one, or `wanted` stored once no row went out under another."""
    current = state(conn)
    if wanted is None or wanted == current.node_id:
        return current.node_id
    check_node_id(wanted)
    if current.exported_seq > 0:
        raise NodeIdConflict(
            f"this meter exported rows as node {current.node_id!r}; it cannot become"
            f" {wanted!r} (use a new meter database for a new node)"
        )
    conn.execute("UPDATE export_state SET node_id = ? WHERE id = 1", (wanted,))
    return wanted
