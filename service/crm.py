"""CRM webhook bodies -> ``crm.event``, and the account's SMS opt-out list.

Any CRM's JSON or form webhook is accepted. The account's rules file maps fields to template
variables by dotted path (``crm.fields``); the CRM's own event id (``crm.event_id``), else the
Standard Webhooks ``webhook-id`` header, else a hash of the body, is the idempotency key, so one
CRM event gives at most one SMS however often the CRM re-sends it.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from typing import Any

import phonenumbers
import sqlalchemy as sa
from sqlalchemy.orm import Session

from service.events import Event
from service.rules import CrmSpec, lookup_path
from service.store import queries
from service.store.models import OptOut

# Replies that opt a number out of texts: the CTIA keywords carriers honour (plus the FCC's REVOKE / OPT OUT).
STOP_WORDS = frozenset({"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "OPTOUT", "REVOKE"})
# Only the carriers' re-opt-in keywords: a "YES" is an everyday answer (to a reminder, say), not consent.
START_WORDS = frozenset({"START", "UNSTOP"})
_TRUTHY = frozenset({"1", "true", "yes", "y", "on", "opted_out", "opt_out", "optout"})


def crm_event(payload: dict[str, Any], *, account_id: str, crm: CrmSpec | None, received_at: datetime,
              webhook_id: str | None = None) -> Event:
    """Build the ``crm.event`` of one CRM body: mapped fields plus the whole payload."""
    data: dict[str, Any] = {"payload": payload}
    for variable, path in (crm.fields.items() if crm else ()):
        found, value = lookup_path(payload, path)
        data[variable] = value if found else None
    ident = None
    if crm and crm.event_id:
        found, value = lookup_path(payload, crm.event_id)
        if found and isinstance(value, (str, int)) and str(value):
            ident = str(value)[:200]
    if ident is None and webhook_id:
        ident = f"wh:{webhook_id[:200]}"
    if ident is None:
        ident = "sha256:" + hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()
    data["event_id"] = ident
    if crm and crm.opt_out:
        found, flag = lookup_path(payload, crm.opt_out)
        data["opt_out"] = bool(found and (flag is True or str(flag).strip().lower() in _TRUTHY))
    return Event(type="crm.event", account_id=account_id, key=f"crm.event:{ident}", occurred_at=received_at,
                 data=data)


def to_e164(number: Any, region: str) -> str | None:
    """The E.164 form of a phone number, or None when it cannot be one.

    "Possible" rather than "valid": an opt-out must be recorded even for a number whose exchange
    phonenumbers does not know (such as the 555 range used in examples).
    """
    if not isinstance(number, (str, int)):
        return None
    try:
        parsed = phonenumbers.parse(str(number), region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_possible_number(parsed):
        return None
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


def add_opt_out(session: Session, account_id: str, number: str, source: str) -> bool:
    """Put a number on the account's opt-out list; False when it was there already."""
    return queries.insert_if_new(session, OptOut, {"account_id": account_id, "number": number,
                                                   "source": source}) is not None


def remove_opt_out(session: Session, account_id: str, number: str) -> bool:
    """Take a number off the opt-out list (it replied START); False when it was not there."""
    result = session.execute(sa.delete(OptOut).where(OptOut.account_id == account_id, OptOut.number == number))
    return result.rowcount > 0


def is_opted_out(session: Session, account_id: str, number: str) -> bool:
    """Whether the number must not be texted."""
    return session.scalar(sa.select(sa.func.count()).select_from(OptOut).where(
        OptOut.account_id == account_id, OptOut.number == number)) > 0


def apply_sms_reply(session: Session, account_id: str, data: dict[str, Any], region: str) -> str | None:
    """Honour STOP/START in an inbound SMS (Kazoo `sms` hook); returns "opted_out", "opted_in" or None."""
    word = str(data.get("body") or "").strip().upper()
    number = to_e164(data.get("from"), region)
    if number is None:
        return None
    if word in STOP_WORDS:
        add_opt_out(session, account_id, number, "sms:stop")
        return "opted_out"
    if word in START_WORDS:
        return "opted_in" if remove_opt_out(session, account_id, number) else None
    return None
