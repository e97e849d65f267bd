"""Redis connections: one URL setting, spelled for redis-py and for kombu."""

from __future__ import annotations

from functools import lru_cache

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from service.config import Settings, get_settings


def redis_py_url(url: str) -> str:
    """The URL in redis-py's spelling (``unix://`` for sockets)."""
    if url.startswith("redis+socket://"):
        return "unix://" + url[len("redis+socket://"):]
    return url


def kombu_url(url: str) -> str:
    """The URL in kombu's spelling (``redis+socket://`` for sockets)."""
    if url.startswith("unix://"):
        return "redis+socket://" + url[len("unix://"):]
    return url


def make_redis(url: str, *, timeout: float = 2.0, retries: int | None = None) -> redis.Redis:
    """A redis-py client with short timeouts, so a Redis outage fails fast instead of hanging;
    ``retries``: how often a failed command is retried at once (None: redis-py's default, with backoff)."""
    extra = {} if retries is None else {"retry": Retry(NoBackoff(), retries)}
    return redis.Redis.from_url(redis_py_url(url), socket_timeout=timeout, socket_connect_timeout=timeout,
                                decode_responses=True, health_check_interval=30, **extra)


@lru_cache(maxsize=4)
def _cached_client(url: str) -> redis.Redis:
    return make_redis(url)


def get_redis(settings: Settings | None = None) -> redis.Redis:
    """The process-wide Redis client for the configured URL."""
    settings = settings or get_settings()
    return _cached_client(settings.effective_redis_url)
