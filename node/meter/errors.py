"""The meter's one failure the service must know: it cannot record requests (HTTP 503)."""

from node.errors import NodeError


class MeterUnavailable(NodeError, RuntimeError):
    """The meter database cannot be written or read (read-only, full, locked too long, deleted
    or replaced while open): HTTP 503."""

    status = 503
    type = "server_error"
    code = "meter_unavailable"

    def client_message(self) -> str:
        return "The usage meter cannot record requests right now."
