"""What one client may take of the HTTP server before the app sees its request (no imports of
uvicorn here: the CLI reads the defaults before it loads anything heavy)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class HttpLimits:
    header_timeout: float = 10.0  # seconds for the request line and headers
    body_timeout: float = 60.0  # seconds for the whole body, from the end of the headers
    write_timeout: float = 60.0  # seconds our writes may wait on a client that does not read
    max_header_bytes: int = 32 * 1024  # request line and headers together
    max_headers: int = 100
    max_connections: int = 512  # open connections; a request on one more gets 503
