"""What the exporter tells /metrics and /health; plain data, importable without psycopg."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ExportStatus:
    """What /metrics and /health show about the export."""

    node_id: str
    up: bool  # the last attempt to reach PostgreSQL worked
    lag_rows: int  # final rows not yet acknowledged by PostgreSQL
    lag_seconds: float  # how long the oldest of them has waited (0 when none)
    last_success: float | None  # Unix time of the last complete pass
    failures: int  # failed passes since start
    error: str | None  # the last failure, while it lasts
