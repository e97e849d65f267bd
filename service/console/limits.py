"""Sign-in rate limiting in Redis: failures counted per email and per client address in a fixed window."""

from __future__ import annotations

import hashlib

import redis as redis_py

EMAIL_FAILURES = 5
# Higher per address: an office behind one NAT address shares it.
IP_FAILURES = 20
WINDOW_SECONDS = 15 * 60


class LoginLimiter:
    """Counts failed sign-ins; blocks an email or an address that failed too often in the window."""

    def __init__(self, redis: redis_py.Redis, *, namespace: str, email_failures: int = EMAIL_FAILURES,
                 ip_failures: int = IP_FAILURES, window_seconds: int = WINDOW_SECONDS) -> None:
        self.redis = redis
        self.namespace = namespace
        self.limits = {"email": email_failures, "ip": ip_failures}
        self.window = window_seconds

    def _keys(self, email: str, ip: str | None) -> dict[str, str]:
        # Emails are hashed so Redis holds no address book; normalised so case does not dodge the limit.
        digest = hashlib.sha256(email.strip().lower().encode()).hexdigest()
        keys = {"email": f"{self.namespace}:console:login-fail:email:{digest}"}
        if ip:
            keys["ip"] = f"{self.namespace}:console:login-fail:ip:{ip}"
        return keys

    def retry_after(self, email: str, ip: str | None) -> int:
        """Seconds until this email and address may try again; 0 when neither is blocked."""
        keys = self._keys(email, ip)
        pipe = self.redis.pipeline()
        for key in keys.values():
            pipe.get(key)
            pipe.ttl(key)
        values = pipe.execute()
        wait = 0
        for index, kind in enumerate(keys):
            count, ttl = values[2 * index], values[2 * index + 1]
            if count is not None and int(count) >= self.limits[kind]:
                wait = max(wait, ttl if ttl and ttl > 0 else self.window)
        return wait

    def record_failure(self, email: str, ip: str | None) -> None:
        """Count one failed sign-in against the email and the address (the window starts at the first)."""
        pipe = self.redis.pipeline()
        for key in self._keys(email, ip).values():
            pipe.set(key, 0, ex=self.window, nx=True)
            pipe.incr(key)
        pipe.execute()

    def record_success(self, email: str) -> None:
        """Forget the email's failures (the address's stay: one good password must not reset a spray)."""
        self.redis.delete(self._keys(email, None)["email"])
