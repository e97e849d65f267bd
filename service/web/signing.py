"""Standard Webhooks signature verification (https://www.standardwebhooks.com), for CRM hooks.

The CRM signs ``{webhook-id}.{webhook-timestamp}.{body}`` with HMAC-SHA256 under the shared secret
(``whsec_`` + base64) and sends ``webhook-signature: v1,<base64> [v1,<base64> ...]``. Timestamps
more than five minutes from now are refused, so a captured request cannot be replayed later.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time

TOLERANCE_SECONDS = 5 * 60


class SignatureError(ValueError):
    """The request is not signed by the account's CRM secret; the message says why."""


def secret_key(secret: str) -> bytes:
    """The HMAC key of a ``whsec_...`` secret (a secret without the prefix is used as raw bytes)."""
    if secret.startswith("whsec_"):
        try:
            return base64.b64decode(secret[len("whsec_"):], validate=True)
        except binascii.Error:
            raise SignatureError("the configured signing secret is not valid base64 after 'whsec_'") from None
    return secret.encode()


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header value for a body (used by tests and the demo CRM)."""
    digest = hmac.new(secret_key(secret), f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def verify(secret: str, headers: dict[str, str], body: bytes, *, now: float | None = None) -> None:
    """Raise SignatureError unless the Standard Webhooks headers sign ``body`` with ``secret``."""
    msg_id = headers.get("webhook-id", "")
    stamp = headers.get("webhook-timestamp", "")
    signatures = headers.get("webhook-signature", "")
    if not (msg_id and stamp and signatures):
        raise SignatureError("missing webhook-id, webhook-timestamp or webhook-signature header")
    try:
        timestamp = int(stamp)
    except ValueError:
        raise SignatureError("webhook-timestamp is not an integer") from None
    current = time.time() if now is None else now
    if abs(current - timestamp) > TOLERANCE_SECONDS:
        raise SignatureError("webhook-timestamp is more than 5 minutes away from now")
    expected = sign(secret, msg_id, timestamp, body).split(",", 1)[1].encode()
    for candidate in signatures.split():
        version, _, value = candidate.partition(",")
        if version == "v1" and hmac.compare_digest(value.encode(), expected):
            return
    raise SignatureError("no webhook-signature matches the body")
