"""Token buckets in Redis, shared by every worker process (Celery's rate_limit is per worker only)."""

from __future__ import annotations

import time

import redis

# KEYS[1] bucket hash, KEYS[2] (optional) the holder's booking; ARGV: capacity, refill per second, cost,
# horizon, grace. Uses the Redis server clock so workers on different hosts agree.
# Takes `cost` tokens if they are there. Otherwise, with KEYS[2], a holder that must wait at most `horizon`
# seconds books the next free slot: the tokens are taken now (the balance goes below zero, so later callers
# queue behind it) and the booking records the slot. Coming back at the slot, the holder finds its booking
# and goes without taking again. So N holders on one bucket each try twice at most, in order, instead of
# guessing when to look again. A booking lapses `grace` seconds after its slot, or when a 429 penalty
# resets the bucket (its `penalty_until` then differs from the one recorded with the booking): the holder
# then queues anew. Without KEYS[2] this is a plain take. Returns {wait, booked}: wait 0 = go now.
_TAKE = """
local capacity = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local horizon = tonumber(ARGV[4])
local grace = tonumber(ARGV[5])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts', 'penalty_until')
local penalty_until = tonumber(state[3]) or 0
local booking = KEYS[2] and redis.call('GET', KEYS[2])
if booking then
  local slot, booked_under = string.match(booking, '^([^:]+):(.+)$')
  if tonumber(booked_under) == penalty_until then
    if now >= tonumber(slot) then
      redis.call('DEL', KEYS[2])
      return {'0', 0}
    end
    return {tostring(tonumber(slot) - now), 1}
  end
  redis.call('DEL', KEYS[2])
end
if now < penalty_until then
  return {tostring(penalty_until - now), 0}
end
local tokens = tonumber(state[1]) or capacity
local ts = tonumber(state[2]) or now
tokens = math.min(capacity, tokens + math.max(0, now - ts) * rate)
local wait = 0
local booked = 0
if tokens >= cost then
  tokens = tokens - cost
else
  wait = (cost - tokens) / rate
  if KEYS[2] and wait <= horizon then
    tokens = tokens - cost
    booked = 1
    redis.call('SET', KEYS[2], tostring(now + wait) .. ':' .. tostring(penalty_until),
               'PX', math.ceil((wait + grace) * 1000))
  end
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
-- Kept until full again: tokens are below zero while slots are booked.
redis.call('EXPIRE', KEYS[1], math.ceil((capacity - tokens) / rate) + 60)
return {tostring(wait), booked}
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


# How far ahead a slot may be booked. Past it the caller is told to wait without a booking, so a long
# backlog (a vendor's penalty, thousands queued on one channel) does not book slots for hours.
BOOKING_HORIZON_SECONDS = 60.0
# How late a holder may come back and still use its slot: the scheduler's tick plus queueing. A holder
# later than this queues anew (its slot went unused, which costs throughput, never the limit).
BOOKING_GRACE_SECONDS = 5.0


class RateLimiter:
    """Cross-process token buckets keyed by name (e.g. ``slack:T123:C456``)."""

    def __init__(self, client: redis.Redis, *, namespace: str = "pbxrelay") -> None:
        self._redis = client
        self._namespace = namespace
        self._prefix = f"{namespace}:bucket:"
        self._take = client.register_script(_TAKE)
        self._penalise = client.register_script(_PENALISE)

    def acquire(self, key: str, capacity: float, per_second: float, cost: float = 1.0) -> float:
        """Take ``cost`` tokens now and return 0, or return the seconds until they will be there."""
        if cost > capacity:
            raise ValueError(f"cost {cost} exceeds bucket capacity {capacity}")
        wait, _ = self._take(keys=[self._prefix + key], args=[capacity, per_second, cost, 0, 0])
        return float(wait)

    def reserve(self, key: str, capacity: float, per_second: float, cost: float = 1.0, *,
                holder: str) -> tuple[float, bool]:
        """Take tokens now (0, False); or book ``holder`` the next slot within the horizon (wait, True), which
        a call at or after the slot uses without taking again; or past the horizon (wait, False)."""
        if cost > capacity:
            raise ValueError(f"cost {cost} exceeds bucket capacity {capacity}")
        wait, booked = self._take(keys=[self._prefix + key, f"{self._namespace}:booking:{holder}:{key}"],
                                     args=[capacity, per_second, cost, BOOKING_HORIZON_SECONDS,
                                           BOOKING_GRACE_SECONDS])
        return float(wait), bool(booked)

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
