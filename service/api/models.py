"""The API's request and response models: requests refuse unknown fields; responses never carry secrets."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field

from service.events import aware

ACCOUNT_ID = r"^[0-9a-f]{32}$"
CONNECTION_NAME = r"^[A-Za-z0-9_-]{1,100}$"


# SQLite hands back naive UTC datetimes: every time the API shows carries its zone.
Time = Annotated[datetime, AfterValidator(aware)]


class Strict(BaseModel):
    """A request part: unknown fields are errors, never ignored."""

    model_config = ConfigDict(extra="forbid")


class Out(BaseModel):
    """A response body, read from objects (ORM rows, dataclasses)."""

    model_config = ConfigDict(from_attributes=True)


# --- paths and queries ------------------------------------------------------------------------

class AccountPath(Strict):
    account_id: str = Field(pattern=ACCOUNT_ID, description="the Kazoo account id (32 hex characters)")


class ConnectionPath(AccountPath):
    name: str = Field(pattern=CONNECTION_NAME)


class IdPath(AccountPath):
    item_id: int = Field(ge=1)


class NumberPath(AccountPath):
    number: str = Field(min_length=1, max_length=40)


class PageQuery(Strict):
    limit: int = Field(default=50, ge=1, le=200)
    cursor: str | None = Field(default=None, max_length=200)


class EventsQuery(PageQuery):
    type: str | None = Field(default=None, max_length=100)
    since: AwareDatetime | None = None
    until: AwareDatetime | None = None


class CallsQuery(PageQuery):
    number: str | None = Field(default=None, max_length=40)
    outcome: str | None = Field(default=None, max_length=20)
    direction: str | None = Field(default=None, max_length=20)
    since: AwareDatetime | None = None
    until: AwareDatetime | None = None


class DeliveryFilterBody(Strict):
    status: str | None = Field(default=None, max_length=200, description="one status, or several comma-separated")
    connection: str | None = Field(default=None, max_length=100)
    rule: str | None = Field(default=None, max_length=200)
    event_type: str | None = Field(default=None, max_length=100)
    event_key: str | None = Field(default=None, max_length=300)
    since: AwareDatetime | None = None
    until: AwareDatetime | None = None


class DeliveriesQuery(PageQuery, DeliveryFilterBody):
    pass


class EventPath(AccountPath):
    ref: str = Field(min_length=1, max_length=300, description="the event's id or key")


class CallPath(AccountPath):
    call_key: str = Field(min_length=1, max_length=250)


class RulesQuery(Strict):
    format: Literal["yaml", "json"] | None = Field(default=None, description="overrides the Accept header")


# --- bodies -----------------------------------------------------------------------------------

class SettingsPatch(Strict):
    name: str | None = Field(default=None, min_length=1, max_length=200)
    timezone: str | None = Field(default=None, min_length=1, max_length=64)
    retention_days: int | None = Field(default=None, ge=1, le=3650, description="null: the service default")


class DeleteAccountBody(Strict):
    confirm: str = Field(max_length=64, description="the account's id again: deleting cannot be undone")


class RotateTokenBody(Strict):
    kind: Literal["virtualpbx", "crm"] = "virtualpbx"


class ConnectionBody(Strict):
    integration: str = Field(min_length=1, max_length=50)
    settings: dict[str, Any] = Field(default_factory=dict, description="the integration's Config keys; secrets "
                                                                       "left out keep their stored value")


class DryRunBody(Strict):
    event_key: str | None = Field(default=None, min_length=1, max_length=300)
    payloads: list[dict[str, Any]] | None = Field(default=None, min_length=1, max_length=50)


class ApiKeyBody(Strict):
    name: str = Field(min_length=1, max_length=100)
    scope: Literal["read", "write"]


class InviteBody(Strict):
    email: str = Field(min_length=3, max_length=320)
    role: Literal["viewer", "editor", "owner"]


class RoleBody(Strict):
    role: Literal["viewer", "editor", "owner"]


class OptOutBody(Strict):
    number: str = Field(min_length=1, max_length=40)


# --- responses --------------------------------------------------------------------------------

class AccountSummary(Out):
    id: str
    name: str
    timezone: str
    role: str | None = None


class HookOut(Out):
    kind: str
    url: str | None
    last_received_at: Time | None


class AccountOut(Out):
    id: str
    name: str
    timezone: str
    retention_days: int | None
    effective_retention_days: int
    rules_version: int | None
    hooks: list[HookOut]
    paused_connections: list[str]


class ConnectionOut(Out):
    name: str
    integration: str
    settings: dict[str, Any]
    secrets: dict[str, bool] = Field(description="secret keys and whether each is set; values are never shown")
    paused_reason: str | None
    updated_at: Time


class CheckOut(Out):
    ok: bool
    detail: str
    duration_ms: int
    retryable: bool


class ApiKeyOut(Out):
    id: int
    name: str
    prefix: str
    scope: str
    created_by: str | None = None
    created_at: Time | None = None
    last_used_at: Time | None = None
    revoked_at: Time | None = None


class NewApiKeyOut(ApiKeyOut):
    token: str = Field(description="the key itself: shown now and never again")


class MemberOut(Out):
    user_id: int
    email: str
    role: str


class InviteOut(Out):
    email: str
    role: str
    invite_url: str = Field(description="the link to send; shown now and never again")


class OptOutOut(Out):
    number: str
    source: str
    created_at: Time


class QuarantineOut(Out):
    id: int
    reason: str
    source: str
    method: str
    content_type: str
    received_at: Time
    body_text: str


class DeliveryOut(Out):
    id: int
    event_key: str
    event_type: str
    rule_name: str
    action_index: int
    connection: str
    integration: str
    action: str
    status: str
    attempts: int
    last_error: str | None
    external_id: str | None
    created_at: Time
    updated_at: Time
    succeeded_at: Time | None = None


class EventOut(Out):
    id: int
    key: str
    type: str
    occurred_at: Time
    received_at: Time
    data: dict[str, Any]


class AttemptOut(Out):
    number: int
    started_at: Time
    duration_ms: int
    outcome: str
    status_code: int | None
    error: str | None
    request_excerpt: str | None
    response_excerpt: str | None


class DeliveryDetailOut(DeliveryOut):
    params: dict[str, Any]
    attempts: list[AttemptOut]


class CallOut(Out):
    call_key: str
    event_key: str
    occurred_at: Time
    direction: str | None
    caller: dict[str, Any]
    callee: dict[str, Any]
    answered_by: dict[str, Any] | None
    outcome: str | None
    duration: int | None
    talk_time: int | None
    voicemail_left: bool


class DeliveryWithAttempts(Out):
    delivery: DeliveryOut
    attempts: list[AttemptOut]


class CallDetailOut(Out):
    call_key: str
    summary: CallOut | None
    legs: list[EventOut]
    events: list[EventOut]
    deliveries: list[DeliveryWithAttempts]
    rules: list[str]


class ReplayJobOut(Out):
    id: int
    status: str
    filter: dict[str, Any]
    total: int | None
    done: int
    failed: int
    error: str | None
    actor: str
    created_at: Time
    finished_at: Time | None


class VersionPath(AccountPath):
    version: int = Field(ge=1)


class DiffQuery(Strict):
    from_: int = Field(alias="from", ge=1)
    to: int = Field(ge=1)


class VersionOut(Out):
    version: int
    applied_at: Time
    actor: str
    supplied_by: str


class VersionDetailOut(VersionOut):
    source: str
