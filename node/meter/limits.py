"""Per-key rate limits in memory: requests and tokens per sliding minute, parallel requests.

The limits themselves are stored with the key (`keys.Limits`); this is the node's live count.
Admission reserves one request, the request's maximum tokens and one parallel slot; the
request's end settles the tokens to the real count and frees the slot (also when cancelled or
interrupted). Everything is checked before anything is taken, so a refused request holds
nothing. The clock is injectable (seconds, monotonic), so tests need no sleeps.

The counts live in this process: a restart forgets the last minute (documented).
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from node.meter.keys import Limits

WINDOW_S = 60.0


class RateLimited(Exception):
    """Over a limit: HTTP 429 `rate_limit_exceeded` with `Retry-After`."""

    def __init__(
        self, message: str, retry_after_s: float, headers: dict[str, str], kind: str = "requests"
    ) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
        self.headers = headers
        self.kind = kind  # "requests" (rpm, parallel) or "tokens" (tpm), OpenAI's error types

    @property
    def retry_after(self) -> int:
        return max(1, math.ceil(self.retry_after_s))


@dataclass
class _Spend:
    at: float
    tokens: int
    expired: bool = False


@dataclass
class _KeyState:
    requests: deque[float] = field(default_factory=deque)
    tokens: deque[_Spend] = field(default_factory=deque)
    token_sum: int = 0  # of `tokens`, kept so that admission is O(1), not O(rpm)
    active: int = 0

    def expire(self, now: float) -> None:
        while self.requests and self.requests[0] <= now - WINDOW_S:
            self.requests.popleft()
        while self.tokens and self.tokens[0].at <= now - WINDOW_S:
            spend = self.tokens.popleft()
            spend.expired = True
            self.token_sum -= spend.tokens

    def used_tokens(self) -> int:
        return self.token_sum


class Ticket:
    """What one admitted request holds; `settle` once at its end (repeated calls do nothing)."""

    def __init__(self, limiter: RateLimiter, key_id: str, spend: _Spend | None) -> None:
        self._limiter = limiter
        self._key_id = key_id
        self._spend = spend
        self._settled = False
        self.headers: dict[str, str] = {}

    def settle(self, tokens: int) -> None:
        if self._settled:
            return
        self._settled = True
        self._limiter._settle(self._key_id, self._spend, tokens)


class RateLimiter:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._keys: dict[str, _KeyState] = {}

    def admit(self, key_id: str, limits: Limits, tokens: int) -> Ticket:
        """Reserve a request of at most `tokens` tokens, or raise RateLimited."""
        with self._lock:
            now = self._clock()
            state = self._keys.setdefault(key_id, _KeyState())
            state.expire(now)
            self._check(state, limits, tokens, now)
            state.requests.append(now)
            spend = _Spend(now, tokens)
            state.tokens.append(spend)
            state.token_sum += tokens
            state.active += 1
            ticket = Ticket(self, key_id, spend)
            ticket.headers = self._headers(state, limits, now)
        return ticket

    def headers(self, key_id: str, limits: Limits) -> dict[str, str]:
        """OpenAI's `x-ratelimit-*` headers for the key's state now (nothing taken)."""
        with self._lock:
            now = self._clock()
            state = self._keys.get(key_id) or _KeyState()
            state.expire(now)
            return self._headers(state, limits, now)

    def _check(self, state: _KeyState, limits: Limits, tokens: int, now: float) -> None:
        if limits.max_parallel is not None and state.active >= limits.max_parallel:
            raise RateLimited(
                f"Rate limit reached: {limits.max_parallel} parallel requests for this API key;"
                " retry when one of them has finished.",
                1.0,
                self._headers(state, limits, now),
            )
        if limits.rpm is not None and len(state.requests) >= limits.rpm:
            free_at = state.requests[len(state.requests) - limits.rpm] + WINDOW_S
            raise RateLimited(
                f"Rate limit reached: {limits.rpm} requests per minute for this API key.",
                free_at - now,
                self._headers(state, limits, now),
            )
        if limits.tpm is not None:
            if tokens > limits.tpm:
                raise RateLimited(
                    f"This request may use {tokens} tokens (prompt + max_tokens), more than the"
                    f" API key's {limits.tpm} tokens per minute; lower max_tokens.",
                    WINDOW_S,
                    self._headers(state, limits, now),
                    "tokens",
                )
            used = state.used_tokens()
            if used + tokens > limits.tpm:
                raise RateLimited(
                    f"Rate limit reached: {limits.tpm} tokens per minute for this API key"
                    f" ({used} used or reserved in the last minute, this request may use"
                    f" {tokens}).",
                    self._token_wait(state, limits.tpm - tokens, now),
                    self._headers(state, limits, now),
                    "tokens",
                )

    @staticmethod
    def _token_wait(state: _KeyState, allowed: int, now: float) -> float:
        """Seconds until the tokens of the window fall to `allowed` (spends expire in order)."""
        used = state.used_tokens()
        for spend in state.tokens:
            if used <= allowed:
                break
            used -= spend.tokens
            wait = spend.at + WINDOW_S - now
            if used <= allowed:
                return wait
        return WINDOW_S if used > allowed else 0.0

    def _headers(self, state: _KeyState, limits: Limits, now: float) -> dict[str, str]:
        headers: dict[str, str] = {}
        if limits.rpm is not None:
            last = state.requests[-1] + WINDOW_S - now if state.requests else 0.0
            headers["x-ratelimit-limit-requests"] = str(limits.rpm)
            remaining = max(0, limits.rpm - len(state.requests))
            headers["x-ratelimit-remaining-requests"] = str(remaining)
            headers["x-ratelimit-reset-requests"] = duration(last)
        if limits.tpm is not None:
            last = state.tokens[-1].at + WINDOW_S - now if state.tokens else 0.0
            headers["x-ratelimit-limit-tokens"] = str(limits.tpm)
            headers["x-ratelimit-remaining-tokens"] = str(max(0, limits.tpm - state.used_tokens()))
            headers["x-ratelimit-reset-tokens"] = duration(last)
        return headers

    def _settle(self, key_id: str, spend: _Spend | None, tokens: int) -> None:
        with self._lock:
            state = self._keys.get(key_id)
            if state is None:
                return
            state.active = max(0, state.active - 1)
            if spend is not None:
                if not spend.expired:  # still in the window at its admission time
                    state.token_sum += tokens - spend.tokens
                spend.tokens = tokens
            if not state.active and not state.requests and not state.tokens:
                del self._keys[key_id]  # idle keys cost no memory


def duration(seconds: float) -> str:
    """OpenAI's reset format: `20ms`, `1s`, `1.5s`, `6m0s`."""
    ms = math.ceil(round(max(0.0, seconds) * 1000, 6))  # whole ms, rounded up
    if ms < 1000:
        return f"{ms}ms"
    minutes, rest = divmod(ms, 60_000)
    text = f"{rest / 1000:.3f}".rstrip("0").rstrip(".")
    return f"{minutes}m{text}s" if minutes else f"{text}s"
