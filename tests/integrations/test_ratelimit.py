"""Shared token buckets on a real Redis: the same bucket across clients, adaptive on 429."""

from __future__ import annotations

import time

import pytest

from integrations.ratelimit import BOOKING_GRACE_SECONDS, BOOKING_HORIZON_SECONDS, RateLimiter
from service.redisconn import make_redis


def test_burst_then_wait(redis_client, namespace):
    """A bucket of 3 at 1/s grants 3 at once, then asks to wait about a second."""
    limiter = RateLimiter(redis_client, namespace=namespace)
    assert [limiter.acquire("b", 3, 1.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = limiter.acquire("b", 3, 1.0)
    assert 0.9 <= wait <= 1.01


def test_two_clients_share_one_bucket(redis_url, redis_client, namespace):
    """Two processes' clients (two connections) draw from the same tokens."""
    first = RateLimiter(redis_client, namespace=namespace)
    second = RateLimiter(make_redis(redis_url), namespace=namespace)
    assert first.acquire("shared", 2, 0.5) == 0
    assert second.acquire("shared", 2, 0.5) == 0
    assert first.acquire("shared", 2, 0.5) > 0
    assert second.acquire("other", 2, 0.5) == 0


def test_penalty_after_429_blocks_then_releases(redis_client, namespace):
    """penalise() shuts the bucket for the given seconds."""
    limiter = RateLimiter(redis_client, namespace=namespace)
    limiter.penalise("p", 5)
    wait = limiter.acquire("p", 10, 10)
    assert 4.5 < wait <= 5.0


def test_cost_above_capacity_is_an_error(redis_client, namespace):
    """A request that could never be granted is a programming error, not an endless wait."""
    with pytest.raises(ValueError):
        RateLimiter(redis_client, namespace=namespace).acquire("c", 10, 1, cost=35)


# -- booked slots ------------------------------------------------------------------------------------

def test_waiters_book_consecutive_slots_and_a_newcomer_queues_behind_them(redis_client, namespace):
    """On a bucket of 1 at 2/s, three holders get now, +0.5 s and +1 s; a plain acquire waits behind all."""
    limiter = RateLimiter(redis_client, namespace=namespace)
    first, second, third = (limiter.reserve("q", 1, 2.0, holder=h) for h in ("d1", "d2", "d3"))
    assert first == (0.0, False)
    assert second[1] and third[1]
    assert 0.45 <= second[0] <= 0.5 and 0.95 <= third[0] <= 1.0
    assert 1.45 <= limiter.acquire("q", 1, 2.0) <= 1.5


def test_a_holder_back_at_its_slot_goes_without_taking_again(redis_client, namespace):
    """Early, the holder is told the rest of its wait; at the slot it goes, and its booking is spent."""
    limiter = RateLimiter(redis_client, namespace=namespace)
    assert limiter.reserve("s", 1, 5.0, holder="a") == (0.0, False)
    wait, booked = limiter.reserve("s", 1, 5.0, holder="b")
    assert booked and 0.15 <= wait <= 0.2
    early, still_booked = limiter.reserve("s", 1, 5.0, holder="b")
    assert still_booked and 0 < early <= wait
    time.sleep(early)
    assert limiter.reserve("s", 1, 5.0, holder="b") == (0.0, False)
    # Spent: the next call is an ordinary request again (the bucket refilled meanwhile).
    assert limiter.reserve("s", 1, 5.0, holder="b")[0] == pytest.approx(0.2, abs=0.05)


def test_a_wait_past_the_horizon_books_nothing(redis_client, namespace):
    """A slot more than BOOKING_HORIZON_SECONDS away is not booked: the bucket keeps its tokens."""
    limiter = RateLimiter(redis_client, namespace=namespace)
    rate = 1 / (BOOKING_HORIZON_SECONDS + 30)
    assert limiter.reserve("far", 1, rate, holder="a") == (0.0, False)
    wait, booked = limiter.reserve("far", 1, rate, holder="b")
    assert not booked and wait > BOOKING_HORIZON_SECONDS
    assert limiter.reserve("far", 1, rate, holder="c")[0] == pytest.approx(wait, abs=0.1)  # not queued behind b


def test_a_429_penalty_cancels_bookings(redis_client, namespace):
    """After penalise() the bucket's count restarts, so a booking made before it must not be used."""
    limiter = RateLimiter(redis_client, namespace=namespace)
    limiter.reserve("p", 1, 10.0, holder="a")
    assert limiter.reserve("p", 1, 10.0, holder="b")[1]
    limiter.penalise("p", 0.5)
    time.sleep(0.15)  # b's slot (0.1 s) has come, but the penalty holds: b waits it out, unbooked
    wait, booked = limiter.reserve("p", 1, 10.0, holder="b")
    assert not booked and 0.3 <= wait <= 0.35
    assert redis_client.exists(f"{namespace}:booking:b:p") == 0


def test_a_booking_lapses_after_its_grace(redis_client, namespace):
    """A holder that never comes back does not hold its slot forever: the key expires after the grace."""
    limiter = RateLimiter(redis_client, namespace=namespace)
    limiter.reserve("g", 1, 10.0, holder="a")
    wait, booked = limiter.reserve("g", 1, 10.0, holder="b")
    ttl_ms = redis_client.pttl(f"{namespace}:booking:b:g")
    assert booked and ttl_ms == pytest.approx((wait + BOOKING_GRACE_SECONDS) * 1000, abs=60)


def test_many_holders_each_try_at_most_twice(redis_client, namespace):
    """Twenty holders on one 20/s bucket: each books once and is let through at its slot, in order."""
    limiter = RateLimiter(redis_client, namespace=namespace)
    due = {}
    for i in range(20):
        wait, booked = limiter.reserve("many", 1, 20.0, holder=f"h{i}")
        due[f"h{i}"] = time.monotonic() + wait
        assert booked == (i > 0)
    tries = 0
    for holder, at in sorted(due.items(), key=lambda item: item[1]):
        time.sleep(max(0.0, at - time.monotonic()))
        tries += 1
        wait, _ = limiter.reserve("many", 1, 20.0, holder=holder)
        if wait > 0:  # a few milliseconds early by this host's clock against Redis's
            time.sleep(wait)
            tries += 1
            assert limiter.reserve("many", 1, 20.0, holder=holder) == (0.0, False)
    assert tries <= 20 + 3
