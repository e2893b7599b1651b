"""Per-key rate limits with a clock the test moves (no sleeps): rpm, tpm, max parallel."""

from __future__ import annotations

import pytest

from node.meter.keys import Limits
from node.meter.limits import RateLimited, RateLimiter, duration


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def test_the_request_after_rpm_waits_for_the_oldest_to_leave_the_minute(clock: Clock) -> None:
    limiter = RateLimiter(clock)
    limits = Limits(rpm=3)
    remaining = []
    for _ in range(3):
        ticket = limiter.admit("k", limits, 10)
        remaining.append(ticket.headers["x-ratelimit-remaining-requests"])
        ticket.settle(10)
        clock.now += 10
    assert remaining == ["2", "1", "0"]
    with pytest.raises(RateLimited) as refused:
        limiter.admit("k", limits, 10)
    # The first request was at 1000, now is 1030: a slot frees at 1060.
    assert (refused.value.retry_after, refused.value.kind) == (30, "requests")
    assert refused.value.headers["x-ratelimit-limit-requests"] == "3"
    assert refused.value.headers["x-ratelimit-remaining-requests"] == "0"
    assert refused.value.headers["x-ratelimit-reset-requests"] == "50s"  # the newest at 1020
    clock.now = 1060.0
    assert limiter.admit("k", limits, 10).headers["x-ratelimit-remaining-requests"] == "0"
    assert "x-ratelimit-limit-tokens" not in limiter.headers("k", limits)


def test_tokens_are_reserved_then_settled_to_the_real_count(clock: Clock) -> None:
    limiter = RateLimiter(clock)
    limits = Limits(tpm=100)
    first = limiter.admit("k", limits, 60)  # prompt + max_tokens
    assert first.headers["x-ratelimit-remaining-tokens"] == "40"
    with pytest.raises(RateLimited) as refused:
        limiter.admit("k", limits, 50)
    assert (refused.value.retry_after, refused.value.kind) == (60, "tokens")
    first.settle(20)  # it used 20 of its 60
    assert limiter.headers("k", limits)["x-ratelimit-remaining-tokens"] == "80"
    clock.now += 15
    second = limiter.admit("k", limits, 50)
    assert second.headers["x-ratelimit-remaining-tokens"] == "30"
    with pytest.raises(RateLimited) as refused:
        limiter.admit("k", limits, 40)
    # 20 tokens leave at 1060 (enough: 50 + 40 <= 100), 45 s from now.
    assert refused.value.retry_after == 45
    assert refused.value.headers["x-ratelimit-reset-tokens"] == "1m0s"
    clock.now += 45
    limiter.admit("k", limits, 40)


def test_a_request_bigger_than_tpm_is_refused_with_a_reason(clock: Clock) -> None:
    limiter = RateLimiter(clock)
    with pytest.raises(RateLimited, match="lower max_tokens"):
        limiter.admit("k", Limits(tpm=100), 101)


def test_max_parallel_and_a_cancelled_request_gives_its_slot_back(clock: Clock) -> None:
    limiter = RateLimiter(clock)
    limits = Limits(max_parallel=2, tpm=1000)
    one = limiter.admit("k", limits, 100)
    limiter.admit("k", limits, 100)
    with pytest.raises(RateLimited, match="2 parallel") as refused:
        limiter.admit("k", limits, 100)
    assert refused.value.retry_after == 1
    assert limiter.headers("k", limits)["x-ratelimit-remaining-tokens"] == "800"
    one.settle(3)  # cancelled after 3 tokens
    one.settle(3)  # settling twice changes nothing
    assert limiter.headers("k", limits)["x-ratelimit-remaining-tokens"] == "897"
    limiter.admit("k", limits, 100)


def test_a_refused_request_holds_nothing_and_keys_are_apart(clock: Clock) -> None:
    limiter = RateLimiter(clock)
    limits = Limits(rpm=1, tpm=50)
    limiter.admit("a", limits, 10)
    for _ in range(3):
        with pytest.raises(RateLimited):
            limiter.admit("a", limits, 10)
    assert limiter.headers("a", limits)["x-ratelimit-remaining-tokens"] == "40"
    assert limiter.admit("b", limits, 50).headers["x-ratelimit-remaining-tokens"] == "0"


def test_reset_durations_read_like_openai() -> None:
    assert [duration(s) for s in (0, 0.02, 1, 1.5, 59.9999, 360, 61.25)] == [
        "0ms",
        "20ms",
        "1s",
        "1.5s",
        "1m0s",
        "6m0s",
        "1m1.25s",
    ]


def test_a_request_settled_after_its_minute_changes_nothing(clock: Clock) -> None:
    limiter = RateLimiter(clock)
    limits = Limits(tpm=100)
    long_one = limiter.admit("k", limits, 90)
    clock.now += 61  # its reservation has left the window while it still runs
    short = limiter.admit("k", limits, 30)
    assert short.headers["x-ratelimit-remaining-tokens"] == "70"
    long_one.settle(500)  # a long generation ends: the old minute is over
    short.settle(5)
    assert limiter.headers("k", limits)["x-ratelimit-remaining-tokens"] == "95"
