"""The event every rule is written against: a raw VirtualPBX hook, a call-level event, or a CRM event."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

# The one naive-as-UTC helper; service code takes it from here (SQLite hands back naive datetimes).
from integrations.timeutil import aware

__all__ = ["CALL_EVENT_TYPES", "Event", "aware"]

# Event types users write rules against (rules may also use `virtualpbx.<hook>` and `crm.event`).
CALL_EVENT_TYPES = ("call.started", "call.answered", "call.ended", "call.missed", "voicemail.new")


@dataclass(frozen=True)
class Event:
    """One event as rules see it.

    ``type`` is ``call.*``, ``voicemail.new``, ``virtualpbx.<hook>`` or ``crm.event``; ``key`` is its
    idempotency key (unique per logical event, stable across re-deliveries); ``data`` is plain JSON
    and is what conditions and templates read.
    """

    type: str
    account_id: str
    key: str
    occurred_at: datetime
    data: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable form, for Celery messages and the dry-run output."""
        return {"type": self.type, "account_id": self.account_id, "key": self.key,
                "occurred_at": self.occurred_at.isoformat(), "data": self.data}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> "Event":
        """Rebuild an Event from :meth:`to_json` output."""
        return cls(type=doc["type"], account_id=doc["account_id"], key=doc["key"],
                   occurred_at=datetime.fromisoformat(doc["occurred_at"]), data=dict(doc.get("data") or {}))

