"""The integration contract: every vendor plugs in through these classes and errors.

An integration is one folder under ``integrations/`` holding its client code, its stand-in server
and its fixtures, plus one line in ``integrations.REGISTRY``. Each action it offers is a method
named like the action, taking a validated params model and an :class:`ActionContext`.

Every failure leaving an integration is either :class:`RetryableError` (timeouts, 429, 5xx: try
again later) or :class:`PermanentError` (bad config, revoked credentials, rejected input: never
retry). That decision is made once, inside the integration's client, never by the caller.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Mapping

from pydantic import BaseModel, ConfigDict, SecretStr, ValidationInfo, field_validator

# Substrings that look like credentials in free text (URLs with ?token=, Bearer headers, Slack
# tokens, Trello key/token pairs). SDK exception text is passed through scrub() before it is
# logged, stored in the delivery log or handed to Celery.
_SECRET_PATTERNS = [
    re.compile(r"(?i)((?:token|key|secret|password|api_key|auth_token|access_token|signature)=)[^&\s'\"]+"),
    re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._:~+/=-]+"),
    re.compile(r"(?i)(x-auth-token['\"]?\s*[:=]\s*['\"]?)[^'\"\s,}]+"),
    re.compile(r"()xox[abposre]-[A-Za-z0-9-]+"),
    re.compile(r"()https://hooks\.slack\.com/services/[A-Za-z0-9/_-]+"),
    re.compile(r"()-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?-----END [A-Z ]*PRIVATE KEY-----"),
]


def scrub(text: str, secrets: tuple[str, ...] | list[str] = ()) -> str:
    """Remove known secret values and credential-shaped substrings from ``text``."""
    out = str(text)
    for secret in secrets:
        if secret and len(secret) >= 4:
            out = out.replace(secret, "***")
    for pattern in _SECRET_PATTERNS:
        out = pattern.sub(lambda m: m.group(1) + "***", out)
    return out


def excerpt(text: str, limit: int = 200) -> str:
    """``text`` cut to ``limit`` characters, with an ellipsis when cut (scrub first: a cut secret no longer matches)."""
    return text if len(text) <= limit else text[:limit] + "…"


class IntegrationError(Exception):
    """Base of the two failure kinds; picklable and free of secrets by construction."""

    retryable: ClassVar[bool] = False

    def __init__(self, message: str, *, status: int | None = None, retry_after: float | None = None,
                 code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.retry_after = retry_after
        self.code = code

    def __reduce__(self):
        return (_rebuild_error, (type(self), self.message, self.status, self.retry_after, self.code))

    def __str__(self) -> str:
        return self.message


def _rebuild_error(cls, message, status, retry_after, code):
    return cls(message, status=status, retry_after=retry_after, code=code)


class RetryableError(IntegrationError):
    """A failure worth retrying later: timeout, connection error, 429, 5xx, paced by a rate limit."""

    retryable = True


class PermanentError(IntegrationError):
    """A failure that retrying cannot fix: bad config, revoked credentials, rejected input."""

    retryable = False


class AuthError(PermanentError):
    """Credentials were rejected (401/403, invalid_auth, revoked token): pauses the connection."""


@dataclass(frozen=True)
class ActionResult:
    """What an action did, small and JSON-serialisable, for the delivery log."""

    external_id: str | None = None
    url: str | None = None
    detail: str | None = None
    deduplicated: bool = False


@dataclass(frozen=True)
class Media:
    """A downloaded file (voicemail audio) to attach."""

    content: bytes
    content_type: str
    filename: str


class MediaTooLarge(PermanentError):
    """The file exceeds the cap; ``url`` (when set) is a link to attach instead."""

    def __init__(self, message: str, *, url: str | None = None, **kwargs) -> None:
        super().__init__(message, **kwargs)
        self.url = url

    def __reduce__(self):
        return (_rebuild_too_large, (self.message, self.url))


def _rebuild_too_large(message, url):
    return MediaTooLarge(message, url=url)


@dataclass
class ActionContext:
    """What an action needs besides its params: identity, vendor URLs and the shared limiter.

    ``idempotency_key`` is stable across retries of the same (event, rule, action); integrations
    use it to detect an effect that already happened. ``attempt`` is 1 on the first try.
    ``connection_id`` is stable per account connection (use it in rate-limit bucket keys).
    ``acquire(key, capacity, per_second, cost)`` asks the shared, cross-worker limiter for tokens and
    returns the seconds to wait (0 = granted); ``penalise(key, seconds)`` shuts a bucket after a 429.
    ``reserve(key, capacity, per_second, cost)``, when the runner gives one, is acquire that books this
    attempt's next slot and returns (wait, booked): :meth:`pace` uses it, so a paced action comes back
    exactly when its slot is due rather than guessing.
    ``event`` is the triggering event's JSON (``Event.to_json()``). ``redis`` with ``namespace`` is a
    shared store for cross-worker state (prefix every key with ``namespace``). ``media(max_bytes)``
    fetches the triggering voicemail's audio from VirtualPBX (None when the event has none or the
    account has no VirtualPBX connection); it raises :class:`MediaTooLarge` past ``max_bytes``.
    ``opted_out(number)`` says whether an E.164 number asked not to be texted (STOP or a CRM flag).
    ``region`` is the account's default phone region (phonenumbers), ``timezone`` its IANA zone.
    ``allow_private_urls`` is the operator's switch (sandbox, tests) letting connections reach private
    and loopback hosts over plain http; it is off in production (see :mod:`integrations.netguard`).
    ``seal``/``unseal`` encrypt and decrypt small secrets an integration caches in ``redis`` (session
    tokens) with the service's credential encryption (unseal gives None for a value it cannot open);
    the defaults keep them as they are.
    """

    account_id: str
    idempotency_key: str
    connection_id: str = ""
    attempt: int = 1
    timezone: str = "UTC"
    region: str = "US"
    api_urls: dict[str, str] = field(default_factory=dict)
    acquire: Callable[..., float] = lambda key, capacity, per_second, cost=1.0: 0.0
    penalise: Callable[[str, float], None] = lambda key, seconds: None
    reserve: Callable[..., tuple[float, bool]] | None = None
    redis: Any = None
    namespace: str = "pbxrelay"
    event: dict[str, Any] = field(default_factory=dict)
    media: Callable[[int], "Media | None"] = lambda max_bytes: None
    opted_out: Callable[[str], bool] = lambda e164_number: False
    allow_private_urls: bool = False
    seal: Callable[[str], str] = lambda text: text
    unseal: Callable[[str], str | None] = lambda text: text

    def pace(self, key: str, capacity: float, per_second: float, cost: float = 1.0) -> None:
        """Take tokens from a shared bucket, or raise RetryableError telling when to come back.

        The error's code is ``booked`` when a slot is held for this attempt at ``retry_after`` (come back
        then, exactly), ``paced`` when not (come back later, spread out among the other waiters).
        """
        if self.reserve is not None:
            wait, booked = self.reserve(key, capacity, per_second, cost)
        else:
            wait, booked = self.acquire(key, capacity, per_second, cost), False
        if wait > 0:
            raise RetryableError(f"rate limit {key!r}: waiting {wait:.2f}s for a token", retry_after=wait,
                                 code="booked" if booked else "paced")


class Integration:
    """Base class of an integration; subclasses declare key, name, Config and actions."""

    key: ClassVar[str]
    name: ClassVar[str]
    Config: ClassVar[type[BaseModel]]
    actions: ClassVar[dict[str, type[BaseModel]]]
    # The vendor's public base URL: the one place it is written. The operator may override it service-wide
    # (PBXRELAY_<KEY>_API_URL, carried in ActionContext.api_urls), a connection per connection (api_url).
    default_api_url: ClassVar[str | None] = None
    # The Config key naming the vendor-side account the connection acts for (VirtualPBX's Kazoo
    # account_id); the service binds it to the pbxrelay account the rules are applied to.
    account_field: ClassVar[str | None] = None
    # Applied to event values rendered into this integration's params (e.g. Slack's mrkdwn control
    # characters); the rule's own template text is left alone.
    template_escape: ClassVar[Callable[[str], str] | None] = None

    def __init__(self, config: BaseModel) -> None:
        self.config = config

    def base_url(self, api_urls: Mapping[str, str]) -> str | None:
        """The base URL to call: the connection's ``api_url``, else the service-wide one, else the vendor's."""
        return getattr(self.config, "api_url", None) or api_urls.get(self.key) or self.default_api_url

    def secrets(self) -> list[str]:
        """The plain-text secret values of this connection, for scrubbing error text."""
        return [v.get_secret_value() for v in self.config.__dict__.values() if isinstance(v, SecretStr)]

    def redis_key_patterns(self, namespace: str, account_id: str) -> list[str]:
        """Glob patterns of this connection's shared-store keys whose names hide ``account_id`` (e.g. in a digest).

        Deleting an account deletes them with every key that names the account outright.
        """
        return []

    def check(self, ctx: ActionContext) -> str:
        """One harmless, read-only vendor call proving the connection works: what it saw, else IntegrationError."""
        raise NotImplementedError(f"{self.key} has no connection check")

    def run(self, action: str, params: dict[str, Any], ctx: ActionContext) -> ActionResult:
        """Validate ``params`` against the action's model and call the method of the same name."""
        model = self.actions.get(action)
        if model is None:
            raise PermanentError(f"{self.key} has no action {action!r}")
        try:
            parsed = model.model_validate(params)
        except Exception as exc:  # pydantic.ValidationError: the rendered params are unusable
            raise PermanentError(f"{self.key}.{action}: invalid parameters: {exc}") from None
        try:
            result = getattr(self, action)(parsed, ctx)
        except IntegrationError as exc:
            exc.message = scrub(exc.message, self.secrets())
            exc.args = (exc.message,)
            raise
        if result.detail:
            result = dataclasses.replace(result, detail=scrub(result.detail, self.secrets()))
        return result


