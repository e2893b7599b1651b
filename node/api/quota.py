"""429 answers of per-key rate limits and of budgets, in OpenAI's shape."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from node.api.errors import ApiError
from node.service import BudgetExceeded, RateLimited


def quota_error(exc: RateLimited | BudgetExceeded) -> ApiError:
    if isinstance(exc, RateLimited):
        return ApiError(
            429,
            str(exc),
            type=exc.kind,  # OpenAI's types for rate limits: "requests" or "tokens"
            code="rate_limit_exceeded",
            headers={**exc.headers, "Retry-After": str(exc.retry_after)},
        )
    retry = exc.refusal.retry_after_s
    return ApiError(
        429,
        str(exc),
        type="insufficient_quota",  # OpenAI's type and code for a spent quota
        code="insufficient_quota",
        headers={} if retry is None else {"Retry-After": str(retry)},
    )


async def handle_quota_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RateLimited | BudgetExceeded)
    return quota_error(exc).response(request.url.path)
