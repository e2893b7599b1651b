"""Helpers for the meter tests: a pinned clock and request starts."""

from __future__ import annotations

from dataclasses import dataclass

from node.meter import RequestStart
from node.meter.times import parse_moment

T0 = parse_moment("2026-03-01T10:00:00")  # microseconds since the epoch


@dataclass
class Clock:
    """A clock the test moves by hand (microseconds since the epoch)."""

    now: int = T0

    def __call__(self) -> int:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += round(seconds * 1_000_000)


def start(
    request_id: str,
    *,
    key_id: str = "key_test",
    org: str | None = "acme",
    model: str = "smollm2-135m",
    gpu_type: str = "cpu",
    endpoint: str = "/v1/chat/completions",
    user: str | None = None,
    prompt_tokens: int = 0,
    cached_tokens: int = 0,
) -> RequestStart:
    return RequestStart(
        id=request_id,
        key_id=key_id,
        org=org,
        endpoint=endpoint,
        model=model,
        quant_type="Q4_1",
        gpu_type=gpu_type,
        gpu_name="cpu" if gpu_type == "cpu" else f"NVIDIA {gpu_type}",
        user=user,
        prompt_tokens=prompt_tokens,
        cached_tokens=cached_tokens,
    )
