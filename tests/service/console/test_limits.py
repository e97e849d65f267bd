"""Sign-in rate limits in a real Redis: per email and per address, windowed, cleared by a success."""

from __future__ import annotations

import time

from service.console.limits import LoginLimiter


def test_email_blocked_after_five_failures_any_case(redis_client, namespace):
    """Five failures block the email (whatever its case) with a wait within the window; others are not blocked."""
    limiter = LoginLimiter(redis_client, namespace=namespace)
    for _ in range(4):
        limiter.record_failure("Ann@Example.com", "10.0.0.1")
    assert limiter.retry_after("ann@example.com", "10.0.0.2") == 0
    limiter.record_failure("ann@example.com", "10.0.0.3")
    wait = limiter.retry_after("ANN@example.com", "10.0.0.9")
    assert 0 < wait <= 15 * 60
    assert limiter.retry_after("bob@example.com", "10.0.0.9") == 0


def test_address_blocked_after_its_own_limit_across_emails(redis_client, namespace):
    """A password spray from one address over many emails is blocked at the address limit."""
    limiter = LoginLimiter(redis_client, namespace=namespace, ip_failures=3)
    for n in range(3):
        limiter.record_failure(f"user{n}@example.com", "192.0.2.7")
    assert limiter.retry_after("fresh@example.com", "192.0.2.7") > 0
    assert limiter.retry_after("fresh@example.com", "192.0.2.8") == 0


def test_success_clears_the_email_but_not_the_address(redis_client, namespace):
    """A good sign-in forgets the email's failures; the address's count stays."""
    limiter = LoginLimiter(redis_client, namespace=namespace, email_failures=2, ip_failures=2)
    limiter.record_failure("ann@example.com", "192.0.2.7")
    limiter.record_failure("ann@example.com", "192.0.2.7")
    limiter.record_success("ann@example.com")
    assert limiter.retry_after("ann@example.com", None) == 0
    assert limiter.retry_after("ann@example.com", "192.0.2.7") > 0


def test_the_window_ends(redis_client, namespace):
    """Failures expire with the window: the email may try again afterwards."""
    limiter = LoginLimiter(redis_client, namespace=namespace, email_failures=1, window_seconds=1)
    limiter.record_failure("ann@example.com", None)
    assert limiter.retry_after("ann@example.com", None) > 0
    time.sleep(2.1)
    assert limiter.retry_after("ann@example.com", None) == 0