class ParamsModel(BaseModel):
    """Base for action params: unknown keys are a configuration error, not silently ignored."""

    model_config = ConfigDict(extra="forbid")


def allow_private_urls(info: ValidationInfo) -> bool:
    """Whether a config is validated with the operator's private-URL switch on (context key ``allow_private_urls``)."""
    return bool((info.context or {}).get("allow_private_urls"))


def checked_url(value: str, *, field: str, allowed_hosts: tuple[str, ...], info: ValidationInfo) -> str:
    """``value`` if the outbound guard accepts it for ``field``, else ValueError naming the field (for validators)."""
    from integrations.netguard import UnsafeURL, check_url  # netguard imports this module

    try:
        check_url(value, field=field, allowed_hosts=allowed_hosts, allow_private=allow_private_urls(info))
    except UnsafeURL as exc:
        raise ValueError(str(exc)) from None
    return value


class ConfigModel(BaseModel):
    """Base for connection configs: unknown keys are rejected; ``api_url`` overrides the vendor URL.

    ``api_url`` must pass :func:`integrations.netguard.check_url` against ``allowed_hosts`` (https to
    the vendor's own hosts) unless validated with ``context={"allow_private_urls": True}``.
    """

    model_config = ConfigDict(extra="forbid")
    # The vendor hosts an ``api_url`` may name without the operator's switch ("host" or "host:port").
    allowed_hosts: ClassVar[tuple[str, ...]] = ()
    api_url: str | None = None

    @field_validator("api_url")
    @classmethod
    def _guarded_api_url(cls, value: str | None, info: ValidationInfo) -> str | None:
        return None if value is None else checked_url(value, field="api_url", allowed_hosts=cls.allowed_hosts,
                                                      info=info)
