"""Token buckets in Redis, shared by every worker process (Celery's rate_limit is per worker only)."""

from __future__ import annotations

import time

import redis

# KEYS[1] bucket hash; ARGV: capacity, refill per second, cost, now (seconds, float).
# Returns the seconds to wait before `cost` tokens are available (0 = granted and taken).
# Uses the Redis server clock so workers on different hosts agree.
_TAKE = """
local capacity = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts', 'penalty_until')
local tokens = tonumber(state[1]) or capacity
local ts = tonumber(state[2]) or now
local penalty_until = tonumber(state[3]) or 0
if now < penalty_until then
  return tostring(penalty_until - now)
end
tokens = math.min(capacity, tokens + math.max(0, now - ts) * rate)
local wait = 0
if tokens >= cost then
  tokens = tokens - cost
else
  wait = (cost - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('EXPIRE', KEYS[1], math.ceil(capacity / rate) + 60)
return tostring(wait)
"""

# KEYS[1] bucket hash; ARGV: seconds. Empties the bucket and blocks it for `seconds` (a 429 adapts it).
_PENALISE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local until_ts = now + tonumber(ARGV[1])
local current = tonumber(redis.call('HGET', KEYS[1], 'penalty_until')) or 0
if until_ts > current then
  redis.call('HSET', KEYS[1], 'penalty_until', tostring(until_ts), 'tokens', '0', 'ts', tostring(until_ts))
end
redis.call('EXPIRE', KEYS[1], math.ceil(tonumber(ARGV[1])) + 120)
return 1
"""


class RateLimiter:
    """Cross-process token buckets keyed by name (e.g. ``slack:T123:C456``)."""

    def __init__(self, client: redis.Redis, *, namespace: str = "pbxrelay") -> None:
        self._redis = client
        self._prefix = f"{namespace}:bucket:"
        self._take = client.register_script(_TAKE)
        self._penalise = client.register_script(_PENALISE)

    def acquire(self, key: str, capacity: float, per_second: float, cost: float = 1.0) -> float:
        """Take ``cost`` tokens now and return 0, or return the seconds until they will be there."""
        if cost > capacity:
            raise ValueError(f"cost {cost} exceeds bucket capacity {capacity}")
        return float(self._take(keys=[self._prefix + key], args=[capacity, per_second, cost]))

    def penalise(self, key: str, seconds: float) -> None:
        """Empty the bucket and hold it shut for ``seconds``: what a vendor's 429 tells us to do."""
        self._penalise(keys=[self._prefix + key], args=[max(0.001, seconds)])

    def wait_and_acquire(self, key: str, capacity: float, per_second: float, cost: float = 1.0,
                         *, max_wait: float = 30.0) -> None:
        """Block until tokens are granted (for synchronous clients such as the CLI); raise past max_wait."""
        deadline = time.monotonic() + max_wait
        while True:
            wait = self.acquire(key, capacity, per_second, cost)
            if wait <= 0:
                return
            if time.monotonic() + wait > deadline:
                raise TimeoutError(f"rate limit {key!r} needs {wait:.2f}s more than allowed")
            time.sleep(wait)
