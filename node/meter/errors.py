"""The meter's one failure the service must know: it cannot record requests (HTTP 503)."""


class MeterUnavailable(RuntimeError):
    """The meter database cannot be written or read (read-only, full, locked too long, deleted
    or replaced while open): HTTP 503."""
