"""What the service refuses, each saying once how a client is told (see `node.errors`)."""

from __future__ import annotations

from node.errors import NodeError


class AuthenticationFailed(NodeError):
    """Missing, unknown, deleted or expired API key."""

    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class ModelNotFound(NodeError, LookupError):
    """No loaded model of the wanted kind has this name."""

    status = 404
    code = "model_not_found"
    param = "model"


class NotReady(NodeError, RuntimeError):
    """Models are still loading (or failed to load)."""

    status = 503
    type = "server_error"
    code = "model_loading"


class RejectedByModel(NodeError, ValueError):
    """The engine refused the request's parameters (e.g. a logit_bias token not in the
    vocabulary, a grammar it cannot parse). The client's fault: HTTP 400."""

    code = "invalid_value"

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param

    def client_message(self) -> str:
        return f"The model cannot run this request: {self}"
