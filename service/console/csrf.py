"""CSRF tokens: an HMAC of the session (or, before sign-in, of a random cookie) under a key from the server's keys.

Synchronizer-style tokens bound to the server-side session: a token taken from one session is useless in
another, and nothing needs storing. Forms send it as ``csrf_token``; htmx and scripts as ``X-CSRFToken``.
"""

from __future__ import annotations

import hashlib
import hmac

FORM_FIELD = "csrf_token"
HEADER = "X-CSRFToken"


def derive_key(secret: str) -> bytes:
    """The CSRF key derived from a server secret (the newest encryption key), so it is never used twice."""
    return hmac.new(secret.encode(), b"pbxrelay console csrf v1", hashlib.sha256).digest()


def token_for(key: bytes, binding: str) -> str:
    """The CSRF token for a session value (or the pre-sign-in cookie)."""
    return hmac.new(key, binding.encode(), hashlib.sha256).hexdigest()


def check(key: bytes, binding: str | None, supplied: str | None) -> bool:
    """True when ``supplied`` is the token for ``binding`` (constant-time compare)."""
    if not binding or not supplied:
        return False
    return hmac.compare_digest(token_for(key, binding), supplied)
