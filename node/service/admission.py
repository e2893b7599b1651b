"""Who asks for what (enough to open a meter row), and who watches requests run."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from node.engine.interface import TokenCounts
from node.meter import ApiKey


@dataclass(frozen=True)
class Admission:
    """Who asks for what; enough to open the meter row."""

    request_id: str
    key: ApiKey
    endpoint: str  # "chat.completions" | "completions" | "embeddings"
    user: str | None


class UsageObserver(Protocol):
    """Live statistics (Prometheus); told about every request the service runs."""

    def started(self, model: str) -> None: ...

    def first_token(self, model: str, seconds: float) -> None: ...

    def finished(
        self,
        *,
        model: str,
        key_id: str,
        endpoint: str,
        status: str,
        counts: TokenCounts,
        seconds: float,
        prefill_seconds: float | None,
    ) -> None: ...
