"""Errors raised by the VirtualPBX (Kazoo Crossbar) client, one class per way a call can fail.

Every class subclasses exactly one of the contract's kinds (RetryableError, PermanentError or
AuthError) so the pipeline decides "retry or not" from the type alone. Each carries the HTTP
``status``, Kazoo's ``request_id`` and the ``data`` details of the error envelope. Text and data are
scrubbed of the auth token and API key before the exception is built, because exceptions end up in
logs, the delivery log and Celery results.
"""

from __future__ import annotations

from typing import Any

from integrations.base import AuthError, IntegrationError, PermanentError, RetryableError, scrub


class VirtualPBXError(IntegrationError):
    """Base of every VirtualPBX error: adds Kazoo's request id and error details."""

    def __init__(self, message: str, *, status: int | None = None, retry_after: float | None = None,
                 code: str | None = None, request_id: str | None = None, data: Any = None) -> None:
        super().__init__(message, status=status, retry_after=retry_after, code=code)
        self.request_id = request_id
        self.data = data

    def __reduce__(self):
        return (_rebuild, (type(self), self.message, {
            "status": self.status, "retry_after": self.retry_after, "code": self.code,
            "request_id": self.request_id, "data": self.data}))


def _rebuild(cls, message, kwargs):
    return cls(message, **kwargs)


class ValidationError(VirtualPBXError, PermanentError):
    """400: Kazoo rejected the request body; ``fields`` maps field path -> {rule: message}."""

    @property
    def fields(self) -> dict[str, dict[str, str]]:
        """Field-level details of the 400 body, e.g. {"uri": {"required": "Field is required but missing"}}."""
        if not isinstance(self.data, dict):
            return {}
        out: dict[str, dict[str, str]] = {}
        for field, rules in self.data.items():
            if isinstance(rules, dict):
                out[field] = {rule: (detail.get("message", "") if isinstance(detail, dict) else str(detail))
                              for rule, detail in rules.items()}
        return out


class ClientError(VirtualPBXError, PermanentError):
    """Any other 4xx Kazoo answers with (402 accept charges, 416 too large, ...): not retryable."""


class Unauthorized(VirtualPBXError, AuthError):
    """401 invalid_credentials even after one re-authentication, or the credentials were rejected."""


class Forbidden(VirtualPBXError, AuthError):
    """403 forbidden: the token may not do this (restrictions, or another account's resource)."""


class NotFound(VirtualPBXError, PermanentError):
    """404 bad_identifier: an id in the URL does not exist."""


class MethodNotAllowed(VirtualPBXError, PermanentError):
    """405 invalid_method: the resource does not support this verb (typically PATCH)."""


class Conflict(VirtualPBXError, RetryableError):
    """409 datastore_conflict: a concurrent write changed the document; re-read and try again."""


class Locked(VirtualPBXError, PermanentError):
    """423 locked: the account is expired or disabled."""


class RateLimited(VirtualPBXError, RetryableError):
    """429 too_many_requests, or our own shared bucket would make us wait too long; see retry_after."""


class ServerError(VirtualPBXError, RetryableError):
    """5xx: Kazoo or its datastore failed; worth retrying later."""


class SmsNotEnabled(VirtualPBXError, PermanentError):
    """500 "account": SMS is not enabled for the account or reseller, which no retry can change."""


class TransportError(VirtualPBXError, RetryableError):
    """The request never got an HTTP answer: connection refused, reset, DNS failure."""


class RequestTimeout(TransportError):
    """Kazoo did not answer (connect or read) within the client's timeout."""


class MalformedResponse(VirtualPBXError, PermanentError):
    """A success status with a body that is not a Kazoo JSON envelope (wrong base URL, a proxy page)."""


class MediaTooLarge(VirtualPBXError, PermanentError):
    """A voicemail recording is bigger than the caller's size cap; it was not read to the end."""


def scrub_data(value: Any, secrets: tuple[str, ...]) -> Any:
    """Return ``value`` (JSON-like) with every string scrubbed; Kazoo echoes an unknown API key in data."""
    if isinstance(value, str):
        return scrub(value, secrets)
    if isinstance(value, dict):
        return {scrub(str(k), secrets): scrub_data(v, secrets) for k, v in value.items()}
    if isinstance(value, list):
        return [scrub_data(v, secrets) for v in value]
    return value


_BY_STATUS: dict[int, type[VirtualPBXError]] = {
    400: ValidationError, 401: Unauthorized, 403: Forbidden, 404: NotFound, 405: MethodNotAllowed,
    409: Conflict, 423: Locked, 429: RateLimited,
}


def error_for_status(status: int, *, kazoo_message: str | None, data: Any, request_id: str | None,
                     secrets: tuple[str, ...], retry_after: float | None = None) -> VirtualPBXError:
    """Build the error for an HTTP error answer, choosing its class from the status (and §7's 500 case)."""
    data = scrub_data(data, secrets)
    detail = data.get("message") if isinstance(data, dict) else None
    cls: type[VirtualPBXError]
    if status in _BY_STATUS:
        cls = _BY_STATUS[status]
    elif status == 500 and kazoo_message == "account" and detail != "service temporarily unavailable":
        # The SMS pre-flight checks answer 500 "account" for a configuration problem (not enabled,
        # bad standing); only "service temporarily unavailable" is actually transient.
        cls = SmsNotEnabled
    elif status >= 500:
        cls = ServerError
    else:
        cls = ClientError
    text = f"VirtualPBX HTTP {status} {kazoo_message or ''}".rstrip()
    if data not in (None, {}, []):
        text += f": {_summarise(data)}"
    if request_id:
        text += f" (request_id {request_id})"
    return cls(scrub(text, secrets), status=status, code=kazoo_message, request_id=request_id, data=data,
               retry_after=retry_after)


def _summarise(data: Any, limit: int = 300) -> str:
    text = str(data)
    return text if len(text) <= limit else text[:limit] + "..."
