"""Password policy and hashing with scrypt (hashlib, stdlib): salted, memory-hard, compared in constant time."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from functools import lru_cache

from service.console.errors import ConsoleError

MIN_LENGTH = 12
# Long enough for any passphrase or manager-generated password; bounds the work one request can ask for.
MAX_LENGTH = 1024
# OWASP's equal-cost scrypt settings include n=2**15 (32 MiB) with r=8, p=3: memory per hash stays small
# enough for a threaded web process, at ~0.2 s (idle core) to ~0.7 s (busy shared core) per sign-in.
N, R, P = 2**15, 8, 3
MAXMEM = 64 * 1024 * 1024
SCHEME = "scrypt"


def check_policy(password: str) -> str:
    """The password if it meets the policy (12 to 1024 characters, not all blank), else a ConsoleError."""
    if not isinstance(password, str) or len(password) < MIN_LENGTH:
        raise ConsoleError(f"password: must be at least {MIN_LENGTH} characters")
    if len(password) > MAX_LENGTH:
        raise ConsoleError(f"password: must be at most {MAX_LENGTH} characters")
    if not password.strip():
        raise ConsoleError("password: must not be only spaces")
    return password


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4))


def _derive(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, maxmem=MAXMEM, dklen=32)


def hash_password(password: str) -> str:
    """The stored form ``scrypt$n,r,p$salt$hash`` of a password that meets the policy."""
    check_policy(password)
    salt = secrets.token_bytes(16)
    return f"{SCHEME}${N},{R},{P}${_b64(salt)}${_b64(_derive(password, salt, N, R, P))}"


def verify_password(stored: str, password: str) -> bool:
    """True when ``password`` matches ``stored`` (constant-time compare; a malformed hash never matches)."""
    try:
        scheme, params, salt, digest = stored.split("$")
        n, r, p = (int(v) for v in params.split(","))
        if scheme != SCHEME or len(password) > MAX_LENGTH:
            return False
        return hmac.compare_digest(_derive(password, _unb64(salt), n, r, p), _unb64(digest))
    except (ValueError, TypeError):
        return False


def needs_rehash(stored: str) -> bool:
    """True when ``stored`` was made with other parameters than today's (rehash on the next sign-in)."""
    return not stored.startswith(f"{SCHEME}${N},{R},{P}$")


@lru_cache(maxsize=1)
def dummy_hash() -> str:
    """A hash to verify against when the email is unknown, so both cases take the same time."""
    return hash_password(secrets.token_urlsafe(24))
