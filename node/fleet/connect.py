"""Opening PostgreSQL: psycopg imported on demand (an optional extra), bounded waits, and URLs
without their password wherever they are shown."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

if TYPE_CHECKING:
    import psycopg

# A dead server or a lost uplink must fail a call in seconds, never hang the exporter forever.
_DEFAULTS = {
    "connect_timeout": "5",
    "keepalives": "1",
    "keepalives_idle": "10",
    "keepalives_interval": "3",
    "keepalives_count": "3",
    "application_name": "llm-node",
}


class FleetUnavailable(RuntimeError):
    """psycopg is missing, or the fleet database cannot be reached or used."""


def psycopg_module() -> Any:
    try:
        import psycopg
    except ImportError:
        raise FleetUnavailable(
            "fleet mode needs psycopg 3: pip install 'llm-node[fleet]'"
        ) from None
    return psycopg


def check_url(url: str) -> str:
    """A `postgresql://` or `postgres://` URL (libpq's own syntax is refused: it would be hard
    to show without its password)."""
    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres") or not (parts.hostname or parts.path):
        # Not echoed: a libpq keyword string may hold a password anywhere.
        raise ValueError("the fleet database must be a postgresql://user@host/database URL")
    return url


def shown(url: str) -> str:
    """The URL with its password replaced, for logs and errors."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


def connect(url: str, *, autocommit: bool = False) -> psycopg.Connection[Any]:
    psycopg = psycopg_module()
    params = psycopg.conninfo.conninfo_to_dict(url)
    for name, value in _DEFAULTS.items():
        params.setdefault(name, value)
    return psycopg.connect(psycopg.conninfo.make_conninfo(**params), autocommit=autocommit)
