"""Shared token buckets on a real Redis: the same bucket across clients, adaptive on 429."""

from __future__ import annotations

import pytest

from integrations.ratelimit import RateLimiter
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
