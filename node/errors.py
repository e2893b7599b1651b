"""The one base class of every error a client is told about, whichever layer raises it.

Each subclass says once how it is answered: HTTP status, OpenAI error `type` and `code`, the
parameter it blames. The API registers this class alone; nothing else lists error classes.
No imports: the engine, the meter and the service may all subclass it.
"""

from __future__ import annotations

from typing import Any


class NodeError(Exception):
    """An error answered to the client as `{"error": {"message", "type", "param", "code"}}`."""

    status: int = 400
    type: str = "invalid_request_error"
    code: str | None = None
    param: str | None = None

    def client_message(self) -> str:
        """What the client reads; by default the exception's own text."""
        return str(self)

    def headers(self) -> dict[str, str]:
        return {}

    def extra(self) -> dict[str, Any]:
        """Fields beside message/type/param/code (e.g. `n_prompt_tokens`)."""
        return {}
